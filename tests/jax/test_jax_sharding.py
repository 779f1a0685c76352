"""Tensor-parallel LLM.int8() on a mesh of 8 host (CPU) devices.

JAX fixes its device count when its backend starts, so the checks run in a subprocess that sets
XLA_FLAGS=--xla_force_host_platform_device_count=8 first: ``test_sharding_on_8_host_devices``
launches pytest on this file there, where the ``test_worker_*`` tests run (they are skipped in
the parent process and any failure in them fails the parent test).
"""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import SEED
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P
from jax_helpers import activations, f64, int8_weight, rel_eps
from reference import linear_ref

from lt8.jax import Dense8bit, ops, shard_linear
from lt8.jax.sharding import weight_specs

IN_WORKER = os.environ.get("LT8_SHARDING_WORKER") == "1"
worker = pytest.mark.skipif(
    not IN_WORKER, reason="runs in test_sharding_on_8_host_devices's subprocess"
)
THRESHOLD = 6.0


def test_sharding_on_8_host_devices():
    if IN_WORKER:
        pytest.skip("this is the worker process")
    here = pathlib.Path(__file__).resolve()
    env = {
        **os.environ,
        "LT8_SHARDING_WORKER": "1",
        "LT8_SEED": str(SEED),
        "JAX_PLATFORMS": "cpu",
        "XLA_FLAGS": (
            os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
        ).strip(),
    }
    r = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-k", "worker", str(here)],
        cwd=here.parents[2],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stdout[-6000:] + r.stderr[-3000:]
    assert " passed" in r.stdout and "skipped" not in r.stdout, r.stdout[-3000:]


# --- the worker's tests -----------------------------------------------------------------------


@pytest.fixture
def mesh():
    devices = jax.devices("cpu")
    assert len(devices) == 8, "the worker must see 8 host devices"
    return Mesh(np.array(devices).reshape(2, 4), ("data", "model"))


def placed(mesh, mode, CB, SCB, bias):
    specs = weight_specs(mode)
    put = lambda a, k: jax.device_put(a, NamedSharding(mesh, specs[k]))  # noqa: E731
    return put(CB, "CB"), put(SCB, "SCB"), put(bias, "bias")


def setup(rng, dtype=jnp.float32, shape=(4, 3, 64), N=32):
    W, CB, SCB = int8_weight(rng, N, shape[-1])
    bias = jnp.asarray(rng.standard_normal(N), jnp.float32)
    return activations(rng, shape, THRESHOLD, n_outlier_cols=4, dtype=dtype), CB, SCB, bias


def collectives(fn, *args) -> set[str]:
    hlo = jax.jit(fn).lower(*args).compile().as_text()
    return {
        op for op in ("all-reduce", "all-gather", "all-to-all", "collective-permute") if op in hlo
    }


@worker
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16], ids=["f32", "bf16"])
def test_worker_column_parallel_is_bit_identical(mesh, rng, dtype):
    x, CB, SCB, bias = setup(rng, dtype)
    CBs, SCBs, bs = placed(mesh, "column", CB, SCB, bias)
    fn = lambda x, c, s, b: shard_linear(mesh, x, c, s, b, THRESHOLD, mode="column")  # noqa: E731
    out = jax.jit(fn)(x, CBs, SCBs, bs)
    np.testing.assert_array_equal(
        np.asarray(out), np.asarray(ops.linear(x, CB, SCB, bias, THRESHOLD))
    )
    assert out.sharding.spec == P(None, None, "model")
    assert collectives(fn, x, CBs, SCBs, bs) == set()  # each device used its own weight rows
    # Gradients match the unsharded op up to rounding: grad_x is a sum of per-shard partials, each
    # rounded to x's dtype before the cross-device sum.
    loss = lambda f: lambda x, b: jnp.sum(f(x, b).astype(jnp.float32) ** 2)  # noqa: E731
    g = jax.jit(jax.grad(loss(lambda x, b: fn(x, CBs, SCBs, b)), argnums=(0, 1)))(x, bs)
    g_ref = jax.grad(loss(lambda x, b: ops.linear(x, CB, SCB, b, THRESHOLD)), argnums=(0, 1))(
        x, bias
    )
    for a, b in zip(g, g_ref):
        tol = (8 * rel_eps(a.dtype) + 1e-6) * np.abs(f64(b)).max()
        np.testing.assert_allclose(f64(a), f64(b), rtol=0, atol=tol)


