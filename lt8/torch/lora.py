"""LoRA adapters on frozen int8 weights (torch).

A :class:`LoRALinear` wraps a linear layer, usually an lt8 ``Linear8bitLt`` whose int8 weight
stays frozen, and adds a trainable low-rank update: ``y = base(x) + (alpha / r) * B(A(x))``
with ``A`` (r, in) and ``B`` (out, r) float matrices. ``B`` starts at zero, so a freshly wrapped
model computes exactly what it did before. Gradients reach ``A`` and ``B`` through the int8
layer's input gradient; the int8 weight and its scales are never touched.

:func:`add_lora` wraps the layers of a whole model and freezes everything else. PEFT
(``peft.get_peft_model``) works on ``Linear8bitLt`` layers too, since they are ``nn.Linear`` s;
this module is the dependency-free alternative. PEFT cannot merge adapters into int8 weights
itself; :func:`merge_peft` does, by re-quantizing.
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Iterable

import torch
from torch import nn

__all__ = ["LoRALinear", "add_lora", "lora_parameters", "lora_state_dict", "merge_peft"]


class LoRALinear(nn.Module):
    """A frozen linear layer plus a trainable rank-``r`` update.

    Args:
        base: the layer to adapt, an ``nn.Linear`` (``lt8.torch.Linear8bitLt`` included); its
            parameters are frozen (``requires_grad=False``).
        r: rank of the update (>= 1).
        alpha: scale numerator: the update is multiplied by ``alpha / r``.
        dropout: dropout probability applied to the adapter's input (training only).
        dtype: dtype of ``A`` and ``B`` (default float32, which also trains well when the
            base layer runs in float16); the update is cast to the base output's dtype.

    Attributes ``lora_A`` (``nn.Linear(in, r)``, Kaiming-uniform like ``nn.Linear``) and
    ``lora_B`` (``nn.Linear(r, out)``, zeros) hold the trainable weights.
    """

    def __init__(
        self,
        base: nn.Module,
        r: int = 8,
        alpha: float = 16.0,
        dropout: float = 0.0,
        dtype: torch.dtype = torch.float32,
    ):
        super().__init__()
        if not isinstance(base, nn.Linear):
            raise TypeError(
                f"base must be an nn.Linear (or lt8 Linear8bitLt), got {type(base).__name__}"
            )
        if not (isinstance(r, int) and r >= 1):
            raise ValueError(f"r must be an int >= 1, got {r!r}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
        for p in base.parameters():
            p.requires_grad_(False)
        self.base = base
        self.r, self.alpha = r, float(alpha)
        self.scaling = self.alpha / r
        device = base.weight.device
        self.lora_A = nn.Linear(base.in_features, r, bias=False, device=device, dtype=dtype)
        self.lora_B = nn.Linear(r, base.out_features, bias=False, device=device, dtype=dtype)
        nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B.weight)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    @property
    def in_features(self) -> int:
        return self.base.in_features

    @property
    def out_features(self) -> int:
        return self.base.out_features

    @property
    def weight(self) -> torch.Tensor:
        """The base layer's (frozen) weight: model code that reads ``layer.weight`` (its dtype
        or device) keeps working on a wrapped layer."""
        return self.base.weight

    @property
    def bias(self) -> torch.Tensor | None:
        """The base layer's (frozen) bias."""
        return self.base.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)
        update = self.lora_B(self.lora_A(self.dropout(x.to(self.lora_A.weight.dtype))))
        return y + (update * self.scaling).to(y.dtype)

    def extra_repr(self) -> str:
        return f"r={self.r}, alpha={self.alpha:g}"


def _matches(name: str, patterns: Iterable[str]) -> bool:
    parts = name.split(".")
    return any(
        fnmatch.fnmatchcase(name, p) or any(fnmatch.fnmatchcase(c, p) for c in parts)
        for p in patterns
    )


