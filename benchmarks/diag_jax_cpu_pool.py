"""A MiniLM-sized encoder block stack in JAX on the CPU: lt8's int8 layers with XLA's thread pool
lent to the kernels (LT8_XLA_THREAD_POOL=1) against lt8's own pool (the default), and float32.

    python benchmarks/diag_jax_cpu_pool.py

6 blocks of q/k/v/o (384 -> 384), up (384 -> 1536) and down (1536 -> 384) linears with
attention, gelu and normalisation between, 192 rows, one jax.jit each. The handlers read
LT8_XLA_THREAD_POOL on every call, so the two pools alternate call by call in one process; the
ratios are medians of per-call pairs (steadier on a shared VM than ratios of medians).
"""

from __future__ import annotations

import os
import time

import jax
import jax.numpy as jnp
import numpy as np

import lt8.jax as lj

M, D, F, LAYERS, PAIRS = 192, 384, 1536, 6, 40


def main() -> None:
    rng = np.random.default_rng(0)

    def make(n: int, k: int):
        w = jnp.asarray(rng.standard_normal((n, k)).astype(np.float32) / np.sqrt(k))
        return w, lj.quantize_weight(w)

    shapes = dict(q=(D, D), k=(D, D), v=(D, D), o=(D, D), up=(F, D), down=(D, F))
    layers = [{n: make(*s) for n, s in shapes.items()} for _ in range(LAYERS)]
    x = jnp.asarray(rng.standard_normal((M, D)).astype(np.float32))

    def net(h, int8: bool):
        for ly in layers:

            def lin(v, n, ly=ly):
                if int8:
                    return lj.linear(v, *ly[n][1], None, threshold=6.0)
                return v @ ly[n][0].T

            q, k, v = lin(h, "q"), lin(h, "k"), lin(h, "v")
            a = jax.nn.softmax((q @ k.T) / 20.0, axis=-1) @ v
            h = h + lin(a, "o")
            h = h / jnp.linalg.norm(h, axis=-1, keepdims=True) * 20
            h = h + lin(jax.nn.gelu(lin(h, "up")), "down")
            h = h / jnp.linalg.norm(h, axis=-1, keepdims=True) * 20
        return h

    f8, f32 = jax.jit(lambda v: net(v, True)), jax.jit(lambda v: net(v, False))
    for f in (f8, f32):
        jax.block_until_ready(f(x))

    def once(f) -> float:
        t = time.perf_counter()
        jax.block_until_ready(f(x))
        return time.perf_counter() - t

    xla, own, fp = [], [], []
    for _ in range(PAIRS):
        os.environ["LT8_XLA_THREAD_POOL"] = "1"
        xla.append(once(f8))
        os.environ["LT8_XLA_THREAD_POOL"] = "0"
        own.append(once(f8))
        fp.append(once(f32))
    os.environ.pop("LT8_XLA_THREAD_POOL")
    xla, own, fp = np.array(xla), np.array(own), np.array(fp)
    print(
        f"ms (median): lt8 on XLA's pool {np.median(xla) * 1e3:.2f}, lt8 on its own pool"
        f" {np.median(own) * 1e3:.2f}, float32 {np.median(fp) * 1e3:.2f}; paired ratios:"
        f" XLA pool / own pool {np.median(xla / own):.3f}, XLA pool / float32"
        f" {np.median(xla / fp):.3f}, own pool / float32 {np.median(own / fp):.3f}"
    )


if __name__ == "__main__":
    main()
