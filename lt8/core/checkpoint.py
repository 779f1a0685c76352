"""The checkpoint format shared by lt8's torch and JAX frontends (and bitsandbytes).

A quantized linear layer is stored under bitsandbytes' keys:

* ``weight``: int8 (out_features, in_features), row-major (``CB``);
* ``SCB``: float32 (out_features,), the absmax of each weight row;
* ``bias``: optional (out_features,);
* ``weight_format``: uint8 scalar, 0 for row-major (1..3 name cuBLASLt's tiled orders, which
  only old bitsandbytes checkpoints use; lt8 always writes 0).

Flax stores kernels as (in_features, features); lt8's Flax modules keep the int8 weight in the
checkpoint's (out, in) orientation so no transpose happens at run time. The one mapping from a
float Flax kernel to a checkpoint weight is :func:`kernel_to_weight`.

On disk (format version 1) a checkpoint is one safetensors file holding a whole model's state
dict under these keys (a layer at dotted path ``P`` has ``P.weight``, ``P.SCB``, ...; other
tensors, e.g. a LayerNorm's, are stored under their own names, as they are), and a metadata
entry (safetensors' header, strings only):

* ``"format"``: ``"lt8.int8"`` (:data:`FORMAT_NAME`);
* ``"format_version"``: ``"1"`` (:data:`FORMAT_VERSION`); a file of a newer version is refused;
* ``"threshold"`` (optional): JSON, either one number (the outlier threshold of every layer) or
  an object ``{layer_prefix: number}`` (per layer; ``""`` is a default, and a prefix applies to
  the layers under it, see :meth:`CheckpointInfo.threshold_for`);
* any further string entries a caller passes in.

:func:`save_file` writes such a file from torch tensors, jax or numpy arrays; :func:`load_file`
reads it back as numpy arrays with a :class:`CheckpointInfo`. A bitsandbytes 8-bit safetensors
file (same keys, no lt8 metadata) loads too, with ``format_version=None``. This module imports
neither torch nor jax (framework arrays are read through :mod:`lt8.core.arrays`, where each
frontend registers its own): the frontends' ``save_quantized``/``load_quantized`` (torch) and
``save_variables``/``load_variables`` (JAX) sit on top of it.
"""

from __future__ import annotations

import json
import math
import os
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from lt8._native import LAYOUT_CODES
from lt8.core import arrays
from lt8.core.layouts import padded_shape

FORMAT_NAME = "lt8.int8"
FORMAT_VERSION = 1
#: ``"format"`` values other libraries write (torch's ``save_pretrained`` writes "pt"): such a
#: file is read as a foreign checkpoint (``format_version=None``), not refused.
FOREIGN_FORMATS = frozenset({"pt", "torch", "np", "numpy", "tf", "flax", "jax", "mlx"})
#: Metadata entries lt8 writes itself; a caller's ``metadata`` may not set them.
RESERVED_METADATA = ("format", "format_version", "threshold")
#: The dtype names (as :func:`dtype_name` gives them) of the float tensors a checkpoint may hold.
FLOAT_DTYPES = frozenset({"float16", "bfloat16", "float32", "float64"})

#: ``weight_format`` codes by layout name: lt8::Layout's codes (lt8._native.LAYOUT_CODES).
WEIGHT_FORMATS = LAYOUT_CODES
KEY_WEIGHT, KEY_SCB, KEY_BIAS, KEY_FORMAT = "weight", "SCB", "bias", "weight_format"


def format_name(code: int) -> str:
    """The layout name of a ``weight_format`` code."""
    for name, c in WEIGHT_FORMATS.items():
        if c == code:
            return name
    raise ValueError(f"weight_format must be one of {sorted(WEIGHT_FORMATS.values())}, got {code}")


def kernel_to_weight(kernel):
    """A Flax ``Dense`` kernel (in, out) as a torch/bitsandbytes weight (out, in)."""
    return kernel.T


