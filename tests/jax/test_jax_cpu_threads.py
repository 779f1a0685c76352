"""lt8's CPU kernels under XLA, on lt8's own thread pool and on XLA's intra-op pool
(LT8_XLA_THREAD_POOL=1 lends it per call, where XLA also runs independent thunks at the same
time). Whatever the interleaving, every call must give the bits it gives alone, and both pools
the same bits."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import lt8.jax as lj

CPU = jax.devices("cpu")[0]


def _inputs(rng, n: int, M: int, K: int) -> list[jax.Array]:
    xs = []
    for i in range(n):
        x = rng.standard_normal((M, K)).astype(np.float32)
        x[:, rng.choice(K, size=1 + i, replace=False)] *= 9.0  # a few outlier columns each
        xs.append(jax.device_put(jnp.asarray(x), CPU))
    return xs


@pytest.mark.parametrize("pool", ["1", "0"])
def test_independent_calls_in_one_jit_equal_calls_alone(rng, monkeypatch, pool):
    monkeypatch.setenv("LT8_XLA_THREAD_POOL", pool)
    M, K, N = 96, 320, 256  # large enough to split over threads
    W = jax.device_put(jnp.asarray(rng.standard_normal((N, K)).astype(np.float32) * 0.05), CPU)
    CB, SCB = lj.quantize_weight(W)
    bias = jax.device_put(jnp.asarray(rng.standard_normal(N).astype(np.float32)), CPU)
    xs = _inputs(rng, 6, M, K)
    together = jax.jit(lambda *xs: [lj.linear(x, CB, SCB, bias, threshold=6.0) for x in xs])(*xs)
    grads = jax.jit(
        lambda *xs: [
            jax.grad(lambda v: lj.linear(v, CB, SCB, bias, threshold=6.0).sum())(x) for x in xs
        ]
    )(*xs)
    for x, out, g in zip(xs, together, grads):
        alone = lj.linear(x, CB, SCB, bias, threshold=6.0)
        np.testing.assert_array_equal(np.asarray(out), np.asarray(alone))
        g_alone = jax.grad(lambda v: lj.linear(v, CB, SCB, bias, threshold=6.0).sum())(x)
        np.testing.assert_array_equal(np.asarray(g), np.asarray(g_alone))


def test_xla_pool_and_own_pool_give_the_same_bits(rng, monkeypatch):
    M, K, N = 200, 512, 384
    W = jax.device_put(jnp.asarray(rng.standard_normal((N, K)).astype(np.float32) * 0.05), CPU)
    CB, SCB = lj.quantize_weight(W)
    (x,) = _inputs(rng, 1, M, K)
    f = jax.jit(
        lambda v: (lj.linear(v, CB, SCB, None, threshold=6.0), lj.weight_linear(v, CB, SCB))
    )
    monkeypatch.setenv("LT8_XLA_THREAD_POOL", "1")
    lent = [np.asarray(a) for a in f(x)]
    monkeypatch.setenv("LT8_XLA_THREAD_POOL", "0")
    own = [np.asarray(a) for a in f(x)]
    for a, b in zip(lent, own):
        np.testing.assert_array_equal(a, b)
