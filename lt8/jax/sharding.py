"""Tensor-parallel LLM.int8() linear layers over a device mesh, with ``shard_map``.

lt8's FFI kernels have no SPMD partitioning rule: inside ``jax.jit`` on sharded arrays XLA
gathers their operands and runs them replicated, which is correct but moves the whole weight.
:func:`shard_linear` instead runs the kernel on each device's shard:

* ``mode="column"`` splits ``CB``/``SCB``/``bias`` over the output features (``CB`` rows). Every
  device sees the whole ``x`` (so the same outlier columns and row scales) and computes its
  slice of the output; no communication. The result is bit-identical to the unsharded op.
* ``mode="row"`` splits ``CB`` over the input features (its columns) and ``x`` over its last
  dimension. Each device runs LLM.int8() on its slice of the features *without* bias, the
  partial products are summed with ``psum`` in float32, and the bias is added once. This changes
  the numerics: outlier columns and the row absmax used to quantize ``x`` are found per shard.
  The result equals ``sum_s linear(x_s, CB_s, SCB)`` (each shard's LLM.int8() product, summed in
  float32) ``+ bias``, cast to x's dtype: up to float32 summation order, which ``psum`` chooses.

Both modes need the sharded dimension to be divisible by the mesh axis size. Other mesh axes
replicate everything.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from lt8.jax import ops

__all__ = ["shard_linear", "weight_specs"]

try:  # jax >= 0.7
    _shard_map = jax.shard_map
    _NO_CHECK = {"check_vma": False}
except AttributeError:  # pragma: no cover - older jax
    from jax.experimental.shard_map import shard_map as _shard_map

    _NO_CHECK = {"check_rep": False}

MODES = ("column", "row")


def weight_specs(mode: str, axis_name: str = "model") -> dict[str, P]:
    """PartitionSpecs of ``CB``, ``SCB`` and ``bias`` for ``mode``: use them to place the int8
    weights on the mesh (``jax.device_put(CB, NamedSharding(mesh, specs["CB"]))``)."""
    if mode == "column":
        return {"CB": P(axis_name, None), "SCB": P(axis_name), "bias": P(axis_name)}
    if mode == "row":
        return {"CB": P(None, axis_name), "SCB": P(), "bias": P()}
    raise ValueError(f"mode must be one of {MODES}, got {mode!r}")


def shard_linear(
    mesh: Mesh,
    x: jax.Array,
    CB: jax.Array,
    SCB: jax.Array,
    bias: jax.Array | None = None,
    threshold: float = 6.0,
    mode: str = "column",
    axis_name: str = "model",
) -> jax.Array:
    """:func:`lt8.jax.ops.linear` split over the mesh axis ``axis_name`` (see the module doc).

    Args:
        mesh: the device mesh; ``axis_name`` must be one of its axes.
        x: (..., K) float activations; CB (N, K) int8; SCB (N,) float32; bias (N,) or None.
        threshold: outlier threshold (static), as in :func:`lt8.jax.ops.linear`.
        mode: "column" (split N; exact) or "row" (split K; per-shard outliers, psum).

    Returns:
        (..., N) in x's dtype; column mode shards it over N, row mode replicates it.
    """
    if axis_name not in mesh.axis_names:
        raise ValueError(f"axis_name {axis_name!r} is not an axis of the mesh {mesh.axis_names}")
    specs = weight_specs(mode, axis_name)
    x, CB, SCB = jnp.asarray(x), jnp.asarray(CB), jnp.asarray(SCB)
    if x.ndim < 1 or CB.ndim != 2:
        raise ValueError(
            f"x must be (..., K) and CB 2-D (N, K), got shapes {x.shape} and {CB.shape}"
        )
    size = mesh.shape[axis_name]
    split_dim, what = (
        (CB.shape[0], "out_features (CB.shape[0])")
        if mode == "column"
        else (CB.shape[1], "in_features (CB.shape[1])")
    )
    if split_dim % size:
        raise ValueError(
            f"{mode}-parallel needs {what} = {split_dim} divisible by the size {size} of mesh axis {axis_name!r}"
        )
    lead = (None,) * (x.ndim - 1)
    bias_args = () if bias is None else (jnp.asarray(bias),)
    bias_specs = () if bias is None else (specs["bias"],)

    if mode == "column":

        def body(xs, cb, scb, *b):
            return ops.linear(xs, cb, scb, b[0] if b else None, threshold)

        x_spec, out_spec = P(*lead, None), P(*lead, axis_name)
    else:

        def body(xs, cb, scb, *b):
            partial = ops.linear(xs, cb, scb, None, threshold).astype(jnp.float32)
            total = jax.lax.psum(partial, axis_name)
            if b:
                total = total + b[0].astype(jnp.float32)
            return total.astype(xs.dtype)

        x_spec, out_spec = P(*lead, axis_name), P(*lead, None)

    fn = _shard_map(
        body,
        mesh=mesh,
        in_specs=(x_spec, specs["CB"], specs["SCB"], *bias_specs),
        out_specs=out_spec,
        **_NO_CHECK,
    )
    return fn(x, CB, SCB, *bias_args)
