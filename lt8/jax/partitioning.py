"""SPMD partitioning rules for lt8's weight-taking FFI ops (``jax.experimental.custom_partitioning``).

Under ``jax.jit`` on sharded arrays XLA knows nothing about an FFI call: without a rule it would
gather every operand, the whole int8 weight included, onto every device. The three ops that take
a weight (the fused ``linear``, the weight-only linear, the input gradient) are wrapped here in
``custom_partitioning`` with a Shardy ``sharding_rule`` (for propagation) and a ``partition``
function that keeps the weight where it is and runs lt8's kernels on each device's shard:

* **column-parallel** (``CB`` rows = output features sharded, ``P('tp', None)``): each device runs
  the fused op on its rows with the whole ``x``; no communication; bit-identical.
* **row-parallel** (``CB`` columns = input features sharded, ``P(None, 'tp')``): ``x`` is split
  the same way. Outlier columns are found per column, so each shard's mask is the global mask
  restricted to its columns. The row absmax over the non-outlier columns is ``pmax``-ed across
  the shards and each shard quantizes its columns with that global scale (the unsharded int8
  values); the int32 partial products are ``psum``-ed (exact) and dequantized once; each shard's
  float outlier terms (``add_outlier_terms``) are ``psum``-ed. Bit-identical at threshold 0; with
  outliers, equal up to the float32 grouping of the outlier terms.
* **batch-sharded x** (data parallel) with ``threshold > 0``: the outlier mask is one per call,
  over every row, so the shards' masks are ``pmax``-ed and each shard quantizes its rows against
  the global mask; ``add_outlier_terms`` adds the terms onto the dequantized product in the fused
  kernel's order: bit-identical.

The weight is never moved (unless a dimension does not split evenly: it is then not split):
``x``, the output or the gradient is resharded instead. Both kinds compose on a 2-D mesh. The
input gradient of a column-parallel weight is a sum over the output features: float32 partials,
``psum``, one rounding; of a row-parallel weight: bit-identical, no collective.

Explicit-sharding mode (``jax.set_mesh`` with ``AxisType.Explicit`` axes) runs the same per-device
functions through ``shard_map``, planned from the operands' types. Concrete single-device arrays
(eager calls) go straight to the kernel. ``shard_map`` bodies (all axes manual) call the kernels
directly: custom_partitioning lowers to its plain function there.

Caveats of ``custom_partitioning`` (docs/multi_gpu.md): the persistent compilation cache does not
reuse multi-device executables across processes, and ``jax.export`` refuses them.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental.custom_partitioning import custom_partitioning
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from lt8.jax import _ffi

__all__ = [
    "int8_linear",
    "int8_weight_linear",
    "int8_linear_grad_input",
    "sharding_of",
    "with_sharding",
]

Axes = tuple[str, ...]


# --- partition specs --------------------------------------------------------------------------


def _dim_axes(spec: P, ndim: int) -> list[Axes]:
    """The mesh axes of each of ``ndim`` dimensions of ``spec`` (a tuple per dimension)."""
    out: list[Axes] = []
    for i in range(ndim):
        e = spec[i] if i < len(spec) else None
        out.append(() if e is None else (e,) if isinstance(e, str) else tuple(e))
    return out


def _entry(axes: Axes):
    return None if not axes else axes[0] if len(axes) == 1 else axes


def _without(axes: Axes, used: set[str]) -> Axes:
    # A dimension's axes are major-to-minor: dropping a middle one would reorder the shards, so
    # keep only the prefix that does not conflict.
    kept = []
    for a in axes:
        if a in used:
            break
        kept.append(a)
    return tuple(kept)


def _size(mesh, axes: Axes) -> int:
    return int(np.prod([mesh.shape[a] for a in axes], dtype=np.int64))


class _Plan:
    """How one call is split, from its operands' shardings: the activation (``act_*``, (..., F)
    with F the contracted dimension) and the weight ``CB`` (``cb_*``), whose dimension
    ``contract_dim`` is contracted with F (1 for ``x @ CB^T``, 0 for ``g @ CB``)."""

    def __init__(
        self, mesh, act_shape, act_sharding, cb_shape, cb_sharding, contract_dim: int
    ) -> None:
        ndim = len(act_shape)
        cb = _dim_axes(cb_sharding.spec, 2)
        self.mesh = mesh
        # The weight decides: its contracted dimension's axes are reduced over (R), its other
        # dimension's axes split the result's features (C). Neither moves. A dimension that does
        # not split evenly is not split (XLA would pad the shards, and padding would enter the
        # row absmax and the sums).
        self.red = self._even(cb[contract_dim], cb_shape[contract_dim])
        self.feat = self._even(cb[1 - contract_dim], cb_shape[1 - contract_dim])
        used = set(self.red) | set(self.feat)
        act = _dim_axes(act_sharding.spec, ndim)
        batch: list[Axes] = []
        for axes, n in zip(act[:-1], act_shape[:-1]):
            kept = self._even(_without(axes, used), n)
            used |= set(kept)
            batch.append(kept)
        self.batch = batch
        # Axes that split the rows of one call (size 1 axes split nothing).
        self.batch_axes = tuple(a for axes in batch for a in axes if mesh.shape[a] > 1)
        self.red_split = _size(mesh, self.red) > 1

    def _even(self, axes: Axes, n: int) -> Axes:
        return axes if n % _size(self.mesh, axes) == 0 else ()

    def spec(self, last: Axes) -> P:
        return P(*(_entry(a) for a in self.batch), _entry(last))

    def named(self, spec: P) -> NamedSharding:
        return NamedSharding(self.mesh, spec)


def _single_device(*args) -> bool:
    """True for concrete (eager) arrays on one device: nothing to partition, and calling the
    kernel directly spares custom_partitioning's per-call tracing."""
    for a in args:
        if isinstance(a, jax.core.Tracer):
            return False
        sharding = getattr(a, "sharding", None)
        if sharding is not None and len(sharding.device_set) > 1:
            return False
    return True


