"""PEFT's LoRA on lt8's int8 ``Linear8bitLt``, with merging by re-quantization.

PEFT (``peft.get_peft_model``) wraps an lt8 ``Linear8bitLt`` (an ``nn.Linear``) in its default
``lora.Linear``, which trains and runs adapters on the frozen int8 weight. That layer's merge
adds the update to ``weight.data`` in place, which an int8 weight cannot hold: PEFT's
``merge_and_unload`` fails with a dtype error, and with ``safe_merge=True`` it casts the update
to int8 first, truncating it (wrong weights, no error).

:class:`LoraLinear8bitLt` is PEFT's ``lora.Linear`` with an int8-aware merge. For an adapted
layer whose weight is int8 (``CB``, float32 row scales ``SCB``) it computes, in float32,

    W' = CB * SCB / 127 + delta_1 + ... + delta_n,    delta_a = (alpha_a / r_a) * B_a @ A_a

adding the adapters one at a time in merge order, then quantizes ``W'`` with lt8's weight
quantizer (:func:`lt8.torch.functional.quantize_weight`, the one ``Int8Params`` uses when it
quantizes a float weight) and writes the new ``CB``/``SCB`` into the layer's own tensors in
place. Unmerging subtracts the deltas the same way. Both are one more int8 rounding of the
weight, so the merged layer matches the adapted one only up to that rounding, and merge followed
by unmerge does not restore the original int8 bits (the same holds for bitsandbytes' 8-bit
layers in PEFT). Layers whose weight is still floating point (``has_fp16_weights=True``, or an
int8 layer not yet moved to a device) merge exactly as PEFT's ``lora.Linear`` does.

PEFT picks the LoRA layer for a module through a fixed list of dispatchers (bitsandbytes,
GPTQ, ..., and last the default one, which takes every ``nn.Linear``); the only entry left
open to other libraries is ``LoraConfig``'s experimental ``_register_custom_module``, whose
mapping PEFT consults before any other. So the layer is chosen per config, by
:func:`lt8.torch.lora.register_peft` (one call on the config handed to ``get_peft_model``):
making PEFT choose it with no call at all would mean replacing PEFT's own functions or classes
for every model in the process, which lt8 does not do. Models adapted without it (an adapter
loaded with ``PeftModel.from_pretrained`` and its saved config, for instance) still merge
correctly with :func:`lt8.torch.lora.merge_peft`, which uses the functions below.

This module imports PEFT; :mod:`lt8.torch.lora` does not.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch
from peft.tuners.lora import LoraConfig, LoraLayer
from peft.tuners.lora.layer import Linear as _PeftLinear
from peft.tuners.tuners_utils import check_adapters_to_merge
from torch import nn

from lt8.torch.functional import dequantize_weight, quantize_weight
from lt8.torch.nn import Linear8bitLt

__all__ = ["LoraLinear8bitLt", "holds_int8", "merge_into_int8", "unmerge_from_int8"]


def holds_int8(base: nn.Module) -> bool:
    """True when ``base`` is an lt8 ``Linear8bitLt`` whose weight is quantized (int8): the
    layers whose merge must re-quantize."""
    return isinstance(base, Linear8bitLt) and base.weight.dtype == torch.int8


class LoraLinear8bitLt(_PeftLinear):
    """PEFT's LoRA layer for an lt8 ``Linear8bitLt``: PEFT's ``lora.Linear`` (same adapters,
    forward, state-dict keys and saved adapters) whose ``merge``/``unmerge`` re-quantize an int8
    weight instead of adding to its int8 data (see :func:`merge_into_int8`).

    Built by PEFT itself (``get_peft_model``, ``add_adapter``) for every targeted
    ``Linear8bitLt`` once :func:`lt8.torch.lora.register_peft` registered it on the
    ``LoraConfig``. Plain LoRA only: merging a DoRA (or other variant) adapter into an int8
    weight raises ``ValueError``.
    """

    def __init__(
        self, base_layer: nn.Module, adapter_name: str, config: LoraConfig, **kwargs
    ) -> None:
        if kwargs.get("parameter_name") is not None:
            # target_parameters would wrap the int8 tensor itself, which LoRA cannot adapt.
            raise ValueError(
                "target_parameters cannot target an lt8 Linear8bitLt's int8 weight; "
                "name the layer in target_modules instead"
            )
        if config.fan_in_fan_out:
            # PEFT's default dispatcher does the same for every nn.Linear: the weight is
            # (out, in), so a transposed update would be wrong.
            warnings.warn(
                "fan_in_fan_out=True but the target is an lt8 Linear8bitLt, whose weight is "
                "(out, in): setting fan_in_fan_out to False",
                stacklevel=2,
            )
            config.fan_in_fan_out = False
        super().__init__(base_layer, adapter_name, config=config, **kwargs)

    def merge(self, safe_merge: bool = False, adapter_names: list[str] | None = None) -> None:
        """Merges adapters (default: the active ones not merged yet) into the base weight: by
        re-quantizing when it is int8 (:func:`merge_into_int8`), else as PEFT does.

        ``safe_merge=True`` checks the merged weight and bias for NaN and inf before anything
        is written; a non-finite result raises ``ValueError`` naming the adapter and leaves the
        layer unchanged."""
        if not holds_int8(self.get_base_layer()):
            super().merge(safe_merge=safe_merge, adapter_names=adapter_names)
            return
        merge_into_int8(self, check_adapters_to_merge(self, adapter_names), safe_merge=safe_merge)

    def unmerge(self) -> None:
        """Removes every merged adapter from the base weight: re-quantizing ``W - deltas`` when
        it is int8 (not bit-exact: see :func:`unmerge_from_int8`), else as PEFT does."""
        if not self.merged or not holds_int8(self.get_base_layer()):
            super().unmerge()  # also PEFT's "Already unmerged" warning
            return
        unmerge_from_int8(self)


def _layer_label(layer: LoraLayer) -> str:
    # PEFT hands the module's dotted name to each LoRA layer as kwargs["target_name"].
    name = getattr(layer, "kwargs", {}).get("target_name")
    return f"layer {name!r}" if name else f"this {type(layer.get_base_layer()).__name__}"


def _int8_weight(layer: LoraLayer) -> torch.Tensor:
    base = layer.get_base_layer()
    if not holds_int8(base):
        raise TypeError(
            f"{_layer_label(layer)} is not an lt8 Linear8bitLt with an int8 weight: PEFT merges it"
        )
    weight = base.weight
    if weight.SCB is None:
        raise RuntimeError(f"{_layer_label(layer)} has an int8 weight without scales (SCB)")
    if type(weight.data) is not torch.Tensor or type(weight.SCB) is not torch.Tensor:
        # A DTensor shard (lt8.torch.parallel): a row-wise re-quantization of a local shard
        # would need the delta's matching slice, which PEFT's adapters do not hold.
        raise NotImplementedError(
            f"merging into a sharded (DTensor) int8 weight is not supported ({_layer_label(layer)}): "
            "merge the adapters before sharding the model"
        )
    return weight


def _delta(layer: LoraLayer, adapter: str, device: torch.device) -> torch.Tensor:
    """(alpha / r) * B @ A in float32, whatever the adapters' dtype: PEFT's get_delta_weight
    returns it in the adapters' dtype, a rounding more before it meets the weight."""
    A = layer.lora_A[adapter].weight.to(device=device, dtype=torch.float32)
    B = layer.lora_B[adapter].weight.to(device=device, dtype=torch.float32)
    return (B @ A) * layer.scaling[adapter]


