"""LLM.int8() on sharded arrays under ``jax.jit``: XLA's partitioner with lt8's rules, 8 host devices.

The worker tests run in a subprocess with 8 forced host devices (``mesh_worker``). Every check
compares the sharded computation with the unsharded op on the same inputs and reads the compiled
HLO: the int8 weight is never all-gathered.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P
from jax_helpers import activations, f64, int8_weight, rel_eps
from mesh_worker import (
    collectives,
    compiled_hlo,
    host_devices,
    run_workers,
    s8_all_gathers,
    worker,
)
from reference import grad_input_ref, linear_ref

from lt8.jax import Dense8bit, _ffi, ops, shard_linear
from lt8.jax.sharding import weight_specs

THRESHOLD = 6.0
DTYPES = {"f32": jnp.float32, "f16": jnp.float16, "bf16": jnp.bfloat16}
# Weight placements: (CB, SCB/bias) specs of each Megatron style over the "model" axis.
STYLES = {
    "column": (P("model", None), P("model")),
    "row": (P(None, "model"), P()),
}


def test_sharding_on_8_host_devices():
    run_workers(__file__)


# --- helpers ------------------------------------------------------------------------------------


@pytest.fixture
def mesh():
    return Mesh(host_devices().reshape(2, 4), ("data", "model"))


def put(mesh, a, spec):
    return jax.device_put(a, NamedSharding(mesh, spec))


def layer(rng, K=64, N=32, dtype=jnp.float32):
    _, CB, SCB = int8_weight(rng, N, K)
    bias = jnp.asarray(rng.standard_normal(N), dtype)
    return CB, SCB, bias


def placed(mesh, style, CB, SCB, bias):
    cb_spec, vec_spec = STYLES[style]
    return put(mesh, CB, cb_spec), put(mesh, SCB, vec_spec), put(mesh, bias, vec_spec)


def linear_fn(threshold):
    return lambda x, c, s, b: ops.linear(x, c, s, b, threshold)


def assert_no_weight_gather(fn, *args):
    hlo = compiled_hlo(fn, *args)
    assert s8_all_gathers(hlo) == [], s8_all_gathers(hlo)
    return hlo


def assert_close_f32(out, ref, what=""):
    """Equal up to float32 rounding of a sum regrouped across devices (then x's dtype)."""
    out, ref = f64(out), f64(ref)
    tol = (8 * rel_eps(jnp.float32) + 1e-7) * np.abs(ref).max()
    np.testing.assert_allclose(out, ref, rtol=0, atol=tol, err_msg=what)


def outlier_budget(x, out_dtype):
    """Where only the grouping of the float outlier terms differs, results may differ by a few
    float32 ulps of the largest partial sum, then one rounding to x's dtype."""
    return lambda ref: (16 * 2.0**-24 + rel_eps(out_dtype)) * np.abs(f64(ref)).max()


# --- the detector itself ------------------------------------------------------------------------


@worker
def test_worker_raw_ffi_call_gathers_the_weight(mesh, rng):
    """Without lt8's partitioning rule XLA gathers the int8 weight: the HLO check can fail."""
    x = activations(rng, (8, 64), THRESHOLD)
    CB, SCB, bias = layer(rng)
    args = (x, *placed(mesh, "column", CB, SCB, bias))
    hlo = compiled_hlo(lambda x, c, s, b: _ffi.int8_linear(x, c, s, b, THRESHOLD), *args)
    assert s8_all_gathers(hlo)


# --- forward: column, row, data parallel --------------------------------------------------------


@worker
@pytest.mark.parametrize("threshold", [0.0, THRESHOLD], ids=["t0", "t6"])
@pytest.mark.parametrize("dtype", ["f32", "f16", "bf16"])
def test_worker_column_parallel_is_bit_identical(mesh, rng, dtype, threshold):
    dt = DTYPES[dtype]
    x = activations(rng, (4, 3, 64), threshold, n_outlier_cols=4, dtype=dt)
    CB, SCB, bias = layer(rng, dtype=dt)
    args = (x, *placed(mesh, "column", CB, SCB, bias))
    fn = linear_fn(threshold)
    out = jax.jit(fn)(*args)
    np.testing.assert_array_equal(np.asarray(out), np.asarray(fn(x, CB, SCB, bias)))
    assert out.sharding.spec == P(None, None, "model")
    hlo = assert_no_weight_gather(fn, *args)
    assert collectives(hlo) == set()  # each device used its own weight rows and the whole x


@worker
@pytest.mark.parametrize("dtype", ["f32", "f16", "bf16"])
def test_worker_row_parallel_threshold_0_is_bit_identical(mesh, rng, dtype):
    dt = DTYPES[dtype]
    x = activations(rng, (4, 3, 64), 0.0, dtype=dt)
    CB, SCB, bias = layer(rng, dtype=dt)
    args = (x, *placed(mesh, "row", CB, SCB, bias))
    fn = linear_fn(0.0)
    out = jax.jit(fn)(*args)
    np.testing.assert_array_equal(np.asarray(out), np.asarray(fn(x, CB, SCB, bias)))
    hlo = assert_no_weight_gather(fn, *args)
    # The int32 products are summed (exact), not float partials.
    assert "all-reduce" in collectives(hlo)
    assert any(" s32[" in line and "all-reduce" in line for line in hlo.splitlines())


@worker
@pytest.mark.parametrize("dtype", ["f32", "f16", "bf16"])
def test_worker_row_parallel_with_outliers(mesh, rng, dtype):
    """The int8 part is the unsharded one (global row scale, exact int32 sum); only the float
    outlier terms are summed in another grouping."""
    dt = DTYPES[dtype]
    x = activations(rng, (4, 3, 64), THRESHOLD, n_outlier_cols=6, dtype=dt)
    CB, SCB, bias = layer(rng, dtype=dt)
    args = (x, *placed(mesh, "row", CB, SCB, bias))
    fn = linear_fn(THRESHOLD)
    out = jax.jit(fn)(*args)
    assert_no_weight_gather(fn, *args)
    ref = fn(x, CB, SCB, bias)
    tol = outlier_budget(x, dt)(ref)
    np.testing.assert_allclose(f64(out), f64(ref), rtol=0, atol=tol)
    # ... and the LLM.int8() math in float64 (not the per-shard variant, whose row scales differ).
    ref64 = linear_ref(f64(x), CB, SCB, f64(bias), THRESHOLD)
    np.testing.assert_allclose(f64(out), ref64, rtol=0, atol=2e-2 * np.abs(ref64).max())
    if dtype == "f32":  # the per-shard variant differs by more than the rounding budget
        shards = [slice(i * 16, (i + 1) * 16) for i in range(4)]
        per_shard = sum(linear_ref(f64(x)[..., s], CB[:, s], SCB, None, THRESHOLD) for s in shards)
        assert np.abs(per_shard + f64(bias) - f64(ref)).max() > tol


@worker
@pytest.mark.parametrize("style", ["column", "row", "replicated"])
@pytest.mark.parametrize("dtype", ["f32", "f16", "bf16"])
def test_worker_data_parallel_x_keeps_one_outlier_mask(mesh, rng, style, dtype):
    """x split over "data": the outlier mask stays one per call (all rows), as unsharded. Only
    one of the two data shards holds the planted outliers: per-shard masks would differ."""
    dt = DTYPES[dtype]
    x = np.array(activations(rng, (8, 64), 0.0))
    x = np.clip(x, -5, 5)
    x[rng.integers(0, 4), rng.choice(64, 3, replace=False)] = [7.0, -9.0, 6.0]  # first shard only
    x = jnp.asarray(x, dt)
    CB, SCB, bias = layer(rng, dtype=dt)
    if style == "replicated":
        weights = (CB, SCB, bias)
    else:
        weights = placed(mesh, style, CB, SCB, bias)
    args = (put(mesh, x, P("data")), *weights)
    fn = linear_fn(THRESHOLD)
    out = jax.jit(fn)(*args)
    ref = fn(x, CB, SCB, bias)
    assert_no_weight_gather(fn, *args)
    assert out.sharding.spec[0] == "data"  # rows stay split
    if style == "row":
        np.testing.assert_allclose(f64(out), f64(ref), rtol=0, atol=outlier_budget(x, dt)(ref))
    else:
        np.testing.assert_array_equal(np.asarray(out), np.asarray(ref))


@worker
def test_worker_non_finite_rows_stay_their_rows(mesh, rng):
    """NaN or inf in one shard's columns reaches exactly that row on every shard, as unsharded
    (the row scale is MAX-reduced with NaN taken as inf; at threshold 6 inf is an outlier)."""
    x = np.array(activations(rng, (6, 64), 0.0))
    x[1, 3] = np.nan
    x[4, 50] = np.inf
    x = jnp.asarray(x)
    CB, SCB, bias = layer(rng)
    for threshold in (0.0, THRESHOLD):
        fn = linear_fn(threshold)
        out = np.asarray(jax.jit(fn)(x, *placed(mesh, "row", CB, SCB, bias)))
        ref = np.asarray(fn(x, CB, SCB, bias))
        np.testing.assert_array_equal(np.isnan(out), np.isnan(ref))
        np.testing.assert_array_equal(np.isinf(out), np.isinf(ref))
        assert np.isfinite(np.delete(out, [1, 4], 0)).all()
        if threshold == 0.0:  # no outlier column: the rows' scales are non-finite, rows all NaN
            assert np.isnan(out[[1, 4]]).all()


@worker
def test_worker_weight_only_linear(mesh, rng):
    x = activations(rng, (8, 64), 0.0, dtype=jnp.bfloat16)
    CB, SCB, bias = layer(rng, dtype=jnp.bfloat16)
    fn = lambda x, c, s, b: ops.weight_linear(x, c, s, b)  # noqa: E731
    ref = fn(x, CB, SCB, bias)
    for style in STYLES:
        args = (x, *placed(mesh, style, CB, SCB, bias))
        out = jax.jit(fn)(*args)
        assert_no_weight_gather(fn, *args)
        if style == "column":
            np.testing.assert_array_equal(np.asarray(out), np.asarray(ref))
        else:  # float32 partial sums over the input features, summed across devices
            tol = (8 * 2.0**-24 + rel_eps(jnp.bfloat16)) * np.abs(f64(ref)).max()
            np.testing.assert_allclose(f64(out), f64(ref), rtol=0, atol=tol)


# --- gradients, Megatron MLP, vmap --------------------------------------------------------------


@worker
@pytest.mark.parametrize("style", ["column", "row"])
def test_worker_input_gradient(mesh, rng, style):
    x = activations(rng, (8, 64), THRESHOLD, dtype=jnp.float32)
    CB, SCB, bias = layer(rng)
    g = jnp.asarray(rng.standard_normal((8, 32)), jnp.float32)
    fn = lambda x, c, s, b: jax.vjp(lambda x, b: ops.linear(x, c, s, b), x, b)[1](g)  # noqa: E731
    args = (x, *placed(mesh, style, CB, SCB, bias))
    gx, gb = jax.jit(fn)(*args)
    gx_ref, gb_ref = fn(x, CB, SCB, bias)
    assert_no_weight_gather(fn, *args)
    assert_close_f32(gb, gb_ref)  # XLA's own sum over the rows
    if style == "row":  # each input feature's sum is on one device: the unsharded bits
        np.testing.assert_array_equal(np.asarray(gx), np.asarray(gx_ref))
    else:  # a sum over the output features split across devices: float32 partials
        assert_close_f32(gx, gx_ref)
    np.testing.assert_allclose(
        f64(gx),
        grad_input_ref(np.asarray(g), CB, SCB),
        rtol=1e-5,
        atol=1e-5 * np.abs(f64(gx_ref)).max(),
    )


def mlp(threshold, x, c1, s1, b1, c2, s2, b2):
    """Megatron's MLP: column-parallel up projection, activation, row-parallel down projection."""
    h = jax.nn.relu(ops.linear(x, c1, s1, b1, threshold))  # exact, unlike gelu's XLA expansion
    return ops.linear(h, c2, s2, b2, threshold)


def mlp_weights(rng, mesh, D=64, F=128):
    up, down = layer(rng, K=D, N=F), layer(rng, K=F, N=D)
    sharded = (*placed(mesh, "column", *up), *placed(mesh, "row", *down))
    return (*up, *down), sharded


@worker
@pytest.mark.parametrize("threshold", [0.0, THRESHOLD], ids=["t0", "t6"])
def test_worker_megatron_mlp_and_its_gradient(mesh, rng, threshold):
    x = activations(rng, (2, 4, 64), threshold, n_outlier_cols=3)
    weights, sharded = mlp_weights(rng, mesh)
    x_dp = put(mesh, x, P("data"))
    fwd = functools.partial(mlp, threshold)
    out = jax.jit(fwd)(x_dp, *sharded)
    ref = fwd(x, *weights)
    hlo = assert_no_weight_gather(fwd, x_dp, *sharded)
    assert "all-reduce" in collectives(hlo)
    if threshold == 0.0:
        np.testing.assert_array_equal(np.asarray(out), np.asarray(ref))
    else:  # the down projection's input has outliers (relu of large values): float rounding
        assert_close_f32(out, ref)

    def loss(x, b1, b2, c1, s1, c2, s2):
        return jnp.sum(fwd(x, c1, s1, b1, c2, s2, b2) ** 2)

    grad = jax.grad(loss, argnums=(0, 1, 2))
    c1, s1, b1, c2, s2, b2 = sharded
    g = jax.jit(grad)(x_dp, b1, b2, c1, s1, c2, s2)
    w = weights
    g_ref = grad(x, w[2], w[5], w[0], w[1], w[3], w[4])
    assert_no_weight_gather(grad, x_dp, b1, b2, c1, s1, c2, s2)
    for a, b in zip(g, g_ref):
        assert_close_f32(a, b)
    # Rematerialized (jax.checkpoint): the same partitioned ops run again in the backward.
    remat = jax.grad(jax.checkpoint(loss), argnums=(0, 1, 2))
    g_remat = jax.jit(remat)(x_dp, b1, b2, c1, s1, c2, s2)
    assert_no_weight_gather(remat, x_dp, b1, b2, c1, s1, c2, s2)
    for a, b in zip(g_remat, g_ref):
        assert_close_f32(a, b)


@worker
def test_worker_vmap_of_the_sharded_mlp(mesh, rng):
    xs = jnp.stack([activations(rng, (4, 64), THRESHOLD) for _ in range(3)])
    weights, sharded = mlp_weights(rng, mesh)
    fwd = jax.vmap(functools.partial(mlp, THRESHOLD), in_axes=(0,) + (None,) * 6)
    out = jax.jit(fwd)(xs, *sharded)
    assert_no_weight_gather(fwd, xs, *sharded)
    assert_close_f32(out, fwd(xs, *weights))
    # vmap semantics: each element has its own outlier mask, as three separate calls.
    one = jax.jit(functools.partial(mlp, THRESHOLD))
    for i in range(3):
        assert_close_f32(out[i], one(xs[i], *sharded))


# --- explicit sharding mode ---------------------------------------------------------------------


@worker
@pytest.mark.parametrize("style", ["column", "row"])
def test_worker_explicit_sharding_mode(rng, style):
    mesh = jax.make_mesh(
        (2, 4), ("data", "model"), axis_types=(AxisType.Explicit,) * 2, devices=list(host_devices())
    )
    x = activations(rng, (8, 64), 0.0)
    CB, SCB, bias = layer(rng)
    fn = linear_fn(0.0)
    ref = fn(x, CB, SCB, bias)
    cb_spec, vec_spec = STYLES[style]
    with jax.set_mesh(mesh):
        args = (
            jax.device_put(x, P("data")),
            jax.device_put(CB, cb_spec),
            jax.device_put(SCB, vec_spec),
            jax.device_put(bias, vec_spec),
        )
        out = jax.jit(fn)(*args)
        expected = P("data", "model") if style == "column" else P("data", None)
        assert jax.typeof(out).sharding.spec == expected
        hlo = assert_no_weight_gather(fn, *args)
        if style == "column":
            assert collectives(hlo) == set()
        g = jax.jit(jax.grad(lambda x, *w: jnp.sum(fn(x, *w) ** 2)))(*args)
        # shard_linear with a replicated x (its old shard_map row mode refused it)
        y = jax.jit(lambda x: shard_linear(mesh, x, CB, SCB, bias, 0.0, mode=style))(x)
    np.testing.assert_array_equal(np.asarray(out), np.asarray(ref))
    np.testing.assert_array_equal(np.asarray(y), np.asarray(ref))
    g_ref = jax.grad(lambda x: jnp.sum(fn(x, CB, SCB, bias) ** 2))(x)
    assert_close_f32(g, g_ref)


# --- shard_linear and Dense8bit(mesh=...) -------------------------------------------------------


@worker
@pytest.mark.parametrize("mode", ["column", "row"])
def test_worker_shard_linear_and_dense8bit(mesh, rng, mode):
    x = activations(rng, (8, 64), 0.0)
    CB, SCB, bias = layer(rng)
    ref = ops.linear(x, CB, SCB, bias, 0.0)
    fn = lambda x, c, s, b: shard_linear(mesh, x, c, s, b, 0.0, mode=mode)  # noqa: E731
    out = jax.jit(fn)(x, CB, SCB, bias)  # unplaced weights: shard_linear places them
    np.testing.assert_array_equal(np.asarray(out), np.asarray(ref))
    assert_no_weight_gather(
        fn,
        x,
        *(
            put(mesh, a, s)
            for a, s in zip((CB, SCB, bias), (weight_specs(mode)[k] for k in ("CB", "SCB", "bias")))
        ),
    )
    variables = {"params": {"bias": bias}, "int8": {"CB": CB, "SCB": SCB}}
    dense = Dense8bit(32, threshold=0.0, mesh=mesh, parallel=mode)
    np.testing.assert_array_equal(np.asarray(jax.jit(dense.apply)(variables, x)), np.asarray(ref))


@worker
def test_worker_bad_sharding_arguments(mesh, rng):
    x = activations(rng, (2, 64), THRESHOLD)
    _, CB, SCB = int8_weight(rng, 30, 64)
    with pytest.raises(ValueError, match="divisible"):
        shard_linear(mesh, x, CB, SCB, None, mode="column")
    with pytest.raises(ValueError, match="not an axis"):
        shard_linear(mesh, x, CB, SCB, None, axis_name="tp")
    with pytest.raises(ValueError, match="mode must be"):
        shard_linear(mesh, x, CB, SCB, None, mode="diagonal")
