"""Shortcuts over the quantizer for models already in memory, and lt8's older spellings.

:func:`convert_hf_model` quantizes a loaded float model in place with the same module swap the
quantizer does at load time and attaches the quantizer, so the model then behaves as one loaded
with ``quantization_config=Lt8Config(...)`` (``save_pretrained`` writes the int8 weights and the
config). :func:`save_pretrained_8bit` and :func:`from_pretrained_8bit` are ``save_pretrained``
and ``from_pretrained``.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import torch
from torch import nn

from lt8.hf.config import QUANT_METHOD, Lt8Config
from lt8.hf.quantizer import Lt8HfQuantizer, replace_with_lt8_linear
from lt8.torch import Linear8bitLt

__all__ = ["HF_WEIGHTS_NAME", "convert_hf_model", "from_pretrained_8bit", "save_pretrained_8bit"]

#: The weights file ``save_pretrained`` writes (one shard).
HF_WEIGHTS_NAME = "model.safetensors"


def _check_transformers_model(model, what: str) -> None:
    from transformers import PreTrainedModel

    if not isinstance(model, PreTrainedModel):
        raise TypeError(
            f"{what} needs a transformers PreTrainedModel, got {type(model).__name__}; use "
            f"lt8.torch.replace_linear / save_quantized for other models"
        )


def _attach(model, config: Lt8Config) -> None:
    """What from_pretrained does for a quantized model: remember the quantizer and its config."""
    quantizer = Lt8HfQuantizer(config, pre_quantized=False)
    model.is_quantized = True
    model.quantization_method = QUANT_METHOD
    model.hf_quantizer = quantizer
    quantizer.postprocess_model(model)


def convert_hf_model(
    model: nn.Module,
    threshold: float = 6.0,
    skip_modules: Iterable[str] | None = None,
    progress: bool | None = None,
) -> nn.Module:
    """Quantizes a loaded ``transformers`` model in place, as
    ``from_pretrained(..., quantization_config=Lt8Config(threshold, skip_modules))`` would have:
    every ``nn.Linear`` (and ``Conv1D``) becomes an int8 ``Linear8bitLt``, quantized on the
    device its weight is on, except the skipped modules (default: the output head). Prefer
    loading with ``Lt8Config``, which never holds the float model. ``progress`` is accepted for
    compatibility. Returns the model."""
    del progress
    _check_transformers_model(model, "convert_hf_model")
    config = Lt8Config(threshold=threshold, skip_modules=skip_modules)
    quantizer = Lt8HfQuantizer(config, pre_quantized=False)
    with torch.no_grad():
        replace_with_lt8_linear(model, quantizer.modules_to_skip(model), config.threshold, True)
    _attach(model, config)
    return model


def save_pretrained_8bit(model: nn.Module, save_directory: str | os.PathLike, **kwargs) -> Path:
    """``model.save_pretrained(save_directory, **kwargs)`` for an lt8-quantized model (a model
    quantized by other means, e.g. ``lt8.torch.replace_linear``, gets the quantizer attached
    first, with its layers' common threshold). Returns the weights file's path."""
    _check_transformers_model(model, "save_pretrained_8bit")
    layers = [m for m in model.modules() if isinstance(m, Linear8bitLt)]
    if not layers:
        raise ValueError(
            "save_pretrained_8bit: the model has no Linear8bitLt layer: load it with "
            "quantization_config=lt8.hf.Lt8Config() (or convert it with lt8.hf.convert_hf_model)"
        )
    if getattr(model, "hf_quantizer", None) is None:
        thresholds = {m.state.threshold for m in layers}
        if len(thresholds) != 1:
            raise ValueError(
                f"save_pretrained_8bit: the layers have different thresholds {sorted(thresholds)}; "
                f"Lt8Config holds one"
            )
        _attach(model, Lt8Config(threshold=thresholds.pop(), skip_modules=[]))
    model.save_pretrained(save_directory, **kwargs)
    return Path(save_directory) / HF_WEIGHTS_NAME


def from_pretrained_8bit(
    pretrained_directory: str | os.PathLike,
    model_class=None,
    *,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    threshold: float | None = None,
    **kwargs,
) -> nn.Module:
    """``model_class.from_pretrained(pretrained_directory, local_files_only=True, ...)`` of a
    folder saved from an lt8 model (``model_class``: default the class ``config.json`` names,
    else ``AutoModel``). ``device`` becomes ``device_map``; ``threshold`` overrides the saved
    one in every int8 layer. Returns the model in eval mode."""
    import transformers
    from transformers import AutoConfig

    folder = Path(pretrained_directory)
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"{os.fspath(folder)!r} has no config.json")
    if model_class is None:
        config = AutoConfig.from_pretrained(folder, local_files_only=True)
        names = getattr(config, "architectures", None) or ()
        found = [getattr(transformers, n) for n in names if hasattr(transformers, n)]
        model_class = found[0] if found else transformers.AutoModel
    if device is not None:
        kwargs["device_map"] = device
    if dtype is not None:
        kwargs["dtype"] = dtype
    model = model_class.from_pretrained(folder, local_files_only=True, **kwargs)
    if threshold is not None:
        from lt8.torch._ops import as_threshold

        t = as_threshold(threshold)
        for m in model.modules():
            if isinstance(m, Linear8bitLt):
                m.state.threshold = t
        model.config.quantization_config.threshold = t
    return model.eval()