def _bias_delta(layer: LoraLayer, adapter: str) -> torch.Tensor | None:
    """The adapter's own bias (PEFT's lora_bias=True), scaled, in float32; else None."""
    if not layer.lora_bias.get(adapter, False):
        return None
    if layer.get_base_layer().bias is None:
        raise ValueError(
            f"adapter {adapter!r} has a LoRA bias but {_layer_label(layer)} has none to merge it into"
        )
    return layer.lora_B[adapter].bias.float() * layer.scaling[adapter]


@torch.no_grad()
def _requantize(layer: LoraLayer, names: Sequence[str], sign: float, safe_merge: bool) -> None:
    """CB, SCB (and bias) := quantize(CB * SCB / 127 + sign * sum of the deltas of ``names``),
    computed completely before any tensor of the layer is written."""
    variants = [a for a in names if a in layer.lora_variant]
    if variants:
        raise ValueError(
            f"adapters {variants} are LoRA variants (DoRA, ...): lt8 merges only plain LoRA "
            f"adapters into int8 weights ({_layer_label(layer)})"
        )
    base = layer.get_base_layer()
    weight = _int8_weight(layer)
    W = dequantize_weight(weight.data, weight.SCB, torch.float32)
    bias = None
    for a in names:
        W += sign * _delta(layer, a, W.device)
        b = _bias_delta(layer, a)
        if b is not None:
            bias = (base.bias.detach().float() if bias is None else bias) + sign * b.to(W.device)
        if safe_merge and not (
            torch.isfinite(W).all() and (bias is None or torch.isfinite(bias).all())
        ):
            raise ValueError(
                f"safe_merge: merging adapter {a!r} into {_layer_label(layer)} gives non-finite "
                "weights (NaN or inf); the adapter seems broken. The layer is unchanged."
            )
    CB, SCB = quantize_weight(W)
    # In place: the Parameter object and its SCB tensor stay the same objects, so references
    # held elsewhere (an optimizer, tied modules, the fast path's cache) see the merged weight.
    weight.data.copy_(CB)
    weight.SCB.copy_(SCB)
    base._sync_state()  # the layer's MatmulLtState mirrors the weight's tensors
    if bias is not None:
        base.bias.data.copy_(bias)


