"""Hugging Face ``transformers`` models in 8 bits with lt8.

::

    from transformers import AutoModelForCausalLM
    import lt8.hf

    model = AutoModelForCausalLM.from_pretrained("...", dtype=torch.float16).cuda()
    lt8.hf.convert_hf_model(model, threshold=6.0)   # every Linear but the output head -> int8
    out = model.generate(**inputs)
    lt8.hf.save_pretrained_8bit(model, "model-int8")  # config.json + lt8_model.safetensors
    model = lt8.hf.from_pretrained_8bit("model-int8", device="cuda")

:func:`convert_hf_model` swaps every ``nn.Linear`` (and GPT-2-style ``Conv1D``, whose weight is
stored transposed) for an lt8 ``Linear8bitLt``, quantizing each weight on the device it is on.
:func:`save_pretrained_8bit` writes a folder laid out like ``save_pretrained``'s: the model's
``config.json`` (and ``generation_config.json``) and one weights file, ``lt8_model.safetensors``,
in lt8's checkpoint format (:mod:`lt8.core.checkpoint`: int8 ``weight`` + ``SCB`` under
bitsandbytes' keys, other tensors as they are, outlier thresholds in the metadata). The file has
its own name on purpose: transformers' ``from_pretrained`` would load int8 values into float
parameters with a mere "unexpected keys" report; without a ``model.safetensors`` it refuses the
folder instead. :func:`from_pretrained_8bit` builds the model from the config, converts exactly
the layers that the file holds in int8 and loads it. It also reads the ``model.safetensors`` that
``model.save_pretrained`` writes from a converted model (tied weights left out included).
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Iterable
from pathlib import Path

import torch
from torch import nn

from lt8.core import checkpoint as ckpt
from lt8.torch.nn import Linear8bitLt, load_quantized, replace_linear, save_quantized

__all__ = [
    "DEFAULT_SKIP",
    "HF_WEIGHTS_NAME",
    "WEIGHTS_NAME",
    "convert_hf_model",
    "default_skip_modules",
    "from_pretrained_8bit",
    "save_pretrained_8bit",
]

#: Module names that stay in float by default: the language-model head, whatever the model calls
#: its output embeddings (:func:`default_skip_modules` adds that name).
DEFAULT_SKIP = ("lm_head",)
WEIGHTS_NAME = "lt8_model.safetensors"
#: What ``save_pretrained`` of a converted model writes; :func:`from_pretrained_8bit` reads it too.
HF_WEIGHTS_NAME = "model.safetensors"


def _name_of(model: nn.Module, module: nn.Module) -> str | None:
    for name, m in model.named_modules():
        if m is module:
            return name
    return None


def default_skip_modules(model: nn.Module) -> tuple:
    """:data:`DEFAULT_SKIP` plus the name of ``model.get_output_embeddings()`` (the output head,
    e.g. ``"cls.predictions.decoder"`` for BERT's masked-LM head), when the model has one."""
    skip = list(DEFAULT_SKIP)
    get_out = getattr(model, "get_output_embeddings", None)
    head = get_out() if callable(get_out) else None
    if isinstance(head, nn.Module):
        name = _name_of(model, head)
        if name and name not in skip:
            skip.append(name)
    return tuple(skip)


def _skipped(name: str, skip: set) -> bool:
    # replace_linear's rule: the whole dotted name, or any component of it, is in skip.
    return name in skip or bool(skip & set(name.split(".")))


def _conv1d_to_linear(model: nn.Module, skip: set, only: set | None = None) -> None:
    """Replaces transformers' ``Conv1D`` layers (weight (in, out), GPT-2) by equivalent
    ``nn.Linear`` s (weight (out, in)), so that replace_linear converts them."""
    try:
        from transformers.pytorch_utils import Conv1D
    except ImportError:
        return
    targets = [
        (n, m)
        for n, m in model.named_modules()
        if isinstance(m, Conv1D) and not _skipped(n, skip) and (only is None or n in only)
    ]
    for name, conv in targets:
        in_f, out_f = conv.weight.shape
        lin = nn.Linear(in_f, out_f, bias=conv.bias is not None, device="meta")
        lin.weight = nn.Parameter(
            conv.weight.data.t().contiguous(), requires_grad=conv.weight.requires_grad
        )
        if conv.bias is not None:
            lin.bias = nn.Parameter(conv.bias.data, requires_grad=conv.bias.requires_grad)
        lin.train(conv.training)
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, child, lin)