def weight_to_kernel(weight):
    """A torch/bitsandbytes weight (out, in) as a Flax ``Dense`` kernel (in, out)."""
    return weight.T


# --- keys, dtypes, shapes, conversion to numpy (framework-neutral) ---------------------------

#: ``a`` (numpy or jax arrays, torch tensors on any device once ``lt8.torch`` is imported) as a
#: numpy array; bfloat16 as ``ml_dtypes.bfloat16``. See :mod:`lt8.core.arrays`.
to_numpy = arrays.to_numpy


def layer_key(prefix: str, name: str) -> str:
    """The checkpoint key of tensor ``name`` of the layer at ``prefix``: ``prefix.name`` (``name``
    alone for the empty prefix; ``prefix`` may end with a dot). ``layer_key("fc", "")`` is the
    prefix with its dot, as :func:`read_linear` and :func:`write_linear` take it."""
    prefix = prefix.rstrip(".")
    return f"{prefix}.{name}" if prefix else name


def linear_keys(prefix: str = "") -> tuple[str, str, str, str]:
    """The keys ``(weight, SCB, bias, weight_format)`` of the linear layer at ``prefix``."""
    return tuple(layer_key(prefix, k) for k in (KEY_WEIGHT, KEY_SCB, KEY_BIAS, KEY_FORMAT))


def dtype_name(a) -> str:
    """The dtype of ``a`` (a numpy/jax array, a ShapeDtypeStruct, a torch tensor) as numpy names
    it: "int8", "float32", "bfloat16", ... Reads no data. Raises :class:`CheckpointError` for a
    value that is not an array."""
    dt = getattr(a, "dtype", None)
    if dt is None:
        raise CheckpointError(f"expected a tensor, got {type(a).__name__}")
    try:
        return np.dtype(dt).name
    except TypeError:  # another library's dtype object, e.g. torch.float32: its name is last
        return str(dt).rpartition(".")[2]


def shape_of(a) -> tuple[int, ...]:
    """The shape of ``a`` (any array, or a ShapeDtypeStruct) as a tuple of ints."""
    return tuple(int(d) for d in a.shape)


def preview_keys(keys, n: int = 8) -> str:
    """Up to ``n`` of ``keys``, sorted and quoted, for an error message ("..., (k in all)")."""
    keys = sorted(keys)
    more = f", ... ({len(keys)} in all)" if len(keys) > n else ""
    return ", ".join(map(repr, keys[:n])) + more


def read_linear(state_dict, prefix: str = "") -> dict:
    """Reads one linear layer from a torch-style state dict (``nn.Linear`` or ``Linear8bitLt``).

    Values may be torch tensors or numpy/jax arrays. Returns numpy arrays under the checkpoint
    keys: ``weight`` (out, in) float or int8 as stored, ``SCB`` float32 (out,) or None (a float
    checkpoint), ``bias`` or None, and ``weight_format`` as a layout name ("row" unless an old
    bitsandbytes checkpoint stores a tiled weight).
    """
    if prefix + KEY_WEIGHT not in state_dict:
        raise KeyError(f"state dict has no {prefix + KEY_WEIGHT!r} (keys: {sorted(state_dict)})")
    weight = to_numpy(state_dict[prefix + KEY_WEIGHT])
    scb = state_dict.get(prefix + KEY_SCB)
    bias = state_dict.get(prefix + KEY_BIAS)
    fmt = state_dict.get(prefix + KEY_FORMAT)
    fmt_code = WEIGHT_FORMATS["row"] if fmt is None else int(to_numpy(fmt).reshape(()))
    if scb is None:
        if weight.dtype == np.int8:
            raise ValueError(
                f"{prefix + KEY_WEIGHT} is int8 but the state dict has no {prefix + KEY_SCB}"
            )
        if weight.ndim != 2:
            raise ValueError(
                f"{prefix + KEY_WEIGHT} must be 2-D (out, in), got shape {weight.shape}"
            )
    else:
        scb = to_numpy(scb).astype(np.float32)
        if weight.dtype != np.int8:
            raise ValueError(
                f"{prefix + KEY_WEIGHT} must be int8 next to {prefix + KEY_SCB}, got {weight.dtype}"
            )
        if scb.ndim != 1:
            raise ValueError(f"{prefix + KEY_SCB} must be 1-D (out,), got shape {scb.shape}")
    return {
        KEY_WEIGHT: weight,
        KEY_SCB: scb,
        KEY_BIAS: None if bias is None else to_numpy(bias),
        KEY_FORMAT: format_name(fmt_code),
    }


