"""lt8's transformers quantizer: ``from_pretrained(..., quantization_config=Lt8Config())``.

It plugs into transformers' loader the way its bitsandbytes 8-bit quantizer does:

* before the weights load, :meth:`Lt8HfQuantizer._process_model_before_weight_loading` swaps
  every ``nn.Linear`` (and GPT-2's ``Conv1D``) of the model, still on the meta device, for a
  ``Linear8bitLt`` (:func:`replace_with_lt8_linear`), but the skipped ones (the output head);
* while loading a float checkpoint, each such layer's ``weight`` goes through
  :class:`Lt8Quantize`: it arrives on its device (``device_map``) in the requested dtype and is
  quantized there, one layer at a time, so the whole float model never sits on the GPU;
* while loading an int8 checkpoint (a folder ``save_pretrained`` wrote from such a model, whose
  ``config.json`` names ``quant_method="lt8"``), :class:`Lt8Deserialize` joins each layer's
  ``weight`` (int8), ``SCB`` and ``weight_format`` (bitsandbytes' keys) into an ``Int8Params``.

``save_pretrained`` writes ``Linear8bitLt``'s own state dict (those same keys) and the config.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers.core_model_loading import ConversionOps
from transformers.quantizers.base import HfQuantizer
from transformers.quantizers.quantizers_utils import get_module_from_name, should_convert_module

from lt8.core.checkpoint import WEIGHT_FORMATS, format_name
from lt8.torch import Int8Params, Linear8bitLt

__all__ = ["Lt8Deserialize", "Lt8HfQuantizer", "Lt8Quantize", "replace_with_lt8_linear"]

#: Set on a ``Linear8bitLt`` that replaced a ``Conv1D``: the checkpoint's float weight is (in,
#: out) and is transposed before quantizing (an int8 checkpoint holds it as (out, in) already).
FROM_CONV1D = "_lt8_from_conv1d"


def _conv1d_type():
    from transformers.pytorch_utils import Conv1D

    return Conv1D


def quantize_weight(W: torch.Tensor) -> Int8Params:
    """A float (out, in) weight as an int8 ``Int8Params`` (row-wise, on W's device)."""
    if not W.is_floating_point():
        raise TypeError(f"expected a floating-point weight to quantize, got {W.dtype}")
    if W.dtype == torch.float64:  # the kernels take float32/16/bf16; int8 + scales keep less
        W = W.float()
    CB, SCB, _ = torch.ops.lt8.quantize_rows(W.contiguous(), 0.0)
    return Int8Params(CB, requires_grad=False, has_fp16_weights=False, SCB=SCB)


def replace_with_lt8_linear(
    model: nn.Module,
    modules_to_not_convert: list[str] | None,
    threshold: float,
    quantize_existing: bool = False,
) -> list[str]:
    """Swaps each ``nn.Linear`` / ``Conv1D`` of ``model`` that ``modules_to_not_convert`` does not
    name (transformers' matching rule) for a ``Linear8bitLt`` with ``threshold``. With
    ``quantize_existing`` the layers' current weights are quantized on their device (a loaded
    float model); otherwise the new layers are empty, on the meta device, for the loader to
    fill. Returns the names of the replaced layers."""
    Conv1D = _conv1d_type()
    targets = [
        (name, m)
        for name, m in model.named_modules()
        if name
        and (type(m) is nn.Linear or isinstance(m, Conv1D))
        and should_convert_module(name, modules_to_not_convert)
    ]
    for name, m in targets:
        conv = isinstance(m, Conv1D)
        in_f, out_f = m.weight.shape if conv else (m.in_features, m.out_features)
        new = Linear8bitLt(
            in_f,
            out_f,
            bias=m.bias is not None,
            has_fp16_weights=False,
            threshold=threshold,
            device="meta",
        )
        if conv:
            setattr(new, FROM_CONV1D, True)
        if quantize_existing:
            W = m.weight.detach()
            new.weight = quantize_weight(W.t() if conv else W)
            if m.bias is not None:
                new.bias = nn.Parameter(m.bias.detach(), requires_grad=False)
        else:
            new.requires_grad_(False)
        new.train(m.training)
        model.set_submodule(name, new)
    return [n for n, _ in targets]


class Lt8Quantize(ConversionOps):
    """Loader op for a float checkpoint: a ``Linear8bitLt``'s float weight -> int8, quantized on
    the device the loader put it on."""

    def __init__(self, hf_quantizer):
        self.hf_quantizer = hf_quantizer

    @torch.no_grad()
    def convert(self, input_dict, model=None, **kwargs):
        out = {}
        for name, value in input_dict.items():
            value = value[0] if isinstance(value, list) else value
            module, _ = get_module_from_name(model, name)
            out[name] = quantize_weight(value.t() if getattr(module, FROM_CONV1D, False) else value)
            module._is_hf_initialized = True
        return out


class Lt8Deserialize(ConversionOps):
    """Loader op for an int8 checkpoint: ``weight`` (int8), ``SCB`` and ``weight_format`` of one
    layer -> its ``Int8Params``. A float tensor that merely ends in ``weight`` (a norm, the
    head) comes alone and passes through (see :meth:`_alone`)."""

    def __init__(self, hf_quantizer):
        self.hf_quantizer = hf_quantizer

    @torch.no_grad()
    def convert(self, input_dict, model=None, full_layer_name=None, **kwargs):
        got = {k: (v[0] if isinstance(v, list) else v) for k, v in input_dict.items()}
        if len(got) == 1:
            return self._alone(got, model, full_layer_name, input_dict)
        if "weight" not in got or "SCB" not in got:
            raise ValueError(
                f"{full_layer_name}: an int8 layer needs 'weight' and 'SCB', got {sorted(got)}"
            )
        module, _ = get_module_from_name(model, full_layer_name)
        if not isinstance(module, Linear8bitLt):
            raise ValueError(
                f"{full_layer_name}: the checkpoint holds an int8 layer here but the model has a "
                f"{type(module).__name__}"
            )
        CB, SCB = got["weight"], got["SCB"].to(torch.float32)
        out_f, in_f = module.out_features, module.in_features
        if CB.dtype != torch.int8 or tuple(SCB.shape) != (out_f,):
            raise ValueError(
                f"{full_layer_name}: expected an int8 weight and SCB of shape ({out_f},), got "
                f"{CB.dtype} {tuple(CB.shape)} and {tuple(SCB.shape)}"
            )
        fmt = int(got["weight_format"]) if "weight_format" in got else WEIGHT_FORMATS["row"]
        if fmt != WEIGHT_FORMATS["row"]:  # old bitsandbytes tiled layouts
            CB = torch.ops.lt8.transform_layout(CB, out_f, in_f, format_name(fmt), "row")
        elif tuple(CB.shape) != (out_f, in_f):
            raise ValueError(
                f"{full_layer_name}: expected an int8 weight of shape {(out_f, in_f)}, got "
                f"{tuple(CB.shape)}"
            )
        module._is_hf_initialized = True
        return {"weight": Int8Params(CB, requires_grad=False, has_fp16_weights=False, SCB=SCB)}

    @staticmethod
    def _alone(got, model, full_layer_name, input_dict):
        """A lone tensor: passes through, unless it is the float weight of a layer the model
        holds in int8 (a checkpoint that kept it in float): quantized on the way in, as
        ``Linear8bitLt.load_state_dict`` does."""
        ((key, value),) = got.items()
        module, _ = get_module_from_name(model, full_layer_name)
        if key != "weight" or not isinstance(module, Linear8bitLt):
            return input_dict
        if not value.is_floating_point():
            raise ValueError(
                f"{full_layer_name}: a {value.dtype} weight without its scales (SCB): an int8 "
                f"checkpoint needs both"
            )
        module._is_hf_initialized = True
        return {key: quantize_weight(value.t() if getattr(module, FROM_CONV1D, False) else value)}


class Lt8HfQuantizer(HfQuantizer):
    """transformers' quantizer for :class:`lt8.hf.Lt8Config` (``quant_method="lt8"``)."""

    requires_calibration = False
    serialized_names = {"weight": ["weight", "SCB", "weight_format"]}

    @property
    def quantized_element_size(self) -> float:
        return 1  # accelerate's device_map="auto" sizes int8 layers at one byte a weight

    def validate_environment(self, *args, device_map=None, **kwargs):
        if isinstance(device_map, dict) and "disk" in device_map.values():
            raise ValueError(
                "lt8: device_map places modules on 'disk', which int8 layers do not support "
                "(their scales live beside the weight); give them CPU or GPU memory"
            )

    def param_needs_quantization(self, model, param_name: str, **kwargs) -> bool:
        module, name = get_module_from_name(model, param_name)
        return isinstance(module, Linear8bitLt) and name == "weight"

    def modules_to_skip(self, model) -> list[str]:
        """The module names kept in float: the config's ``skip_modules`` (default: the output
        head and tied weights) plus the model's ``_keep_in_fp32_modules``."""
        return self.get_modules_to_not_convert(
            model,
            self.quantization_config.skip_modules,
            getattr(model, "_keep_in_fp32_modules", None),
        )

    def _process_model_before_weight_loading(self, model, device_map=None, **kwargs):
        self.modules_to_not_convert = self.modules_to_skip(model)
        replace_with_lt8_linear(
            model, self.modules_to_not_convert, self.quantization_config.threshold
        )
        return model

    def _process_model_after_weight_loading(self, model, **kwargs):
        # PEFT's prepare_model_for_kbit_training looks for this flag.
        model.is_loaded_in_8bit = True
        return model

    def is_serializable(self) -> bool:
        return True

    @property
    def is_trainable(self) -> bool:
        return True  # adapters (LoRA) train on the frozen int8 layers

    @property
    def is_compileable(self) -> bool:
        # The lt8 ops have fake kernels and shapes that depend on input shapes only, so
        # torch.compile(fullgraph=True) and CUDA graphs take them; transformers' static-cache
        # generate compiles the forward only when the quantizer says so (else it runs eager).
        return True

    def get_quantize_ops(self):
        return Lt8Quantize(self)

    def get_load_operations(self) -> dict:
        return {"deserialize": Lt8Deserialize}

    def get_weight_conversions(self):
        """An int8 checkpoint: each layer's weight, SCB and weight_format into one Int8Params.
        Built here rather than from ``serialized_names`` by the base class, which only newer
        transformers 5 releases do."""
        from transformers.core_model_loading import WeightConverter

        if not self.pre_quantized:
            return []
        return [
            WeightConverter(
                source_patterns=self.serialized_names["weight"],
                target_patterns="weight",
                operations=[Lt8Deserialize(self)],
            )
        ]
