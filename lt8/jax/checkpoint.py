"""Flax variables <-> lt8 checkpoints (one safetensors format for torch and JAX).

The file format and its keys are :mod:`lt8.core.checkpoint`'s. A Flax variables tree
(``{"params": ..., "int8": ...}``, as ``model.init`` returns for linen, or an NNX module) maps
to flat checkpoint keys by joining each leaf's path with dots:

* every dict of the "int8" collection holding ``CB`` and ``SCB`` (a :class:`~lt8.jax.Dense8bit`
  or :class:`~lt8.jax.nnx.Linear8bit` in inference mode) at path ``P`` is an int8 linear layer:
  ``P.weight`` = CB int8 (out, in), ``P.SCB`` float32 (out,), ``P.weight_format`` = 0, and
  ``P.bias`` = the "params" leaf ``bias`` at the same path. The int8 weight is already in the
  checkpoint's (out, in) orientation: no transpose;
* a 2-D float ``kernel`` leaf of "params" (``nn.Dense``, or ``Dense8bit`` in training mode:
  (in, out)) at ``P`` is written as ``P.weight`` (out, in), transposed by
  :func:`lt8.core.checkpoint.kernel_to_weight` (and read back by ``weight_to_kernel``): the one
  place where the torch and Flax orientations meet;
* every other "params" leaf ``P.name`` is stored as it is (e.g. a LayerNorm's ``scale`` and
  ``bias``; torch would call the scale ``weight``: rename such leaves yourself if needed).

So a torch model and a Flax model share a checkpoint when their layers have the same dotted
names: torch's ``layers.0`` is a linen submodule named ``"layers.0"`` (Flax accepts dots in
names) or a submodule ``"0"`` of a submodule ``"layers"``, or NNX's ``self.layers =
nnx.List([...])``. Linen collections other than "params" and "int8" are refused (they would be
lost); NNX variables other than ``nnx.Param`` and ``Int8Weight`` (RNG state, batch statistics)
are not saved.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from lt8.core import arrays
from lt8.core import checkpoint as ckpt
from lt8.jax.linen import INT8_COLLECTION

# lt8.core imports no framework: jax's arrays are registered here (numpy reads them itself).
arrays.register_array_library("jax", jax.Array, np.asarray, lambda a, like: jnp.asarray(a))

__all__ = ["load_variables", "save_variables", "tensors_to_variables", "variables_to_tensors"]

PARAMS = "params"
_CB, _SCB = "CB", "SCB"


# --- trees ----------------------------------------------------------------------------------------


def _is_nnx(obj) -> bool:
    nnx = sys.modules.get("flax.nnx")  # not imported: obj cannot be an NNX object
    return nnx is not None and isinstance(obj, (nnx.Module, nnx.State))


def _nnx_split(obj):
    """(graphdef or None, int8 State, params State) of an NNX module or state."""
    from flax import nnx

    from lt8.jax.nnx import Int8Weight

    if isinstance(obj, nnx.Module):
        graphdef, int8, params, _ = nnx.split(obj, Int8Weight, nnx.Param, ...)
        return graphdef, int8, params
    int8, params, _ = nnx.split_state(obj, Int8Weight, nnx.Param, ...)
    return None, int8, params


def _as_linen(variables) -> dict:
    """``{"params": ..., "int8": ...}`` (nested mappings of arrays) from a linen variables tree
    or an NNX module/state."""
    if _is_nnx(variables):
        from flax import nnx

        _, int8, params = _nnx_split(variables)
        return {PARAMS: nnx.to_pure_dict(params), INT8_COLLECTION: nnx.to_pure_dict(int8)}
    if not isinstance(variables, Mapping):
        raise TypeError(
            f"expected a Flax variables tree (a mapping of collections) or an NNX module, "
            f"got {type(variables).__name__}"
        )
    unknown = sorted(str(c) for c in variables if c not in (PARAMS, INT8_COLLECTION))
    if unknown:
        raise ValueError(
            f"lt8 checkpoints hold the {PARAMS!r} and {INT8_COLLECTION!r} collections; "
            f"this tree also has {unknown}: drop them (or save them separately)"
        )
    return {c: variables[c] for c in (PARAMS, INT8_COLLECTION) if c in variables}


def _walk(tree: Mapping, path: tuple = ()):
    """(path, leaf) for every leaf of nested mappings; path components keep their keys."""
    for k, v in tree.items():
        if isinstance(v, Mapping):
            yield from _walk(v, path + (k,))
        else:
            yield path + (k,), v


def _dotted(path) -> str:
    return ".".join(str(k) for k in path)


def _int8_linears(int8: Mapping, path: tuple = ()):
    """{path: node} of every ``{"CB", "SCB"}`` node of the int8 collection."""
    out = {}
    if _CB in int8 or _SCB in int8:
        if set(int8) != {_CB, _SCB}:
            raise ValueError(
                f"{INT8_COLLECTION}/{_dotted(path) or '<root>'}: expected exactly "
                f"{{'CB', 'SCB'}}, got {sorted(map(str, int8))}"
            )
        return {path: int8}
    for k, v in int8.items():
        if not isinstance(v, Mapping):
            raise ValueError(
                f"{INT8_COLLECTION}/{_dotted(path + (k,))}: a leaf outside a CB/SCB pair"
            )
        out.update(_int8_linears(v, path + (k,)))
    return out


# --- variables -> tensors ------------------------------------------------------------------------


def variables_to_tensors(variables) -> dict:
    """A Flax variables tree (linen ``{"params", "int8"}``, or an NNX module) as a flat dict of
    numpy arrays under checkpoint keys (see the module docstring for the mapping)."""
    tree = _as_linen(variables)
    params, int8 = tree.get(PARAMS, {}), tree.get(INT8_COLLECTION, {})
    out: dict = {}

    def put(key, value, where):
        if key in out:
            raise ValueError(f"two leaves map to the checkpoint key {key!r} (the second: {where})")
        out[key] = value

    linears = {_dotted(p): node for p, node in _int8_linears(int8).items()}
    for P, node in linears.items():
        wk, sk, _, fk = ckpt.linear_keys(P)
        put(wk, np.asarray(node[_CB]), f"{INT8_COLLECTION}/{P}/CB")
        put(sk, np.asarray(node[_SCB]), f"{INT8_COLLECTION}/{P}/SCB")
        put(fk, np.array(ckpt.WEIGHT_FORMATS["row"], np.uint8), P)
    for path, leaf in _walk(params):
        P, name = _dotted(path[:-1]), str(path[-1])
        where = f"{PARAMS}/{_dotted(path)}"
        if name == "kernel" and P in linears:
            raise ValueError(
                f"{where}: a float kernel next to an int8 weight ({INT8_COLLECTION}/{P})"
            )
        if name == "kernel" and np.ndim(leaf) == 2:
            put(
                ckpt.layer_key(P, ckpt.KEY_WEIGHT),
                np.asarray(ckpt.kernel_to_weight(np.asarray(leaf))),
                where,
            )
        else:
            put(ckpt.layer_key(P, name), np.asarray(leaf), where)
    for P in linears:
        ckpt.validate_linear(out, P)
    return out


# --- tensors -> variables ------------------------------------------------------------------------


def _insert(tree: dict, path: tuple, value, key: str) -> None:
    node = tree
    for k in path[:-1]:
        node = node.setdefault(k, {})
        if not isinstance(node, dict):
            raise ValueError(f"{key}: its path {_dotted(path)} runs through a leaf")
    if path[-1] in node:
        raise ValueError(f"{key}: {_dotted(path)} is both a leaf and a layer")
    node[path[-1]] = value


def _split_key(key: str) -> tuple:
    return tuple(key.split("."))


def _tensors_to_tree(tensors: Mapping[str, Any]) -> dict:
    """The inverse of :func:`variables_to_tensors` without a template: nesting by dots."""
    params: dict = {}
    int8: dict = {}
    used: set = set()
    for P in ckpt.linear_prefixes(tensors):
        wk, sk, _, fk = ckpt.linear_keys(P)
        fmt = ckpt.validate_linear(tensors, P)
        if fmt != "row":
            raise ValueError(
                f"{fk}: a {fmt} (tiled) weight needs the layer's shape to be restored: pass like="
            )
        path = _split_key(P) if P else ()
        node = {
            _CB: jnp.asarray(ckpt.to_numpy(tensors[wk])),
            _SCB: jnp.asarray(ckpt.to_numpy(tensors[sk])),
        }
        if path:
            _insert(int8, path, node, wk)
        else:
            int8.update(node)
        used.update((wk, sk, fk))
    for key, a in tensors.items():
        if key in used:
            continue
        path = _split_key(key)
        a = ckpt.to_numpy(a)
        if path[-1] == ckpt.KEY_WEIGHT and a.dtype == np.int8:  # no SCB: refused, naming it
            ckpt.validate_float_linear(tensors, _dotted(path[:-1]))
        if path[-1] == ckpt.KEY_WEIGHT and a.ndim == 2 and _is_float(a.dtype.name):
            path, a = path[:-1] + ("kernel",), ckpt.weight_to_kernel(a)
        _insert(params, path, jnp.asarray(a), key)
    tree = {PARAMS: params}
    if int8:
        tree[INT8_COLLECTION] = int8
    return tree


def _is_float(dtype_name: str) -> bool:
    return dtype_name in ckpt.FLOAT_DTYPES


def _fill_like(tensors: Mapping[str, Any], like: dict, strict: bool) -> dict:
    """Values for every leaf of ``like`` (linen-style ``{"params", "int8"}``), checked."""
    from lt8.jax.linen import int8_weights_from_checkpoint
    from lt8.jax.ops import quantize_weight

    errors: list = []
    used: set = set()
    int8_like = like.get(INT8_COLLECTION, {})
    linears = {_dotted(p): (p, node) for p, node in _int8_linears(int8_like).items()}
    int8_vals: dict = {}  # dotted prefix -> {"CB", "SCB"}

    for P, (_, node) in linears.items():
        wk, sk, _, fk = ckpt.linear_keys(P)
        out_f, in_f = (int(d) for d in node[_CB].shape)
        try:
            if sk in tensors:
                ckpt.validate_linear(tensors, P, out_f, in_f)
                entry = ckpt.read_linear(tensors, ckpt.layer_key(P, ""))
                entry[ckpt.KEY_BIAS] = None  # the bias is a "params" leaf, checked there
                CB, SCB, _ = int8_weights_from_checkpoint(entry, in_f)  # a tiled one made row-major
                used.update((wk, sk, fk))
            elif wk in tensors:  # a float weight: quantized on the way in
                ckpt.validate_float_linear(tensors, P, out_f, in_f)
                CB, SCB = quantize_weight(jnp.asarray(ckpt.to_numpy(tensors[wk])))
                used.add(wk)
            else:
                raise ckpt.CheckpointError(f"missing key {wk!r} (and {sk!r})")
        except ckpt.CheckpointError as e:
            errors.append(str(e))
            continue
        int8_vals[P] = {_CB: CB, _SCB: SCB}

    def leaf_value(path, leaf):
        P, name = _dotted(path[:-1]), str(path[-1])
        want_shape, want_dtype = tuple(int(d) for d in leaf.shape), np.dtype(leaf.dtype).name
        transpose = name == "kernel" and P not in linears and len(want_shape) == 2
        key = ckpt.layer_key(P, ckpt.KEY_WEIGHT if transpose else name)
        if key not in tensors:
            errors.append(f"missing key {key!r} (for {PARAMS}/{_dotted(path)})")
            return None
        a = tensors[key]
        got_shape, got_dtype = ckpt.shape_of(a), ckpt.dtype_name(a)
        if transpose:
            got_shape = got_shape[::-1]
        if got_shape != want_shape or got_dtype != want_dtype:
            shape = want_shape[::-1] if transpose else want_shape
            got = got_shape[::-1] if transpose else got_shape
            hint = ""
            if transpose:
                hint = " (a Flax kernel (in, out) is stored as weight (out, in))"
            elif got_shape == want_shape and _is_float(got_dtype) and _is_float(want_dtype):
                hint = f" (give the module param_dtype={got_dtype} to take the file's)"
            errors.append(
                f"{key}: expected {want_dtype} of shape {shape}, got {got_dtype} of shape {got}{hint}"
            )
            return None
        used.add(key)
        a = ckpt.to_numpy(a)
        return jnp.asarray(ckpt.weight_to_kernel(a) if transpose else a)

    def rebuild(node, path, collection):
        out = {}
        for k, v in node.items():
            p = path + (k,)
            if collection == INT8_COLLECTION and _dotted(p) in linears:
                out[k] = int8_vals.get(_dotted(p))
            elif isinstance(v, Mapping):
                out[k] = rebuild(v, p, collection)
            elif collection == INT8_COLLECTION:  # a CB/SCB leaf of the root layer
                out[k] = (int8_vals.get("") or {}).get(k)
            else:
                out[k] = leaf_value(p, v)
        return out

    result = {}
    for c in like:
        if c == INT8_COLLECTION and "" in linears:
            result[c] = int8_vals.get("")
        else:
            result[c] = rebuild(like[c], (), c)
    if strict:
        unexpected = [k for k in tensors if k not in used]
        if unexpected:
            errors.append(
                f"unexpected keys (nothing in the target takes them): {ckpt.preview_keys(unexpected)}"
            )
    if errors:
        raise ckpt.CheckpointError(
            "the checkpoint does not fit the target variables:\n  " + "\n  ".join(errors)
        )
    return result


def tensors_to_variables(tensors: Mapping[str, Any], like=None, *, strict: bool = True) -> dict:
    """The inverse of :func:`variables_to_tensors`: checkpoint tensors (numpy, torch or jax) as
    a linen variables tree ``{"params": ..., "int8": ...}`` of jax arrays.

    Without ``like`` the tree nests by the keys' dots (``layers.0.weight`` becomes
    ``params/layers/0/...``): int8 layers go to "int8" (``CB``/``SCB``, checked with
    :func:`lt8.core.checkpoint.validate_linear`), 2-D float ``weight`` s become ``kernel`` s
    (in, out), everything else keeps its name.

    With ``like`` (the tree of ``model.init(...)``, of ``jax.eval_shape(model.init, ...)``, or an
    NNX module, whose ``nnx.Param`` and ``Int8Weight`` states then make the "params" and "int8"
    pure dicts) the result has exactly ``like``'s structure and every leaf's shape and dtype is
    checked against it; each int8 layer is validated against its ``CB``'s shape (a tiled
    bitsandbytes ``weight_format`` is restored to row-major; a float weight is quantized). Keys
    the target does not take are an error with ``strict``. Every problem is reported in one
    ``ValueError`` (:class:`lt8.core.checkpoint.CheckpointError`) naming the keys.
    """
    if like is None:
        return _tensors_to_tree(tensors)
    result = _fill_like(tensors, _as_linen(like), strict)
    from flax.core.frozen_dict import FrozenDict, freeze

    return freeze(result) if isinstance(like, FrozenDict) else result


# --- files ------------------------------------------------------------------------------------------


def save_variables(
    path: str | os.PathLike,
    variables,
    *,
    threshold: float | Mapping[str, float] | None = None,
    metadata: Mapping[str, str] | None = None,
) -> None:
    """Writes a Flax variables tree (or an NNX module) as an lt8 checkpoint, which
    ``lt8.torch.load_quantized`` and :func:`load_variables` read. ``threshold``: the outlier
    threshold to record, one number or ``{layer_prefix: number}`` (Flax keeps thresholds in the
    modules, not the variables: pass the ones the model uses)."""
    ckpt.save_file(variables_to_tensors(variables), path, threshold=threshold, metadata=metadata)


def load_variables(path: str | os.PathLike, like=None, *, strict: bool = True):
    """Reads an lt8 (or bitsandbytes 8-bit) checkpoint as Flax variables: see
    :func:`tensors_to_variables` for ``like`` and ``strict``. With an NNX module as ``like`` the
    module is updated in place (after every check passed) and returned. The thresholds the file
    was saved with are in ``lt8.core.checkpoint.read_info(path)``.

    A truncated or corrupt file, or one of another format, raises a ``ValueError``.
    """
    tensors, _ = ckpt.load_file(path)
    if like is not None and _is_nnx(like):
        from flax import nnx

        values = _fill_like(tensors, _as_linen(like), strict)
        _, int8, params = _nnx_split(like)
        nnx.replace_by_pure_dict(params, values[PARAMS])
        nnx.replace_by_pure_dict(int8, values[INT8_COLLECTION])
        nnx.update(like, int8, params)
        return like
    return tensors_to_variables(tensors, like, strict=strict)