def convert_hf_model(
    model: nn.Module,
    threshold: float = 6.0,
    skip_modules: Iterable[str] | None = None,
    progress: bool | None = None,
) -> nn.Module:
    """Converts a ``transformers`` model (in place) to LLM.int8(): every ``nn.Linear`` (and
    ``Conv1D``) becomes an lt8 ``Linear8bitLt`` with int8 weights, except the modules named in
    ``skip_modules`` (a module is skipped when its dotted name, or any component of it, is in
    the list). ``skip_modules=None`` skips the output head (:func:`default_skip_modules`); pass
    ``()`` to convert everything. Embeddings and norms are not Linear layers and stay as they are.

    Weights are quantized on the device they are on: move the model to the GPU first (e.g. in
    float16) to quantize there. ``threshold`` is the outlier threshold (0 disables the
    decomposition). Returns the model.
    """
    if isinstance(skip_modules, str):
        raise TypeError(
            f"skip_modules must be a list of module names, not one string ({skip_modules!r})"
        )
    skip = default_skip_modules(model) if skip_modules is None else tuple(skip_modules)
    _conv1d_to_linear(model, set(skip))
    return replace_linear(model, threshold=threshold, skip_modules=skip, progress=progress)


def save_pretrained_8bit(
    model: nn.Module, save_directory: str | os.PathLike, *, metadata: dict | None = None
) -> Path:
    """Writes a converted model to ``save_directory`` (created if needed): ``config.json``
    (``model.config.save_pretrained``), ``generation_config.json`` when the model has one, and
    :data:`WEIGHTS_NAME` in lt8's checkpoint format (:func:`lt8.torch.save_quantized`: int8
    layers under bitsandbytes' keys, thresholds in the metadata). ``metadata`` adds string
    entries to the file. Save the tokenizer with its own ``save_pretrained``. Returns the
    weights file's path; :func:`from_pretrained_8bit` loads the folder."""
    if not any(isinstance(m, Linear8bitLt) for m in model.modules()):
        raise ValueError(
            "save_pretrained_8bit: the model has no Linear8bitLt layer: convert it "
            "with lt8.hf.convert_hf_model first"
        )
    config = getattr(model, "config", None)
    if config is None or not hasattr(config, "save_pretrained"):
        raise TypeError(
            f"save_pretrained_8bit needs a transformers model (with a .config), got "
            f"{type(model).__name__}; use lt8.torch.save_quantized for other models"
        )
    folder = Path(save_directory)
    folder.mkdir(parents=True, exist_ok=True)
    config.architectures = [type(model).__name__]
    config.save_pretrained(folder)
    generation_config = getattr(model, "generation_config", None)
    can_generate = getattr(model, "can_generate", lambda: False)
    if generation_config is not None and can_generate():
        generation_config.save_pretrained(folder)
    meta = {"lt8.hf_architecture": type(model).__name__, **(metadata or {})}
    path = folder / WEIGHTS_NAME
    save_quantized(model, path, metadata=meta)
    return path


def _model_class(config, model_class):
    import transformers

    if model_class is not None:
        return model_class
    for name in getattr(config, "architectures", None) or ():
        cls = getattr(transformers, name, None)
        if cls is not None:
            return cls
    return transformers.AutoModel


def _no_init_weights():
    """transformers' context that skips random weight initialization (all weights are loaded)."""
    for module in ("transformers.initialization", "transformers.modeling_utils"):
        try:
            return __import__(module, fromlist=["no_init_weights"]).no_init_weights()
        except (ImportError, AttributeError):
            continue
    return contextlib.nullcontext()


def _config_dtype(config) -> torch.dtype | None:
    for attr in ("dtype", "torch_dtype"):
        d = getattr(config, attr, None)
        if isinstance(d, str):
            d = getattr(torch, d, None)
        if isinstance(d, torch.dtype) and d.is_floating_point:
            return d
    return None


def _int8_layers(path: Path) -> list:
    from safetensors import safe_open

    with safe_open(os.fspath(path), framework="np") as f:
        return ckpt.linear_prefixes(dict.fromkeys(f.keys()))


def _untied(model: nn.Module, missing: Iterable[str]) -> list:
    """The keys of ``missing`` whose tensor is not shared with a key that was loaded."""
    own = model.state_dict(keep_vars=True)
    missing = set(missing)
    loaded_ids = {id(t) for k, t in own.items() if k not in missing}
    return sorted(k for k in missing if id(own[k]) not in loaded_ids)


