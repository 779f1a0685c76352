"""Diagnose lt8's JAX GPU timings: one jitted layer, weights as arguments vs closed over."""

import os
import statistics
import time

os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
import jax
import jax.numpy as jnp
import numpy as np

from lt8.jax import ops as jops


def bench(f, *args, n=20):
    f(*args).block_until_ready()
    ts = []
    for _ in range(n):
        t0 = time.perf_counter()
        f(*args).block_until_ready()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts) * 1e6


K = N = 8192
w = jax.random.normal(jax.random.PRNGKey(0), (N, K), jnp.float32) * 0.02
CB, SCB = jops.quantize_weight(w)
bias = jnp.zeros((N,), jnp.float16)
for M in (1, 16, 256):
    x = jnp.asarray(np.random.default_rng(0).standard_normal((M, K)), jnp.float16)
    for thr in (0.0, 6.0):
        arg = jax.jit(lambda x, cb, s, b: jops.linear(x, cb, s, b, threshold=thr))
        clo = jax.jit(lambda x: jops.linear(x, CB, SCB, bias, threshold=thr))
        nob = jax.jit(lambda x, cb, s: jops.linear(x, cb, s, None, threshold=thr))
        print(
            f"M={M} thr={thr}: args {bench(arg, x, CB, SCB, bias):.1f} us, closure {bench(clo, x):.1f} us, "
            f"no-bias {bench(nob, x, CB, SCB):.1f} us"
        )
    hlo = (
        jax.jit(lambda x: jops.linear(x, CB, SCB, bias, threshold=6.0)).lower(x).compile().as_text()
    )
    print(
        f"M={M} compiled HLO: {len(hlo)} chars, custom-calls {hlo.count('custom-call')}, copies {hlo.count(' copy(')}, constants {hlo.count('constant(')}"
    )
    if M == 16:
        print("\n".join(l for l in hlo.splitlines() if "custom-call" in l or "copy" in l)[:3000])