def write_linear(CB, SCB, bias=None, prefix: str = "") -> dict:
    """A quantized linear layer as a state dict of numpy arrays under the checkpoint keys:
    ``weight`` int8 (out, in) row-major, ``SCB`` float32 (out,), ``bias`` when given, and
    ``weight_format`` = 0 (uint8 scalar). Loadable by ``Linear8bitLt.load_state_dict`` after
    ``torch.from_numpy`` of each value."""
    out = {
        prefix + KEY_WEIGHT: np.ascontiguousarray(to_numpy(CB)),
        prefix + KEY_SCB: np.ascontiguousarray(to_numpy(SCB), dtype=np.float32),
    }
    if bias is not None:
        out[prefix + KEY_BIAS] = np.ascontiguousarray(to_numpy(bias))
    out[prefix + KEY_FORMAT] = np.array(WEIGHT_FORMATS["row"], dtype=np.uint8)
    return out


# --- the on-disk format -------------------------------------------------------------------------


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or does not fit: a ``ValueError`` naming the file or key."""


@dataclass(frozen=True)
class CheckpointInfo:
    """What a checkpoint's metadata says.

    Attributes:
        format_version: the lt8 format version, or None for a file without lt8 metadata (a
            bitsandbytes checkpoint: same keys, no threshold).
        thresholds: layer prefix (no trailing dot) -> outlier threshold; ``""`` holds the
            global one. Empty when the file names none.
        metadata: the file's metadata entries as stored (strings).
    """

    format_version: int | None
    thresholds: Mapping[str, float] = field(default_factory=dict)
    metadata: Mapping[str, str] = field(default_factory=dict)

    @property
    def is_lt8(self) -> bool:
        """Whether the file carries lt8's metadata."""
        return self.format_version is not None

    def threshold_for(self, prefix: str) -> float | None:
        """The threshold the file names for the layer at ``prefix`` (``"layers.0"`` or
        ``"layers.0."``): its own entry, else its nearest parent's (``"layers"``), else the
        global one, else None."""
        p = prefix.rstrip(".")
        while True:
            if p in self.thresholds:
                return self.thresholds[p]
            if not p:
                return None
            p = p.rpartition(".")[0]


def _check_threshold_value(name: str, v) -> float:
    bad = CheckpointError(f"threshold {name!r}: expected a number >= 0, got {v!r}")
    if v is None or isinstance(v, (bool, str, bytes)):
        raise bad
    try:
        f = float(v)
    except (TypeError, ValueError):
        raise bad from None
    if not f >= 0.0:
        raise bad
    return f


def _thresholds_to_json(threshold) -> str | None:
    if threshold is None:
        return None
    if isinstance(threshold, Mapping):
        return json.dumps(
            {
                str(k).rstrip("."): _check_threshold_value(str(k), v)
                for k, v in sorted(threshold.items())
            }
        )
    return json.dumps(_check_threshold_value("", threshold))