def from_pretrained_8bit(
    pretrained_directory: str | os.PathLike,
    model_class=None,
    *,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    threshold: float | None = None,
    **config_kwargs,
) -> nn.Module:
    """Loads a folder written by :func:`save_pretrained_8bit` (or by ``save_pretrained`` of a
    converted model): builds the model from ``config.json`` (``model_class``, default the class
    the config names in ``architectures``, else ``AutoModel``), converts exactly the layers
    that the weights file holds in int8, and loads the file (everything is checked before
    anything is copied; see :func:`lt8.torch.load_quantized`).

    Each layer's outlier threshold is the one the file was saved with (``threshold``
    overrides it; 6.0 when the file names none). ``dtype`` is the float parameters' dtype
    (default: the config's ``dtype``/``torch_dtype``, else float32); ``device`` moves the model
    there (int8 weights stay int8). ``config_kwargs`` go to ``AutoConfig.from_pretrained``. Returns the model in
    eval mode. Nothing is downloaded: the folder must be local.
    """
    from transformers import AutoConfig

    folder = Path(pretrained_directory)
    weights = folder / WEIGHTS_NAME
    if not weights.is_file():
        weights = folder / HF_WEIGHTS_NAME
    if not (folder / "config.json").is_file() or not weights.is_file():
        raise FileNotFoundError(
            f"{os.fspath(folder)!r} must be a folder with config.json and {WEIGHTS_NAME} "
            f"(as lt8.hf.save_pretrained_8bit writes) or {HF_WEIGHTS_NAME}; sharded "
            f"checkpoints are not supported"
        )
    info = ckpt.read_info(weights)
    int8 = set(_int8_layers(weights))
    config = AutoConfig.from_pretrained(folder, **{"local_files_only": True, **config_kwargs})
    cls = _model_class(config, model_class)
    with _no_init_weights():
        model = (
            cls.from_config(config)
            if cls.__module__.startswith("transformers.models.auto")
            else cls(config)
        )
    if callable(getattr(model, "tie_weights", None)):
        model.tie_weights()  # some versions tie only in from_pretrained
    dtype = dtype or _config_dtype(config)
    if dtype is not None:
        model.to(dtype)
    linear_like = {n for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    _conv1d_to_linear(model, skip=set(), only=int8)
    linear_like |= {n for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    not_linear = sorted(int8 - linear_like)
    if not_linear:
        raise ckpt.CheckpointError(
            f"{os.fspath(weights)}: int8 layers {ckpt._preview(not_linear)} are not Linear layers of "
            f"{cls.__name__}: pass the model_class the checkpoint was saved from"
        )
    default = threshold if threshold is not None else info.threshold_for("")
    default = 6.0 if default is None else default
    replace_linear(model, threshold=default, skip_modules=sorted(linear_like - int8))
    # replace_linear also skips a layer one of whose name's components is a skipped name.
    unconverted = sorted(n for n in int8 if not isinstance(model.get_submodule(n), Linear8bitLt))
    if unconverted:
        raise ckpt.CheckpointError(
            f"{os.fspath(weights)}: cannot convert {ckpt._preview(unconverted)} alone: a float "
            f"layer's name is a component of theirs; convert the model with convert_hf_model and "
            f"load the file with lt8.torch.load_quantized"
        )
    if threshold is None:
        for name, m in model.named_modules():
            saved = info.threshold_for(name) if isinstance(m, Linear8bitLt) else None
            if saved is not None:
                m.state.threshold = saved
    # Not strict: save_pretrained leaves out tied weights (lm_head = the input embeddings). The
    # model is our own fresh one, so checking the keys after loading loses nothing.
    with warnings.catch_warnings():
        if threshold is not None:  # asked for: no warning that the file's thresholds differ
            warnings.simplefilter("ignore")
        missing, unexpected = load_quantized(model, weights, strict=False)
    untied = _untied(model, missing)
    if untied or unexpected:
        raise ckpt.CheckpointError(
            f"{os.fspath(weights)} does not fit {cls.__name__}: "
            + "; ".join(
                f"{what} keys: {ckpt._preview(keys)}"
                for what, keys in (("missing", untied), ("unexpected", unexpected))
                if keys
            )
        )
    model.eval()
    return model if device is None else model.to(device)