def _explicit_plan(act: jax.Array, cb: jax.Array, contract_dim: int) -> _Plan | None:
    """The plan of a call in explicit-sharding mode (``jax.set_mesh`` with ``AxisType.Explicit``
    axes), read from the operands' types; None otherwise."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or not mesh.explicit_axes:
        return None
    act_sharding, cb_sharding = jax.typeof(act).sharding, jax.typeof(cb).sharding
    return _Plan(mesh, act.shape, act_sharding, cb.shape, cb_sharding, contract_dim)


def _run_explicit(plan: _Plan, shard_fn: Callable, arg_specs: Sequence[P], out_spec: P, *args):
    """Explicit mode: types carry shardings and ``shard_map`` runs ``shard_fn`` per device (the
    partitioner's ``custom_partitioning`` callback is not reliable there: a jit whose arguments
    carry no mesh hands it no mesh)."""
    args = [jax.sharding.reshard(a, s) for a, s in zip(args, arg_specs)]
    fn = jax.shard_map(
        shard_fn,
        mesh=plan.mesh,
        in_specs=tuple(arg_specs),
        out_specs=out_spec,
        axis_names=set(plan.mesh.explicit_axes),
        check_vma=False,
    )
    return fn(*args)


@jax.tree_util.register_static
class ShardingOf:
    """An operand's explicit-mode sharding, kept through a ``custom_vjp`` as a residual with no
    array in it (a static pytree): a cotangent must have its primal's type, sharding included,
    and the input gradient's natural sharding follows the weight, not ``x``."""

    def __init__(self, sharding) -> None:
        self.sharding = sharding

    def __hash__(self) -> int:
        return hash(self.sharding)

    def __eq__(self, other) -> bool:
        return isinstance(other, ShardingOf) and other.sharding == self.sharding


def sharding_of(x: jax.Array) -> ShardingOf:
    """``x``'s sharding in explicit-sharding mode (None in every other mode)."""
    mesh = jax.sharding.get_abstract_mesh()
    explicit = not mesh.empty and mesh.explicit_axes
    return ShardingOf(jax.typeof(x).sharding if explicit else None)


def with_sharding(a: jax.Array, sharding: ShardingOf) -> jax.Array:
    """``a`` resharded to ``sharding`` (from :func:`sharding_of`) where that is needed."""
    if sharding.sharding is None or jax.typeof(a).sharding == sharding.sharding:
        return a
    return jax.sharding.reshard(a, sharding.sharding.spec)


# --- the forward ops --------------------------------------------------------------------------


