"""Hugging Face ``transformers`` models in 8 bits with lt8, through transformers' quantizer API.

::

    import lt8.hf  # registers quant_method "lt8" with transformers
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(
        path, quantization_config=lt8.hf.Lt8Config(threshold=6.0), device_map="auto"
    )  # every Linear but the output head quantized to int8 while it loads
    model.save_pretrained("model-int8")  # int8 weights + SCB, quantization_config in config.json
    model = AutoModelForCausalLM.from_pretrained("model-int8")  # the same bits

:class:`Lt8Config` is the ``quantization_config``; :class:`~lt8.hf.quantizer.Lt8HfQuantizer`
(``lt8/hf/quantizer.py``) hooks into loading as transformers' bitsandbytes 8-bit quantizer does.
PEFT's ``prepare_model_for_kbit_training`` and LoRA work on the loaded model (the int8 layers
are ``nn.Linear`` subclasses). :func:`convert_hf_model`, :func:`save_pretrained_8bit` and
:func:`from_pretrained_8bit` (``lt8/hf/helpers.py``) are shortcuts over the same machinery.
"""

from __future__ import annotations

from transformers.quantizers.auto import (
    AUTO_QUANTIZATION_CONFIG_MAPPING,
    AUTO_QUANTIZER_MAPPING,
    register_quantization_config,
    register_quantizer,
)

from lt8.hf.config import QUANT_METHOD, Lt8Config
from lt8.hf.helpers import (
    HF_WEIGHTS_NAME,
    convert_hf_model,
    from_pretrained_8bit,
    save_pretrained_8bit,
)
from lt8.hf.quantizer import Lt8HfQuantizer, replace_with_lt8_linear

# transformers refuses a second registration of a name (e.g. after importlib.reload).
if AUTO_QUANTIZATION_CONFIG_MAPPING.get(QUANT_METHOD) is not Lt8Config:
    AUTO_QUANTIZATION_CONFIG_MAPPING.pop(QUANT_METHOD, None)
    register_quantization_config(QUANT_METHOD)(Lt8Config)
if AUTO_QUANTIZER_MAPPING.get(QUANT_METHOD) is not Lt8HfQuantizer:
    AUTO_QUANTIZER_MAPPING.pop(QUANT_METHOD, None)
    register_quantizer(QUANT_METHOD)(Lt8HfQuantizer)

__all__ = [
    "HF_WEIGHTS_NAME",
    "QUANT_METHOD",
    "Lt8Config",
    "Lt8HfQuantizer",
    "convert_hf_model",
    "from_pretrained_8bit",
    "replace_with_lt8_linear",
    "save_pretrained_8bit",
]
