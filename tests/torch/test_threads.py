"""Concurrent forwards from several Python threads give the results of sequential ones: one
torch Linear8bitLt shared by every thread (inference fast path, registered op with autograd,
float master weight), and one jitted JAX linear, on every device."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from jax_helpers import platform  # noqa: F401

import lt8
import lt8.jax as lj
import lt8.torch  # noqa: F401

THREADS = 8
ROUNDS = 3


def run_concurrently(fn, inputs):
    """fn(input) for every input, THREADS at a time, all starting together; results in order."""
    barrier = threading.Barrier(min(THREADS, len(inputs)))

    def start_together(i):
        if i < THREADS:
            barrier.wait(timeout=60)
        return fn(inputs[i])

    with ThreadPoolExecutor(max_workers=THREADS) as pool:
        return list(pool.map(start_together, range(len(inputs))))


def batches(rng, K, threshold):
    """Inputs of different sizes (decode rows, prefill blocks large enough for the CPU kernel's
    own threads) with their own outlier columns, so that concurrent calls differ."""
    out = []
    for i in range(THREADS * ROUNDS):
        M = [1, 3, 16, 40, 200][i % 5]
        x = np.clip(rng.standard_normal((M, K)), -3, 3).astype(np.float32)
        x[rng.integers(M), rng.integers(K)] = rng.choice([-1, 1]) * (threshold + 1 + i)
        out.append(x)
    return out


@pytest.mark.parametrize("mode", ["no_grad", "grad", "fp16_weights"])
def test_torch_module_concurrent_forwards(device, rng, mode):
    K, N, threshold = 256, 192, 6.0
    layer = lt8.nn.Linear8bitLt(
        K, N, has_fp16_weights=mode == "fp16_weights", threshold=threshold
    ).to(device)
    xs = [torch.from_numpy(x).half().to(device) for x in batches(rng, K, threshold)]

    def forward(x):
        if mode == "no_grad":
            with torch.no_grad():
                return layer(x)
        x = x.clone().requires_grad_(True)
        y = layer(x)
        (y.float() ** 2).sum().backward(inputs=[x])
        return y.detach(), x.grad

    def as_tuple(r):
        return r if isinstance(r, tuple) else (r,)

    sequential = [as_tuple(forward(x)) for x in xs]
    if device == "cuda":
        torch.cuda.synchronize()
    concurrent = run_concurrently(forward, xs)
    if device == "cuda":
        torch.cuda.synchronize()
    for i, (seq, con) in enumerate(zip(sequential, concurrent)):
        for a, b in zip(seq, as_tuple(con)):
            assert torch.equal(a, b), f"input {i} (M={xs[i].shape[0]}) differs under concurrency"


def test_torch_ops_concurrent_on_one_weight(device, rng):
    """The registered ops directly, with a bias and a mix of thresholds."""
    K, N = 200, 96
    CB, SCB, _ = torch.ops.lt8.quantize_rows(torch.randn(N, K, device=device), 0.0)
    bias = torch.randn(N, device=device)
    cases = [
        (torch.from_numpy(x).to(device), [0.0, 6.0][i % 2])
        for i, x in enumerate(batches(rng, K, 6.0))
    ]

    def call(case):
        x, t = case
        return torch.ops.lt8.int8_linear(x, CB, SCB, bias, t), torch.ops.lt8.int8_weight_linear(
            x, CB, SCB, bias
        )

    sequential = [call(c) for c in cases]
    for seq, con in zip(sequential, run_concurrently(call, cases)):
        assert all(torch.equal(a, b) for a, b in zip(seq, con))


def test_jax_jitted_linear_concurrent(platform, rng):
    K, N, threshold = 256, 192, 6.0
    CB, SCB = lj.quantize_weight(jnp.asarray(rng.standard_normal((N, K)).astype(np.float32)))
    bias = jnp.asarray(rng.standard_normal(N).astype(np.float32))
    f = jax.jit(lambda x: lj.linear(x, CB, SCB, bias, threshold))
    grad = jax.jit(
        jax.grad(lambda x: (lj.linear(x, CB, SCB, bias, threshold).astype(jnp.float32) ** 2).sum())
    )
    xs = [jnp.asarray(x, jnp.float16) for x in batches(rng, K, threshold)]

    def call(x):
        return np.asarray(f(x)), np.asarray(grad(x))

    sequential = [call(x) for x in xs]  # also compiles every shape before the threads start
    for i, (seq, con) in enumerate(zip(sequential, run_concurrently(call, xs))):
        for a, b in zip(seq, con):
            np.testing.assert_array_equal(a, b, err_msg=f"input {i} differs under concurrency")
