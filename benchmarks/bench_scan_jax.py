"""Does lt8's FFI call copy the int8 weight slice per step of ``lax.scan`` over stacked layers?

Times L independent layers (stacked int8 weights, one input per layer) at decode size, per layer,
(a) unrolled inside one jit and (b) as a ``lax.scan`` over the stacked weights; prints both next to
XLA's fp16 dense under the same two schemes. A per-step weight copy would add ~N*K bytes of
device-to-device traffic (64 MiB, ~40 us on an H100 at 8192^2) to (b) only.

    python benchmarks/bench_scan_jax.py [--layers 16] [--dim 8192] [--ms 1,16]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
import jax
import jax.numpy as jnp
import numpy as np

from lt8.jax import ops as jops


def per_layer_us(f, args, layers, n=20) -> float:
    jax.block_until_ready(f(*args))
    ts = []
    for _ in range(n):
        t0 = time.perf_counter()
        jax.block_until_ready(f(*args))
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts) * 1e6 / layers


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--layers", type=int, default=16)
    ap.add_argument("--dim", type=int, default=8192)
    ap.add_argument("--ms", default="1,16")
    args = ap.parse_args()
    L, D = args.layers, args.dim
    keys = jax.random.split(jax.random.PRNGKey(0), L)
    CBs, SCBs = [], []
    for k in keys:
        CB, SCB = jops.quantize_weight(jax.random.normal(k, (D, D), jnp.float32) * 0.02)
        CBs.append(CB)
        SCBs.append(SCB)
    CB, SCB = jnp.stack(CBs), jnp.stack(SCBs)
    W16 = jnp.stack([jops.dequantize_weight(c, s, jnp.float16) for c, s in zip(CBs, SCBs)])
    bias = jnp.zeros((L, D), jnp.float16)

    def lt8_unrolled(xs, CB, SCB, bias):
        return [jops.linear(xs[i], CB[i], SCB[i], bias[i], threshold=6.0) for i in range(L)]

    def lt8_scan(xs, CB, SCB, bias):
        return jax.lax.scan(
            lambda c, a: (c, jops.linear(a[0], a[1], a[2], a[3], threshold=6.0)),
            0,
            (xs, CB, SCB, bias),
        )[1]

    def dense(x, w, b):  # x @ w.T without materialising the transpose
        return jax.lax.dot_general(x, w, (((1,), (1,)), ((), ()))) + b

    def fp16_unrolled(xs, W, bias):
        return [dense(xs[i], W[i], bias[i]) for i in range(L)]

    def fp16_scan(xs, W, bias):
        return jax.lax.scan(lambda c, a: (c, dense(*a)), 0, (xs, W, bias))[1]

    print(
        f"{jax.devices()[0].device_kind}, {L} layers of {D}x{D}, us per layer (host-timed, one jit)"
    )
    for M in (int(v) for v in args.ms.split(",")):
        xs = jnp.asarray(np.random.default_rng(M).standard_normal((L, M, D)), jnp.float16)
        row = {
            "lt8 unrolled": per_layer_us(jax.jit(lt8_unrolled), (xs, CB, SCB, bias), L),
            "lt8 scan": per_layer_us(jax.jit(lt8_scan), (xs, CB, SCB, bias), L),
            "fp16 unrolled": per_layer_us(jax.jit(fp16_unrolled), (xs, W16, bias), L),
            "fp16 scan": per_layer_us(jax.jit(fp16_scan), (xs, W16, bias), L),
        }
        print(f"M={M:4d} " + " | ".join(f"{k} {v:7.1f}" for k, v in row.items()), flush=True)


if __name__ == "__main__":
    main()
