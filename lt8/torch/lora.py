"""LoRA adapters on frozen int8 weights (torch).

A :class:`LoRALinear` wraps a linear layer, usually an lt8 ``Linear8bitLt`` whose int8 weight
stays frozen, and adds a trainable low-rank update: ``y = base(x) + (alpha / r) * B(A(x))``
with ``A`` (r, in) and ``B`` (out, r) float matrices. ``B`` starts at zero, so a freshly wrapped
model computes exactly what it did before. Gradients reach ``A`` and ``B`` through the int8
layer's input gradient; the int8 weight and its scales are never touched.

:func:`add_lora` wraps the layers of a whole model and freezes everything else. PEFT
(``peft.get_peft_model``) works on ``Linear8bitLt`` layers too, since they are ``nn.Linear`` s;
this module is the dependency-free alternative. PEFT's own layer cannot merge adapters into
int8 weights; :func:`register_peft` makes PEFT build lt8's LoRA layer
(:class:`lt8.torch.peft_lora.LoraLinear8bitLt`), whose merge re-quantizes, so that PEFT's
``merge_and_unload``, ``merge_adapter`` and ``unmerge_adapter`` work, and :func:`merge_peft`
merges a model adapted without it. This module imports PEFT only inside those two functions.
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Iterable
from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:
    from peft import LoraConfig

__all__ = [
    "LoRALinear",
    "add_lora",
    "lora_parameters",
    "lora_state_dict",
    "merge_peft",
    "register_peft",
]


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


def register_peft(config: LoraConfig) -> LoraConfig:
    """Registers lt8's PEFT LoRA layer for ``Linear8bitLt`` on a PEFT ``LoraConfig`` and returns
    the config, to hand to ``peft.get_peft_model`` (or ``add_adapter``).

    PEFT then wraps every targeted ``Linear8bitLt`` in
    :class:`lt8.torch.peft_lora.LoraLinear8bitLt` instead of its default ``lora.Linear``: the
    same adapters, forward and saved files, but ``merge_and_unload``, ``merge_adapter`` and
    ``unmerge_adapter`` (``safe_merge``, ``adapter_names``, several adapters) re-quantize the
    int8 weight (``CB * SCB / 127 + delta``, quantized again row-wise) instead of failing on it.
    Other layers get PEFT's usual layers.

    Why a call: PEFT chooses LoRA layers from a fixed list of dispatchers, and the one entry it
    leaves open is this config's experimental ``_register_custom_module`` (PEFT's
    "custom models" guide); choosing lt8's layer with no call would mean patching PEFT itself
    for every model in the process. The registration lives on the config object and is not
    saved with the adapter: for ``PeftModel.from_pretrained`` pass
    ``config=register_peft(LoraConfig.from_pretrained(path))``, or merge with
    :func:`merge_peft`.
    """
    from peft.tuners.lora import LoraConfig

    from lt8.torch.nn import Linear8bitLt
    from lt8.torch.peft_lora import LoraLinear8bitLt

    if not isinstance(config, LoraConfig):
        raise TypeError(f"register_peft takes a peft.LoraConfig, got {type(config).__name__}")
    config._register_custom_module({Linear8bitLt: LoraLinear8bitLt})
    return config


@torch.no_grad()
def merge_peft(
    model: nn.Module, adapter_names: Iterable[str] | None = None, safe_merge: bool = False
) -> nn.Module:
    """Merges a PEFT LoRA model's adapters into its weights, re-quantizing lt8 int8 weights, and
    returns the base model without the adapters (what ``merge_and_unload`` returns).

    For models whose config went through :func:`register_peft` this is what PEFT's own
    ``merge_and_unload`` does. It also merges models adapted with PEFT's default layer, whose
    own merge fails on int8 weights (a dtype error; with ``safe_merge=True`` the update is
    cast to int8 and lost): each adapted int8 ``Linear8bitLt`` gets
    :func:`lt8.torch.peft_lora.merge_into_int8` (``W = CB * SCB / 127 + delta`` in float32,
    re-quantized row-wise). Other layers are merged by PEFT. ``adapter_names``: which adapters
    (default: the active ones). ``safe_merge``: refuse (``ValueError``) non-finite results.
    DoRA and other LoRA variants are refused on int8 layers (``ValueError``).
    """
    from peft.tuners.lora import LoraLayer
    from peft.tuners.tuners_utils import check_adapters_to_merge

    from lt8.torch.peft_lora import LoraLinear8bitLt, holds_int8, merge_into_int8

    names_arg = None if adapter_names is None else list(adapter_names)
    for m in model.modules():
        if not isinstance(m, LoraLayer):
            continue
        if isinstance(m, LoraLinear8bitLt) or not holds_int8(m.get_base_layer()):
            m.merge(safe_merge=safe_merge, adapter_names=names_arg)  # PEFT's own merge
        else:  # PEFT's default layer over an int8 weight
            merge_into_int8(m, check_adapters_to_merge(m, names_arg), safe_merge=safe_merge)
    # unload() swaps every LoRA wrapper for its base layer, merging nothing more.
    return model.unload()