def merge_into_int8(
    layer: LoraLayer, adapter_names: Sequence[str], safe_merge: bool = False
) -> None:
    """Merges ``adapter_names`` (those the layer holds; none merged yet) into ``layer``'s int8
    base weight by re-quantizing, and records them in ``layer.merged_adapters``.

    ``layer`` is any PEFT LoRA layer over an lt8 int8 ``Linear8bitLt`` (:class:`LoraLinear8bitLt`
    or PEFT's own ``lora.Linear``). ``W' = CB * SCB / 127 + delta`` in float32 (the adapters
    added one at a time, in the given order; LoRA biases added to the float bias), then ``CB``
    and ``SCB`` := lt8's row-wise quantization of ``W'``, written in place. The merged layer
    computes the adapted one's function up to that int8 rounding: at most half a step,
    ``SCB' / 254``, per weight. ``safe_merge=True``: a NaN or inf in the result raises
    ``ValueError`` naming the adapter, and nothing is written."""
    names = [a for a in adapter_names if a in layer.lora_A]
    if not names:
        return
    _requantize(layer, names, 1.0, safe_merge)
    layer.merged_adapters.extend(names)


def unmerge_from_int8(layer: LoraLayer) -> None:
    """Subtracts every merged adapter of ``layer`` from its int8 base weight by re-quantizing
    ``CB * SCB / 127 - deltas`` (newest first) and empties ``layer.merged_adapters``.

    Not bit-exact: merge and unmerge each round the weight to int8, so the restored ``CB`` and
    ``SCB`` differ from the original ones by up to about a quantization step (bitsandbytes'
    8-bit layers in PEFT behave the same)."""
    names = [a for a in reversed(layer.merged_adapters) if a in layer.lora_A]
    if names:
        _requantize(layer, names, -1.0, safe_merge=False)
    layer.merged_adapters.clear()
