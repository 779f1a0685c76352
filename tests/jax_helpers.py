"""Shared pieces of the JAX tests: the platform fixture and input generators.

``platform`` runs a test on the CPU and, where JAX sees a GPU and lt8 registered CUDA handlers,
on the GPU too (marked ``cuda``; under LT8_REQUIRE_CUDA=1 a missing GPU fails instead of
skipping). Test modules import the fixture by name.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import REQUIRE_CUDA

from lt8.jax import _ffi

DTYPES = [jnp.float32, jnp.float16, jnp.bfloat16]
DTYPE_IDS = ["f32", "f16", "bf16"]
_REL_EPS = {"float32": 2.0**-22, "float16": 2.0**-10, "bfloat16": 2.0**-7}


def rel_eps(dtype) -> float:
    """A relative rounding bound of ``dtype`` (a few ulps at 1.0 for float32, half an ulp else)."""
    return _REL_EPS[jnp.dtype(dtype).name]


def gpu_device():
    """JAX's first GPU when it has one and lt8 registered CUDA handlers, else None."""
    if "CUDA" not in _ffi.PLATFORMS:
        return None
    try:
        devices = jax.devices("gpu")
    except RuntimeError:
        return None
    return devices[0] if devices else None


@pytest.fixture(params=["cpu", pytest.param("gpu", marks=pytest.mark.cuda)])
def platform(request):
    """Runs the test with JAX's default device on "cpu", then "gpu" when usable."""
    if request.param == "gpu":
        device = gpu_device()
        if device is None:
            msg = "needs a JAX GPU backend and an lt8 build with CUDA kernels"
            if REQUIRE_CUDA:
                pytest.fail(f"LT8_REQUIRE_CUDA=1 but this test {msg}")
            pytest.skip(msg)
    else:
        device = jax.devices("cpu")[0]
    with jax.default_device(device):
        yield request.param


def activations(
    rng: np.random.Generator,
    shape,
    threshold: float = 6.0,
    n_outlier_cols: int = 3,
    dtype=jnp.float32,
) -> jax.Array:
    """N(0,1) activations kept below ``threshold``, plus a few planted outlier entries in
    ``n_outlier_cols`` random columns (one exactly at the threshold, which counts as outlier)."""
    x = rng.standard_normal(shape).astype(np.float32)
    if threshold > 0:
        x = np.clip(x, -0.9 * threshold, 0.9 * threshold)
    K = shape[-1]
    if n_outlier_cols and threshold > 0 and x.size:
        flat = x.reshape(-1, K)
        cols = rng.choice(K, size=min(n_outlier_cols, K), replace=False)
        rows = rng.integers(0, flat.shape[0], size=cols.size)
        mags = rng.uniform(threshold, 4 * threshold, size=cols.size)
        mags[0] = threshold
        flat[rows, cols] = rng.choice([-1.0, 1.0], size=cols.size) * mags
    return jnp.asarray(x, dtype)


def int8_weight(rng: np.random.Generator, N: int, K: int):
    """A random float weight (N, K) and its row-wise int8 quantization (CB, SCB) by numpy."""
    from reference import quantize_rows_ref

    W = (rng.standard_normal((N, K)) * 0.05).astype(np.float32)
    CB, SCB, _ = quantize_rows_ref(W, 0.0)
    return W, jnp.asarray(CB), jnp.asarray(SCB, jnp.float32)


def f64(a) -> np.ndarray:
    return np.asarray(jnp.asarray(a).astype(jnp.float32), dtype=np.float64)
