"""The ``add_outlier_terms`` kernel that the sharded linear ops build on (lt8.jax.partitioning).

``base + outlier terms`` must reproduce the fused op's own arithmetic: with ``base`` the
dequantized int8 product, adding the terms, then the bias, then rounding to x's dtype gives the
fused ``int8_linear`` bit for bit, on the CPU and (where present) on the GPU.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import REQUIRE_CUDA
from jax_helpers import (  # noqa: F401  (platform is a fixture)
    DTYPE_IDS,
    DTYPES,
    activations,
    f64,
    gpu_device,
    int8_weight,
    platform,
)
from reference import dequantize_weight_ref

from lt8.jax import _ffi

THRESHOLD = 6.0


def parts(x, CB, SCB, threshold):
    q, row_scale, mask = _ffi.quantize_rows(x, threshold)
    base = _ffi.dequant_epilogue(_ffi.int8_gemm(q, CB), row_scale, SCB, None, jnp.float32)
    return base, mask


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("shape", [(5, 64), (2, 3, 40), (33, 300)], ids=str)
@pytest.mark.parametrize("n_outliers", [0, 3, 40])
def test_dequantized_product_plus_terms_is_the_fused_op(platform, rng, dtype, shape, n_outliers):
    K, N = shape[-1], 48
    x = activations(rng, shape, THRESHOLD, n_outlier_cols=min(n_outliers, K), dtype=dtype)
    _, CB, SCB = int8_weight(rng, N, K)
    bias = jnp.asarray(rng.standard_normal(N), jnp.float32)
    base, mask = parts(x, CB, SCB, THRESHOLD)
    v = _ffi.add_outlier_terms(x, mask, CB, SCB, base)
    out = (v + bias).astype(dtype)
    fused = _ffi.int8_linear(x, CB, SCB, bias, THRESHOLD)
    np.testing.assert_array_equal(np.asarray(out), np.asarray(fused))


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_terms_against_float64(platform, rng, dtype):
    M, K, N = 7, 300, 33
    x = jnp.asarray(rng.standard_normal((M, K)) * 3, dtype)
    _, CB, SCB = int8_weight(rng, N, K)
    mask = jnp.asarray(rng.random(K) < 0.1, jnp.uint8)
    base = jnp.asarray(rng.standard_normal((M, N)), jnp.float32)
    out = _ffi.add_outlier_terms(x, mask, CB, SCB, base)
    cols = np.asarray(mask).astype(bool)
    ref = f64(base) + f64(x)[:, cols] @ dequantize_weight_ref(CB, SCB)[:, cols].T
    np.testing.assert_allclose(f64(out), ref, rtol=0, atol=1e-5 * np.abs(ref).max())
    # No outlier column: the base, untouched.
    none = _ffi.add_outlier_terms(x, jnp.zeros_like(mask), CB, SCB, base)
    np.testing.assert_array_equal(np.asarray(none), np.asarray(base))


def test_non_finite_values_reach_their_rows_and_columns(platform, rng):
    M, K, N = 4, 64, 16
    x = np.array(activations(rng, (M, K), 0.0))
    mask = np.zeros(K, np.uint8)
    mask[[3, 10]] = 1
    x[1, 3] = np.nan
    x[2, 12] = np.nan  # not an outlier column: ignored here
    _, CB, SCB = int8_weight(rng, N, K)
    SCB = np.array(SCB)
    SCB[5] = np.inf
    base = jnp.zeros((M, N), jnp.float32)
    out = np.asarray(_ffi.add_outlier_terms(jnp.asarray(x), jnp.asarray(mask), CB, SCB, base))
    assert np.isnan(out[1]).all()
    assert not np.isfinite(out[[0, 2, 3], 5]).any()
    finite = np.ones_like(out, bool)
    finite[1] = False
    finite[:, 5] = False
    assert np.isfinite(out[finite]).all()


@pytest.mark.cuda
def test_cpu_and_gpu_agree_bit_for_bit(rng):
    gpu = gpu_device()
    if gpu is None:
        if REQUIRE_CUDA:
            pytest.fail("LT8_REQUIRE_CUDA=1 but there is no JAX GPU backend with lt8's kernels")
        pytest.skip("needs a JAX GPU backend and an lt8 build with CUDA kernels")
    x = activations(rng, (70, 513), THRESHOLD, n_outlier_cols=90, dtype=jnp.bfloat16)
    _, CB, SCB = int8_weight(rng, 300, 513)
    cpu = jax.devices("cpu")[0]
    outs = []
    for dev in (cpu, gpu):
        args = [jax.device_put(a, dev) for a in (x, CB, SCB)]
        with jax.default_device(dev):
            base, mask = parts(args[0], args[1], args[2], THRESHOLD)
            outs.append(np.asarray(_ffi.add_outlier_terms(args[0], mask, args[1], args[2], base)))
    np.testing.assert_array_equal(outs[0], outs[1])


def test_torch_op_is_the_same_kernel(rng):
    """The torch face of the op (torch.ops.lt8.add_outlier_terms): opcheck, and JAX's bits."""
    torch = pytest.importorskip("torch")
    import lt8.torch  # noqa: F401  (registers the ops)

    x = activations(rng, (3, 5, 64), THRESHOLD, n_outlier_cols=6, dtype=jnp.bfloat16)
    _, CB, SCB = int8_weight(rng, 24, 64)
    base, mask = parts(x, CB, SCB, THRESHOLD)
    ref = np.asarray(_ffi.add_outlier_terms(x, mask, CB, SCB, base))
    tx = torch.from_numpy(np.array(x.astype(jnp.float32))).to(torch.bfloat16)
    args = (
        tx,
        torch.from_numpy(np.array(mask)).bool(),
        torch.from_numpy(np.array(CB)),
        torch.from_numpy(np.array(SCB)),
        torch.from_numpy(np.array(base)),
    )
    out = torch.ops.lt8.add_outlier_terms(*args)
    np.testing.assert_array_equal(out.numpy(), ref)
    torch.library.opcheck(torch.ops.lt8.add_outlier_terms.default, args)
    with pytest.raises(ValueError, match="base must have shape"):
        torch.ops.lt8.add_outlier_terms(*args[:4], args[4][:1])
