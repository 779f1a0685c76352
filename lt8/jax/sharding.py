"""Tensor-parallel LLM.int8() linear layers over a device mesh: a shortcut onto XLA's partitioner.

lt8's weight-taking ops carry SPMD partitioning rules (:mod:`lt8.jax.partitioning`): under
``jax.jit``, a weight placed with a ``NamedSharding`` stays where it is and each device runs the
kernels on its shard. :func:`shard_linear` only places (constrains) the weight for one of the two
Megatron styles and calls :func:`lt8.jax.ops.linear`:

* ``mode="column"`` splits ``CB``/``SCB``/``bias`` over the output features (``CB`` rows). Every
  device sees the whole ``x`` and computes its slice of the output; no communication;
  bit-identical to the unsharded op.
* ``mode="row"`` splits ``CB`` over the input features (its columns); ``x`` is split the same
  way. The row absmax is ``pmax``-ed across the devices, so each slice of ``x`` quantizes to the
  unsharded int8 values, and the int32 partial products are summed exactly: bit-identical at
  threshold 0; with outliers the float outlier terms are summed across devices, so results equal
  the unsharded op up to float32 rounding of those terms.

Both modes need the split dimension to be divisible by the mesh axis size. Other mesh axes
replicate the weight; ``x`` keeps whatever sharding it has (e.g. over a data axis).
"""

from __future__ import annotations

import jax
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from lt8.jax import ops

__all__ = ["shard_linear", "weight_specs"]

MODES = ("column", "row")


def weight_specs(mode: str, axis_name: str = "model") -> dict[str, P]:
    """PartitionSpecs of ``CB``, ``SCB`` and ``bias`` for ``mode``: use them to place the int8
    weights on the mesh (``jax.device_put(CB, NamedSharding(mesh, specs["CB"]))``)."""
    if mode == "column":
        return {"CB": P(axis_name, None), "SCB": P(axis_name), "bias": P(axis_name)}
    if mode == "row":
        return {"CB": P(None, axis_name), "SCB": P(), "bias": P()}
    raise ValueError(f"mode must be one of {MODES}, got {mode!r}")


def place(a: jax.Array, mesh: Mesh, spec: P) -> jax.Array:
    """``a`` constrained to ``NamedSharding(mesh, spec)``: a reshard for explicit mesh axes, a
    sharding constraint otherwise (inside ``jax.jit``: a hint for XLA's partitioner)."""
    sharding = NamedSharding(mesh, spec)
    explicit = (
        any(t == AxisType.Explicit for t in getattr(mesh, "axis_types", ()))
        and not jax.sharding.get_abstract_mesh().empty
    )
    if explicit:
        return jax.sharding.reshard(a, sharding)
    return jax.lax.with_sharding_constraint(a, sharding)


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
    """:func:`lt8.jax.ops.linear` with its weight split over the mesh axis ``axis_name``.

    Args:
        mesh: the device mesh; ``axis_name`` must be one of its axes.
        x: (..., K) float activations; CB (N, K) int8; SCB (N,) float32; bias (N,) or None.
        threshold: outlier threshold (static), as in :func:`lt8.jax.ops.linear`.
        mode: "column" (split N) or "row" (split K); see the module doc.

    Returns:
        (..., N) in x's dtype; column mode shards it over N, row mode replicates it over
        ``axis_name``. Equal to ``ops.linear(x, CB, SCB, bias, threshold)`` (bit for bit except
        row mode with outliers: float32 rounding of the outlier terms).
    """
    if axis_name not in mesh.axis_names:
        raise ValueError(f"axis_name {axis_name!r} is not an axis of the mesh {mesh.axis_names}")
    specs = weight_specs(mode, axis_name)
    x, CB, SCB = ops._array(x, "x"), ops._array(CB, "CB"), ops._array(SCB, "SCB")
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
    CB, SCB = place(CB, mesh, specs["CB"]), place(SCB, mesh, specs["SCB"])
    if bias is not None:
        bias = place(ops._array(bias, "bias"), mesh, specs["bias"])
    return ops.linear(x, CB, SCB, bias, threshold)