def _thresholds_from_json(path, text: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: metadata 'threshold' is not JSON ({e}): {text!r}") from None
    try:
        if value is None:
            return {}
        if isinstance(value, dict):
            return {str(k).rstrip("."): _check_threshold_value(k, v) for k, v in value.items()}
        return {"": _check_threshold_value("", value)}
    except CheckpointError as e:
        raise CheckpointError(f"{path}: metadata {e}") from None


def _info_from_metadata(path, metadata: Mapping[str, str] | None, keys) -> CheckpointInfo:
    metadata = dict(metadata or {})
    fmt = metadata.get("format")
    if fmt != FORMAT_NAME:
        if fmt is not None and fmt not in FOREIGN_FORMATS:
            raise CheckpointError(
                f"{path}: not an lt8 checkpoint: its metadata names the format {fmt!r} "
                f"(lt8 writes {FORMAT_NAME!r})"
            )
        if not linear_prefixes(dict.fromkeys(keys)):
            raise CheckpointError(
                f"{path}: not an lt8 or bitsandbytes 8-bit checkpoint: no lt8 metadata "
                f"(format {FORMAT_NAME!r}) and no int8 linear layer (a 'weight' with an 'SCB'); "
                f"keys: {preview_keys(keys)}"
            )
        return CheckpointInfo(None, {}, metadata)  # bitsandbytes: same keys, no lt8 metadata
    text = metadata.get("format_version")
    try:
        version = int(text)
    except (TypeError, ValueError):
        raise CheckpointError(
            f"{path}: lt8 checkpoint without a valid 'format_version' (got {text!r})"
        ) from None
    if version > FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: lt8 checkpoint format version {version} is newer than this lt8 reads "
            f"(up to {FORMAT_VERSION}): upgrade lt8"
        )
    if version < 1:
        raise CheckpointError(f"{path}: invalid lt8 checkpoint format version {version}")
    thresholds = (
        _thresholds_from_json(path, metadata["threshold"]) if "threshold" in metadata else {}
    )
    return CheckpointInfo(version, thresholds, metadata)


def _open(path, read_tensors: bool):
    """(metadata, keys, tensors or None) of a safetensors file; a truncated or corrupt file
    raises :class:`CheckpointError` naming it."""
    from safetensors import SafetensorError, safe_open

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no checkpoint file at {path!r}")
    try:
        with safe_open(path, framework="np") as f:
            metadata = f.metadata()
            keys = list(f.keys())
            tensors = f.get_tensors() if read_tensors else None
    except SafetensorError as e:
        raise CheckpointError(
            f"{path}: not a readable safetensors file (truncated or corrupt?): {e}"
        ) from None
    return metadata, keys, tensors


def read_info(path) -> CheckpointInfo:
    """The :class:`CheckpointInfo` of a checkpoint file, from its header only (cheap)."""
    metadata, keys, _ = _open(path, read_tensors=False)
    return _info_from_metadata(path, metadata, keys)


def load_file(path) -> tuple[dict, CheckpointInfo]:
    """Reads a checkpoint: ``(tensors, info)``, tensors a dict of numpy arrays (bfloat16 as
    ``ml_dtypes.bfloat16``), info a :class:`CheckpointInfo`.

    Raises ``FileNotFoundError`` for a missing file and :class:`CheckpointError` (a
    ``ValueError``) naming the file for a truncated or corrupt one, one whose metadata names
    another format or a newer lt8 format version, or one without lt8 metadata that holds no
    int8 linear layer either (not a bitsandbytes 8-bit checkpoint). Shapes and dtypes are
    checked by the loaders, against the model (see :func:`validate_linear`).
    """
    metadata, keys, tensors = _open(path, read_tensors=True)
    return tensors, _info_from_metadata(path, metadata, keys)