def _nan_as_inf(row_scale: jax.Array) -> jax.Array:
    # A NaN row scale must win the cross-shard MAX (XLA's max may drop NaN in a reduction); inf
    # makes the row all-NaN exactly as NaN does (the row quantizes to zeros, 0 * inf = NaN).
    return jnp.where(jnp.isnan(row_scale), jnp.inf, row_scale)


def _linear_shard(
    x, cb, scb, bias, *, threshold: float, batch_axes: Axes, red_axes: Axes, red_split: bool
):
    """One device's part of the fused linear op (see the module doc)."""
    global_mask = threshold > 0.0 and bool(batch_axes)
    if not red_split and not global_mask:
        return _ffi.int8_linear(x, cb, scb, bias, threshold)
    # Outlier columns and each row's absmax over the others, as the fused kernel finds them.
    q, row_scale, mask = _ffi.quantize_rows(x, threshold)
    if global_mask:
        # The mask is one per call, over every row: combine the shards' masks, then quantize
        # this shard's rows against it (zeroed outlier columns add nothing to the absmax).
        mask = jax.lax.pmax(mask.astype(jnp.int32), batch_axes).astype(jnp.uint8)
        q, row_scale, _ = _ffi.quantize_rows(jnp.where(mask != 0, jnp.zeros_like(x), x), 0.0)
    if red_split:
        # Each row's absmax across the shards of its columns. Quantizing with that scale is
        # quantizing the row with one more column holding it: the row's absmax is then the
        # global one (it is |an element of x|, exact in x's dtype), so q is the unsharded q.
        row_scale = jax.lax.pmax(_nan_as_inf(row_scale), red_axes)
        xr = x if threshold == 0.0 else jnp.where(mask != 0, jnp.zeros_like(x), x)
        xr = jnp.concatenate([xr, row_scale.astype(x.dtype)[..., None]], axis=-1)
        q = _ffi.quantize_rows(xr, 0.0)[0][..., :-1]
    acc = _ffi.int8_gemm(q, cb)
    if red_split:
        acc = jax.lax.psum(acc, red_axes)  # int32: exact
    if threshold == 0.0:
        return _ffi.dequant_epilogue(acc, row_scale, scb, bias, x.dtype)
    v = _ffi.dequant_epilogue(acc, row_scale, scb, None, jnp.float32)
    if red_split:  # each shard's outlier terms, summed across shards: float32 rounding
        terms = _ffi.add_outlier_terms(x, mask, cb, scb, jnp.zeros_like(v))
        v = v + jax.lax.psum(terms, red_axes)
    else:  # the kernel's own order: dequantized product, then each outlier term in ascending k
        v = _ffi.add_outlier_terms(x, mask, cb, scb, v)
    if bias is not None:
        v = v + bias.astype(jnp.float32)
    return v.astype(x.dtype)


def _weight_linear_shard(x, cb, scb, bias, *, red_axes: Axes, red_split: bool):
    if not red_split:
        return _ffi.int8_weight_linear(x, cb, scb, bias)
    partial = _ffi.int8_weight_linear(x.astype(jnp.float32), cb, scb, None)
    v = jax.lax.psum(partial, red_axes)
    if bias is not None:
        v = v + bias.astype(jnp.float32)
    return v.astype(x.dtype)


def _forward_split(plan: _Plan, shard_fn: Callable, with_bias: bool, static: dict):
    """(per-device function, operand specs, result spec) of a forward op (x @ CB^T)."""
    feat = P(_entry(plan.feat))
    specs = [plan.spec(plan.red), P(_entry(plan.feat), _entry(plan.red)), feat]
    specs += [feat] if with_bias else []
    kw = dict(static, red_axes=plan.red, red_split=plan.red_split)
    if "threshold" in static:
        kw["batch_axes"] = plan.batch_axes

    def per_device(x, cb, scb, *b):
        return shard_fn(x, cb, scb, b[0] if b else None, **kw)

    return per_device, specs, plan.spec(plan.feat)