@worker
def test_worker_row_parallel_equals_per_shard_int8_sum(mesh, rng):
    x, CB, SCB, bias = setup(rng)
    CBs, SCBs, bs = placed(mesh, "row", CB, SCB, bias)
    fn = lambda x, c, s, b: shard_linear(mesh, x, c, s, b, THRESHOLD, mode="row")  # noqa: E731
    out = f64(jax.jit(fn)(x, CBs, SCBs, bs))
    assert "all-reduce" in collectives(fn, x, CBs, SCBs, bs)
    # Reference: LLM.int8() of each of the 4 feature shards with the unsharded op, summed.
    K, n = x.shape[-1], mesh.shape["model"]
    parts = [
        (x[..., i * K // n : (i + 1) * K // n], CB[:, i * K // n : (i + 1) * K // n])
        for i in range(n)
    ]
    ref = sum(f64(ops.linear(xs, cbs, SCB, None, THRESHOLD)) for xs, cbs in parts) + f64(bias)
    np.testing.assert_allclose(out, ref, rtol=0, atol=4 * 2.0**-24 * np.abs(ref).max())
    # ... which is the float64 LLM.int8() math applied shard by shard.
    ref64 = sum(linear_ref(f64(xs), cbs, SCB, None, THRESHOLD) for xs, cbs in parts) + f64(bias)
    np.testing.assert_allclose(out, ref64, rtol=0, atol=1e-5 * np.abs(ref64).max())


@worker
@pytest.mark.parametrize("mode", ["column", "row"])
def test_worker_dense8bit_parallel(mesh, rng, mode):
    x, CB, SCB, bias = setup(rng, shape=(8, 64))
    CBs, SCBs, bs = placed(mesh, mode, CB, SCB, bias)
    variables = {"params": {"bias": bs}, "int8": {"CB": CBs, "SCB": SCBs}}
    layer = Dense8bit(32, threshold=THRESHOLD, mesh=mesh, parallel=mode)
    out = jax.jit(layer.apply)(variables, x)
    expected = jax.jit(lambda x: shard_linear(mesh, x, CBs, SCBs, bs, THRESHOLD, mode=mode))(x)
    np.testing.assert_array_equal(np.asarray(out), np.asarray(expected))


@worker
def test_worker_jit_on_sharded_arrays_without_shard_map(mesh, rng):
    """Plain Dense8bit under jit with sharded inputs and weights: XLA gathers the FFI operands;
    the result is the unsharded one, bit for bit."""
    x, CB, SCB, bias = setup(rng, jnp.float16, shape=(8, 3, 64))
    xs = jax.device_put(x, NamedSharding(mesh, P("data")))
    variables = {
        "params": {"bias": jax.device_put(bias, NamedSharding(mesh, P("model")))},
        "int8": {
            "CB": jax.device_put(CB, NamedSharding(mesh, P("model", None))),
            "SCB": jax.device_put(SCB, NamedSharding(mesh, P("model"))),
        },
    }
    out = jax.jit(Dense8bit(32).apply)(variables, xs)
    np.testing.assert_array_equal(np.asarray(out), np.asarray(ops.linear(x, CB, SCB, bias, 6.0)))


@worker
def test_worker_bad_sharding_arguments(mesh, rng):
    x, CB, SCB, bias = setup(rng, shape=(2, 64), N=30)
    with pytest.raises(ValueError, match="divisible"):
        shard_linear(mesh, x, CB, SCB, bias, mode="column")
    with pytest.raises(ValueError, match="not an axis"):
        shard_linear(mesh, x, CB, SCB, bias, axis_name="tp")
    with pytest.raises(ValueError, match="mode must be"):
        shard_linear(mesh, x, CB, SCB, bias, mode="diagonal")