def save_file(
    tensors: Mapping[str, Any],
    path,
    *,
    threshold: float | Mapping[str, float] | None = None,
    metadata: Mapping[str, str] | None = None,
) -> None:
    """Writes ``tensors`` (numpy or jax arrays, torch tensors: see :func:`to_numpy`) as an lt8
    checkpoint: a safetensors file whose metadata names :data:`FORMAT_NAME`,
    :data:`FORMAT_VERSION` and, when given, the outlier ``threshold`` (one number, or a map of
    layer prefix -> number). ``metadata`` adds string entries (not the reserved "format",
    "format_version", "threshold"). The file is written next to ``path`` and renamed into
    place, so an interrupted save never leaves a truncated checkpoint behind.
    """
    from safetensors.numpy import save_file as _save

    meta = {"format": FORMAT_NAME, "format_version": str(FORMAT_VERSION)}
    t = _thresholds_to_json(threshold)
    if t is not None:
        meta["threshold"] = t
    for k, v in (metadata or {}).items():
        if k in RESERVED_METADATA:
            raise ValueError(f"metadata key {k!r} is reserved (lt8 writes it)")
        if not isinstance(k, str) or not isinstance(v, str):
            raise TypeError(f"metadata must map str to str, got {k!r}: {v!r}")
        meta[k] = v
    host = {}
    for k, v in tensors.items():
        if not isinstance(k, str):
            raise TypeError(f"tensor names must be strings, got {k!r}")
        a = np.asarray(to_numpy(v), order="C")  # (np.ascontiguousarray makes a scalar 1-D)
        if a.dtype == object:
            raise TypeError(f"{k}: not a numeric array ({type(v).__name__})")
        host[k] = a
    path = os.fspath(path)
    # A fresh name next to the target (not mkstemp: its 0600 mode would stick to the file).
    head, tail = os.path.split(os.path.abspath(path))
    tmp = os.path.join(head, f".{tail}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")
    try:
        _save(host, tmp, metadata=meta)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def linear_prefixes(tensors: Mapping[str, Any]) -> list:
    """The sorted prefixes (no trailing dot; ``""`` for a lone layer) of the int8 linear
    layers in ``tensors``: those with both ``P.weight`` and ``P.SCB``."""
    out = set()
    for k in tensors:
        if k == KEY_SCB or k.endswith("." + KEY_SCB):
            p = k[: -len(KEY_SCB)].rstrip(".")
            if layer_key(p, KEY_WEIGHT) in tensors:
                out.add(p)
    return sorted(out)


def _dtype_shape(tensors: Mapping[str, Any], key: str) -> tuple[str, tuple[int, ...]]:
    """(dtype name, shape) of ``tensors[key]``; a value that is not an array names the key."""
    a = tensors[key]
    if getattr(a, "dtype", None) is None or getattr(a, "shape", None) is None:
        raise CheckpointError(f"{key}: expected a tensor, got {type(a).__name__}")
    return dtype_name(a), shape_of(a)


def _check_bias(tensors: Mapping[str, Any], key: str, out_features: int | None) -> None:
    if key not in tensors:
        return
    dt, shape = _dtype_shape(tensors, key)
    if (
        dt not in FLOAT_DTYPES
        or len(shape) != 1
        or (out_features is not None and shape != (out_features,))
    ):
        want = f"({out_features},)" if out_features is not None else "(out,)"
        raise CheckpointError(
            f"{key}: expected a float tensor of shape {want}, got {dt} of shape {shape}"
        )