def _forward_op(raw: Callable, shard_fn: Callable, with_bias: bool, static: dict):
    def partition(mesh, arg_shapes, result_shape):
        del result_shape
        x, cb = arg_shapes[0], arg_shapes[1]
        plan = _Plan(mesh, x.shape, x.sharding, cb.shape, cb.sharding, 1)
        per_device, specs, out_spec = _forward_split(plan, shard_fn, with_bias, static)
        return mesh, per_device, plan.named(out_spec), tuple(plan.named(s) for s in specs)

    op = custom_partitioning(raw)
    # "..." are x's rows, k the contracted input features, n the output features.
    op.def_partition(
        partition=partition,
        sharding_rule="... k, n k, n" + (", n" if with_bias else "") + " -> ... n",
        reduction_factors=("k",),
    )

    def call(x, cb, scb, *b):
        if _single_device(x, cb, scb, *b):
            return raw(x, cb, scb, *b)
        plan = _explicit_plan(x, cb, 1)
        if plan is None:
            return op(x, cb, scb, *b)
        per_device, specs, out_spec = _forward_split(plan, shard_fn, with_bias, static)
        return _run_explicit(plan, per_device, specs, out_spec, x, cb, scb, *b)

    return call


@functools.cache
def _linear_op(threshold: float, with_bias: bool):
    def raw(x, cb, scb, *b):
        return _ffi.int8_linear(x, cb, scb, b[0] if b else None, threshold)

    return _forward_op(raw, _linear_shard, with_bias, {"threshold": threshold})


@functools.cache
def _weight_linear_op(with_bias: bool):
    def raw(x, cb, scb, *b):
        return _ffi.int8_weight_linear(x, cb, scb, b[0] if b else None)

    return _forward_op(raw, _weight_linear_shard, with_bias, {})


def int8_linear(x, cb, scb, bias, threshold: float):
    """``_ffi.int8_linear`` with an SPMD partitioning rule (same signature and result)."""
    op = _linear_op(float(threshold), bias is not None)
    return op(x, cb, scb) if bias is None else op(x, cb, scb, bias)


def int8_weight_linear(x, cb, scb, bias):
    """``_ffi.int8_weight_linear`` with an SPMD partitioning rule."""
    op = _weight_linear_op(bias is not None)
    return op(x, cb, scb) if bias is None else op(x, cb, scb, bias)


# --- the input gradient -------------------------------------------------------------------------


def _grad_input_shard(g, cb, scb, *, red_axes: Axes, red_split: bool):
    if not red_split:
        return _ffi.int8_linear_grad_input(g, cb, scb)
    # A sum over the output features, split across devices: float32 partials, one rounding.
    partial = _ffi.int8_linear_grad_input(g.astype(jnp.float32), cb, scb)
    return jax.lax.psum(partial, red_axes).astype(g.dtype)


def _grad_input_split(plan: _Plan):
    """(per-device function, operand specs, result spec) of g @ CB."""
    specs = [plan.spec(plan.red), P(_entry(plan.red), _entry(plan.feat)), P(_entry(plan.red))]

    def per_device(g, cb, scb):
        return _grad_input_shard(g, cb, scb, red_axes=plan.red, red_split=plan.red_split)

    return per_device, specs, plan.spec(plan.feat)


def _grad_input_partition(mesh, arg_shapes, result_shape):
    del result_shape
    g, cb = arg_shapes[0], arg_shapes[1]
    plan = _Plan(mesh, g.shape, g.sharding, cb.shape, cb.sharding, 0)
    per_device, specs, out_spec = _grad_input_split(plan)
    return mesh, per_device, plan.named(out_spec), tuple(plan.named(s) for s in specs)


@functools.cache
def _grad_input_op():
    op = custom_partitioning(_ffi.int8_linear_grad_input)
    # "..." are the rows, n the contracted output features, k the input features.
    op.def_partition(
        partition=_grad_input_partition,
        sharding_rule="... n, n k, n -> ... k",
        reduction_factors=("n",),
    )
    return op


def int8_linear_grad_input(g, cb, scb):
    """``_ffi.int8_linear_grad_input`` with an SPMD partitioning rule."""
    if _single_device(g, cb, scb):
        return _ffi.int8_linear_grad_input(g, cb, scb)
    plan = _explicit_plan(g, cb, 0)
    if plan is None:
        return _grad_input_op()(g, cb, scb)
    per_device, specs, out_spec = _grad_input_split(plan)
    return _run_explicit(plan, per_device, specs, out_spec, g, cb, scb)