def add_lora(
    model: nn.Module,
    r: int = 8,
    alpha: float = 16.0,
    dropout: float = 0.0,
    target_modules: Iterable[str] | None = None,
    dtype: torch.dtype = torch.float32,
) -> nn.Module:
    """Wraps linear layers of ``model`` (in place) in :class:`LoRALinear` and freezes every
    other parameter, so that only the adapters train. Returns the model.

    ``target_modules``: glob patterns (``fnmatch``) matched against each module's dotted name
    and each of its components, e.g. ``("query", "value")`` or ``("encoder.layer.*.attention.*",)``.
    None targets every ``lt8.torch.Linear8bitLt``. Raises ``ValueError`` when nothing matches.
    """
    from lt8.torch.nn import Linear8bitLt

    if isinstance(target_modules, str):
        raise TypeError(
            f"target_modules must be a list of patterns, not one string ({target_modules!r})"
        )
    patterns = None if target_modules is None else list(target_modules)
    wrapped = [n for n, m in model.named_modules() if isinstance(m, LoRALinear)]
    targets = [
        (name, mod)
        for name, mod in model.named_modules()
        if name
        and isinstance(mod, nn.Linear)
        and not any(name.startswith(w + ".") for w in wrapped)  # already adapted
        and (isinstance(mod, Linear8bitLt) if patterns is None else _matches(name, patterns))
    ]
    if not targets:
        what = "no Linear8bitLt layer" if patterns is None else f"no nn.Linear matches {patterns}"
        raise ValueError(f"add_lora: {what} in this {type(model).__name__}")
    for p in model.parameters():
        p.requires_grad_(False)
    for name, mod in targets:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, LoRALinear(mod, r=r, alpha=alpha, dropout=dropout, dtype=dtype))
    return model


def lora_parameters(model: nn.Module) -> list:
    """The adapter weights (``lora_A``/``lora_B`` of every :class:`LoRALinear`) of ``model``:
    what to hand to the optimizer."""
    return [
        p
        for m in model.modules()
        if isinstance(m, LoRALinear)
        for p in (m.lora_A.weight, m.lora_B.weight)
    ]


def lora_state_dict(model: nn.Module) -> dict:
    """Only the adapters' tensors of ``model.state_dict()`` (a few MB for a large model).
    Load them back into a model prepared the same way with ``model.load_state_dict(sd,
    strict=False)``."""
    return {
        k: v
        for k, v in model.state_dict().items()
        if ".lora_A." in f".{k}" or ".lora_B." in f".{k}"
    }


@torch.no_grad()
def merge_peft(model: nn.Module, adapter_names: Iterable[str] | None = None) -> nn.Module:
    """Merges a PEFT LoRA model's adapters into its lt8 int8 weights, by re-quantizing, and
    returns the base model without the adapters (what ``merge_and_unload`` returns).

    PEFT's own ``merge_and_unload`` adds the update to ``weight.data`` in place, which an int8
    weight cannot hold (an error; with ``safe_merge=True`` the update is cast to int8 and lost).
    Here each adapted ``Linear8bitLt`` gets ``W = CB * SCB / 127 + delta`` re-quantized row-wise
    (new ``CB`` and ``SCB``): the merged layer computes the adapted layer's function up to one
    more int8 rounding of the weight. Layers that are not lt8 int8 layers are merged by PEFT.
    ``adapter_names``: which adapters (default: the active ones). DoRA and other LoRA variants
    are refused (``ValueError``).
    """
    from peft.tuners.lora import LoraLayer

    from lt8.torch.nn import Int8Params, Linear8bitLt

    names_arg = None if adapter_names is None else list(adapter_names)
    for m in model.modules():
        if not isinstance(m, LoraLayer):
            continue
        base = m.get_base_layer()
        if not (isinstance(base, Linear8bitLt) and base.weight.dtype == torch.int8):
            m.merge(adapter_names=names_arg)  # a float layer: PEFT merges it
            continue
        if getattr(m, "merged", False):
            continue
        names = [a for a in (names_arg or m.active_adapters) if a in m.lora_A]
        if any(a in getattr(m, "lora_variant", {}) for a in names):
            raise ValueError(
                "merge_peft merges plain LoRA adapters; DoRA/variants are not supported"
            )
        if not names:
            continue
        W = torch.ops.lt8.dequantize_rows(base.weight.data, base.weight.SCB, torch.float32)
        for a in names:
            W = W + m.get_delta_weight(a).float()
        if not torch.isfinite(W).all():
            raise ValueError(f"merging adapters {names} gives non-finite weights")
        for a in names:
            if getattr(m, "lora_bias", {}).get(a):
                if base.bias is None:
                    raise ValueError(f"adapter {a!r} has a LoRA bias but the base layer has none")
                base.bias.data += (m.lora_B[a].bias * m.scaling[a]).to(base.bias.dtype)
        CB, SCB, _ = torch.ops.lt8.quantize_rows(W, 0.0)
        base.weight = Int8Params(CB, requires_grad=False, has_fp16_weights=False, SCB=SCB)
    # unload() swaps every LoRA wrapper for its base layer, merging nothing more.
    return model.unload()
