"""torch models <-> lt8 checkpoints (one safetensors format for torch and JAX).

The file format and its keys are :mod:`lt8.core.checkpoint`'s; this module is the torch side of
it, as :mod:`lt8.jax.checkpoint` is the Flax side. A torch state dict needs no mapping: a
``Linear8bitLt`` at dotted path ``P`` already stores ``P.weight`` (int8, (out, in)),
``P.SCB``, ``P.weight_format`` and ``P.bias`` under bitsandbytes' keys, and every other tensor
(a LayerNorm's, an embedding's) keeps its name.

* :func:`save_quantized` / :func:`load_quantized`: a whole model to and from a file, the load
  checked in full (:func:`check_fits`) before anything is copied;
* :func:`to_numpy` / :func:`from_numpy`: torch tensors to numpy arrays and back (bfloat16 as
  ``ml_dtypes.bfloat16``). Importing this module registers them as torch's conversions with
  :func:`lt8.core.arrays.register_array_library`, so lt8.core (which imports no framework)
  reads and makes torch tensors on any device.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping

import numpy as np
import torch
from torch import nn

from lt8.core import arrays
from lt8.core import checkpoint as ckpt
from lt8.torch.nn import Linear8bitLt

__all__ = [
    "check_fits",
    "from_numpy",
    "layer_thresholds",
    "load_quantized",
    "save_quantized",
    "to_numpy",
]


# --- tensors <-> numpy ----------------------------------------------------------------------------


def to_numpy(t: torch.Tensor) -> np.ndarray:
    """A torch tensor (any device, any dtype, with or without grad) as a numpy array on the host.

    bfloat16 has no numpy dtype of its own: it becomes ``ml_dtypes.bfloat16`` (bit for bit) when
    that package (a jax dependency) is installed, else float32, which holds every bfloat16
    exactly."""
    t = t.detach().cpu()
    if t.dtype == torch.bfloat16:
        try:
            import ml_dtypes
        except ImportError:
            return t.to(torch.float32).numpy()
        return t.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
    return t.numpy()


def from_numpy(a: np.ndarray) -> torch.Tensor:
    """A numpy array as a CPU torch tensor (``ml_dtypes.bfloat16`` as torch.bfloat16, bit for
    bit); a read-only array (as safetensors returns) is copied, a writable one shared."""
    if not a.flags.writeable:
        a = a.copy()
    if a.dtype.name == "bfloat16":  # ml_dtypes' bfloat16: reinterpret the bits
        return torch.from_numpy(a.view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(a)


def _from_numpy_like(a: np.ndarray, like: torch.Tensor | None) -> torch.Tensor:
    t = from_numpy(np.ascontiguousarray(a))
    return t if like is None else t.to(like.device)


arrays.register_array_library("torch", torch.Tensor, to_numpy, _from_numpy_like)


# --- whole models ---------------------------------------------------------------------------------


def layer_thresholds(model: nn.Module) -> dict[str, float]:
    """The outlier threshold of every ``Linear8bitLt`` of ``model``, by dotted name."""
    return {
        name: float(m.state.threshold)
        for name, m in model.named_modules()
        if isinstance(m, Linear8bitLt)
    }


def save_quantized(
    model: nn.Module, path: str | os.PathLike, *, metadata: Mapping[str, str] | None = None
) -> None:
    """Writes ``model.state_dict()`` as an lt8 checkpoint (safetensors; see
    :mod:`lt8.core.checkpoint`): int8 layers under bitsandbytes' keys, every other tensor as
    it is, and the outlier thresholds of its ``Linear8bitLt`` layers in the metadata (one
    number when they all agree, else one per layer). ``metadata`` adds string entries.
    Loads back with :func:`load_quantized`, and into JAX with ``lt8.jax.load_variables``.
    """
    thresholds = layer_thresholds(model)
    values = set(thresholds.values())
    threshold = None if not values else values.pop() if len(values) == 1 else thresholds
    tensors = {k: to_numpy(v) for k, v in model.state_dict().items()}
    ckpt.save_file(tensors, path, threshold=threshold, metadata=metadata)


def _kind(t: torch.Tensor) -> str:
    if t.dtype == torch.bool:
        return "bool"
    return "complex" if t.is_complex() else "float" if t.is_floating_point() else "integer"


def check_fits(
    model: nn.Module, state_dict: Mapping[str, torch.Tensor], strict: bool = True
) -> list[str]:
    """Every reason ``state_dict`` cannot be loaded into ``model`` (empty if it can), found
    without touching the model.

    torch's ``load_state_dict`` copies tensor after tensor and reports problems only at the
    end, so it must see nothing it would refuse: each ``Linear8bitLt`` is checked with
    :func:`lt8.core.checkpoint.validate_linear` (an int8 layer in the file) or
    :func:`~lt8.core.checkpoint.validate_float_linear` (a float one, quantized on the way in),
    every other tensor against the model's own shape and kind, and with ``strict`` the keys.
    """
    sd = state_dict
    errors: list[str] = []
    own = model.state_dict(keep_vars=True)  # references, no copies
    checked: set = set()  # keys whose shape and dtype the layer checks below own
    optional: set = set()  # keys of the model that the file may lack
    extra: set = set()  # keys of the file that the model's state dict lacks, but takes
    modules = dict(model.named_modules())
    for name, m in modules.items():
        if not isinstance(m, Linear8bitLt):
            continue
        wk, sk, bk, fk = ckpt.linear_keys(name)
        checked.add(wk)
        optional.add(fk)  # bitsandbytes' older files have no weight_format
        try:
            if sk in sd:  # an int8 layer in the file
                extra.update((sk, fk))
                checked.update((sk, fk, bk))
                if m.weight.dtype != torch.int8 or m.weight.SCB is None:
                    errors.append(
                        f"{name or 'the model'}: the file holds an int8 layer ({wk}, {sk}) but "
                        f"this Linear8bitLt is not quantized: create it with "
                        f"has_fp16_weights=False and move it to its device first "
                        f"(module.to(device); on the CPU module.to('cpu'))"
                    )
                    continue
                ckpt.validate_linear(sd, name, m.out_features, m.in_features)
            elif wk in sd:  # a float weight: quantized on load into an int8 layer
                optional.add(sk)
                checked.add(bk)
                ckpt.validate_float_linear(sd, name, m.out_features, m.in_features)
        except ckpt.CheckpointError as e:
            errors.append(str(e))
    for p in ckpt.linear_prefixes(sd):
        mod = modules.get(p)
        if mod is not None and not isinstance(mod, Linear8bitLt):
            errors.append(
                f"{p or 'the model'}: the file holds an int8 layer but the model has a "
                f"{type(mod).__name__} there: convert it with lt8.torch.replace_linear first"
            )
            wk, sk, bk, fk = ckpt.linear_keys(p)
            checked.update((wk, sk, bk, fk))
            extra.update((sk, fk))
    for k, t in sd.items():
        if k in checked or k not in own or not isinstance(own[k], torch.Tensor):
            continue
        mine = own[k]
        if nn.parameter.is_lazy(mine):
            continue
        if tuple(t.shape) != tuple(mine.shape):
            errors.append(f"{k}: expected shape {tuple(mine.shape)}, got {tuple(t.shape)}")
        elif _kind(t) != _kind(mine):
            errors.append(f"{k}: expected a {_kind(mine)} tensor ({mine.dtype}), got {t.dtype}")
    if strict:
        missing = [k for k in own if k not in sd and k not in optional]
        unexpected = [k for k in sd if k not in own and k not in extra]
        if missing:
            errors.append(f"missing keys: {ckpt.preview_keys(missing)}")
        if unexpected:
            errors.append(f"unexpected keys: {ckpt.preview_keys(unexpected)}")
    return errors


def load_quantized(model: nn.Module, path: str | os.PathLike, strict: bool = True):
    """Loads an lt8 (or bitsandbytes 8-bit) safetensors checkpoint into ``model``, whose
    ``nn.Linear`` layers are ``Linear8bitLt`` already (``replace_linear``; quantized, that is
    moved to their device). Float weights in the file are quantized on the way in.

    Everything is checked before anything is copied (:func:`check_fits`): keys (with
    ``strict``), shapes, dtypes, each int8 layer against its module
    (:func:`lt8.core.checkpoint.validate_linear`: weight int8 (out, in), SCB float32 (out,), a
    known weight_format). A file that does not fit, is truncated, or is not a checkpoint raises
    a ``ValueError`` (:class:`lt8.core.checkpoint.CheckpointError`) and leaves the model as it
    was.

    The model's layers keep their own outlier thresholds; a warning says which differ from the
    ones the file was saved with. Returns ``load_state_dict``'s ``(missing_keys,
    unexpected_keys)``.
    """
    arrays, info = ckpt.load_file(path)
    sd = {k: from_numpy(a) for k, a in arrays.items()}
    errors = check_fits(model, sd, strict)
    if errors:
        raise ckpt.CheckpointError(
            f"{os.fspath(path)} does not fit this {type(model).__name__} (nothing was loaded):\n  "
            + "\n  ".join(errors)
        )
    result = model.load_state_dict(sd, strict=strict)
    differ = {}
    for name, t in layer_thresholds(model).items():
        saved = info.threshold_for(name)
        if saved is not None and saved != t:
            differ[name or "<model>"] = (t, saved)
    if differ:
        shown = ", ".join(f"{n}: {t} (file: {s})" for n, (t, s) in list(differ.items())[:4])
        more = f", ... ({len(differ)} layers)" if len(differ) > 4 else ""
        warnings.warn(
            f"{os.fspath(path)} was saved with other outlier thresholds than this "
            f"model's layers, which keep theirs: {shown}{more}",
            stacklevel=2,
        )
    return result