def validate_linear(
    tensors: Mapping[str, Any],
    prefix: str = "",
    out_features: int | None = None,
    in_features: int | None = None,
) -> str:
    """Checks the int8 linear layer at ``prefix`` (``"fc1"`` or ``"fc1."``) of ``tensors``
    (numpy or jax arrays, torch tensors on any device; only the ``weight_format`` scalar is
    read) and returns its ``weight_format``'s layout name ("row" unless an old bitsandbytes
    checkpoint stores a tiled weight).

    Expected: ``weight`` int8 (out, in) (for a tiled format, the padded buffer of that layout),
    ``SCB`` float32 (out,), ``bias`` (optional) float (out,), ``weight_format`` (optional)
    a uint8 scalar among :data:`WEIGHT_FORMATS`' codes; ``out_features``/``in_features``, when
    given, are the target layer's. Raises :class:`CheckpointError` (a ``ValueError``) naming
    the key and what was expected. Both frontends' loaders (``Linear8bitLt.load_state_dict``,
    ``lt8.torch.load_quantized``, ``lt8.jax.load_variables``) check int8 layers with it.
    """
    wk, sk, bk, fk = linear_keys(prefix)
    for k in (wk, sk):
        if k not in tensors:
            raise CheckpointError(
                f"missing key {k!r} (an int8 linear layer needs {wk!r} and {sk!r})"
            )
    fmt = "row"
    if fk in tensors:
        dt, shape = _dtype_shape(tensors, fk)
        if dt != "uint8" or math.prod(shape) != 1:
            raise CheckpointError(f"{fk}: expected a uint8 scalar, got {dt} of shape {shape}")
        code = int(to_numpy(tensors[fk]).reshape(()))
        if code not in WEIGHT_FORMATS.values():
            raise CheckpointError(
                f"{fk}: expected one of {sorted(WEIGHT_FORMATS.values())} "
                f"({', '.join(f'{c}={n}' for n, c in WEIGHT_FORMATS.items())}), got {code}"
            )
        fmt = format_name(code)
    wdt, wshape = _dtype_shape(tensors, wk)
    if wdt != "int8":
        raise CheckpointError(f"{wk}: expected int8 (next to {sk!r}), got {wdt}")
    if len(wshape) != 2:
        raise CheckpointError(f"{wk}: expected a 2-D int8 weight (out, in), got shape {wshape}")
    sdt, sshape = _dtype_shape(tensors, sk)
    if fmt == "row":
        out = wshape[0] if out_features is None else out_features
        expected_w = (out, wshape[1] if in_features is None else in_features)
        if wshape != expected_w:
            raise CheckpointError(f"{wk}: expected shape (out, in) = {expected_w}, got {wshape}")
    else:
        out = sshape[0] if out_features is None and len(sshape) == 1 else out_features
        if out is not None and in_features is not None:
            pr, pc = padded_shape(fmt, out, in_features)
            if math.prod(wshape) != pr * pc:
                raise CheckpointError(
                    f"{wk}: a {fmt} weight of (out, in) = {(out, in_features)} is a padded "
                    f"{(pr, pc)} buffer ({pr * pc} elements), got shape {wshape}"
                )
    if sdt != "float32" or (out is not None and sshape != (out,)) or len(sshape) != 1:
        raise CheckpointError(
            f"{sk}: expected float32 of shape ({out if out is not None else 'out'},), "
            f"got {sdt} of shape {sshape}"
        )
    _check_bias(tensors, bk, sshape[0])
    return fmt


def validate_float_linear(
    tensors: Mapping[str, Any],
    prefix: str = "",
    out_features: int | None = None,
    in_features: int | None = None,
) -> None:
    """Checks a float linear layer at ``prefix`` of ``tensors`` (one without ``SCB``: an
    ``nn.Linear``'s, quantized on the way into an int8 layer): ``weight`` float (out, in),
    ``bias`` (optional) float (out,); ``out_features``/``in_features``, when given, are the
    target layer's. An int8 ``weight`` here lacks its scales. Raises :class:`CheckpointError`
    naming the key, as :func:`validate_linear` does for int8 layers.
    """
    wk, sk, bk, _ = linear_keys(prefix)
    if wk not in tensors:
        raise CheckpointError(f"missing key {wk!r}")
    dt, shape = _dtype_shape(tensors, wk)
    if dt == "int8":
        raise CheckpointError(f"{wk}: an int8 weight needs its scales {sk!r}, which are missing")
    if dt not in FLOAT_DTYPES:
        raise CheckpointError(
            f"{wk}: expected a float weight (or an int8 one with {sk!r}), got {dt}"
        )
    if len(shape) != 2:
        raise CheckpointError(f"{wk}: expected a 2-D weight (out, in), got shape {shape}")
    expected = (
        shape[0] if out_features is None else out_features,
        shape[1] if in_features is None else in_features,
    )
    if shape != expected:
        raise CheckpointError(f"{wk}: expected shape (out, in) = {expected}, got {shape}")
    _check_bias(tensors, bk, shape[0])
