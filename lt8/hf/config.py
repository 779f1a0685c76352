"""``Lt8Config``: the ``quantization_config`` that makes transformers load a model in LLM.int8()
with lt8 (``quant_method="lt8"``; registered with transformers when :mod:`lt8.hf` is imported)."""

from __future__ import annotations

from collections.abc import Iterable

from transformers.utils.quantization_config import QuantizationConfigMixin

from lt8.torch._ops import as_threshold

QUANT_METHOD = "lt8"


class Lt8Config(QuantizationConfigMixin):
    """LLM.int8() with lt8, for ``from_pretrained(..., quantization_config=Lt8Config())``.

    Args:
        threshold: the outlier threshold of every int8 layer (activation magnitude at or above
            which a column is computed in float; 0 disables the decomposition; 6.0 is the
            paper's choice).
        skip_modules: modules to keep in float, matched as transformers matches
            ``llm_int8_skip_modules`` (a dotted prefix of the module's name, a regex on it, or
            a suffix of it: ``"lm_head"``, ``"v_proj"``, ``"model.layers.1.mlp"``). ``None``
            keeps transformers' defaults: the output head and the weights tied to it. A list
            replaces them (name the head too, if it must stay in float).

    The config is saved in ``config.json`` (``quantization_config``) by ``save_pretrained``, so
    a plain ``from_pretrained`` of the folder reloads the int8 weights (after ``import lt8.hf``).
    """

    def __init__(self, threshold: float = 6.0, skip_modules: Iterable[str] | None = None, **kwargs):
        quant_method = kwargs.pop("quant_method", QUANT_METHOD)
        if quant_method != QUANT_METHOD:
            raise ValueError(
                f"Lt8Config: quant_method must be {QUANT_METHOD!r}, got {quant_method!r}"
            )
        if kwargs:
            raise TypeError(f"Lt8Config got unexpected arguments {sorted(kwargs)}")
        self.quant_method = QUANT_METHOD
        self.threshold = as_threshold(threshold)
        if isinstance(skip_modules, str):
            raise TypeError(
                f"skip_modules must be a list of module names, not one string ({skip_modules!r})"
            )
        if skip_modules is not None:
            skip_modules = list(skip_modules)
            bad = [m for m in skip_modules if not isinstance(m, str) or not m]
            if bad:
                raise TypeError(f"skip_modules must hold non-empty strings, got {bad!r}")
        self.skip_modules = skip_modules
