"""The ``add_outlier_terms`` kernel that the sharded linear ops build on (lt8.jax.partitioning).

``base + outlier terms`` must reproduce the fused op's own arithmetic: with ``base`` the
dequantized int8 product, adding the terms, then the bias, then rounding to x's dtype gives the
fused ``int8_linear`` bit for bit, on the CPU and (where present) on the GPU, up to 64 outlier
columns. Above that, 16-bit x on the GPU sums the terms on tensor cores (float32 in the
hardware's order, as the fused op's large-batch path does): checked against float64 within the
float32 bound of a sum in any order.
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
TC_MIN_COUNT = 64  # outlier columns up to which the GPU sums them exactly (kOutlierTcMinCount)
UNIT_ROUNDOFF = {jnp.dtype(jnp.float16): 2.0**-11, jnp.dtype(jnp.bfloat16): 2.0**-8}


def _float32_bound(x, mask, CB, SCB, base) -> np.ndarray:
    """How far two float32 evaluations of base + the outlier terms, in any order, can drift:
    (terms + 1) roundings of the summed magnitudes."""
    cols = np.asarray(mask).astype(bool)
    xs = np.abs(f64(x)).reshape(-1, cols.size)[:, cols]
    S = np.abs(f64(base)).reshape(xs.shape[0], -1)
    S = S + xs @ np.abs(dequantize_weight_ref(CB, SCB)[:, cols]).T
    return ((cols.sum() + 2) * 2.0**-24 * S).reshape(np.shape(base))


def parts(x, CB, SCB, threshold):
    q, row_scale, mask = _ffi.quantize_rows(x, threshold)
    base = _ffi.dequant_epilogue(_ffi.int8_gemm(q, CB), row_scale, SCB, None, jnp.float32)
    return base, mask


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("shape", [(5, 64), (2, 3, 40), (33, 300)], ids=str)
@pytest.mark.parametrize("n_outliers", [0, 3, 40, 100])
def test_dequantized_product_plus_terms_is_the_fused_op(platform, rng, dtype, shape, n_outliers):
    K, N = shape[-1], 48
    x = activations(rng, shape, THRESHOLD, n_outlier_cols=min(n_outliers, K), dtype=dtype)
    _, CB, SCB = int8_weight(rng, N, K)
    bias = jnp.asarray(rng.standard_normal(N), jnp.float32)
    base, mask = parts(x, CB, SCB, THRESHOLD)
    v = _ffi.add_outlier_terms(x, mask, CB, SCB, base)
    out = (v + bias).astype(dtype)
    fused = _ffi.int8_linear(x, CB, SCB, bias, THRESHOLD)
    if int(np.asarray(mask).sum()) <= TC_MIN_COUNT or platform == "cpu" or dtype == jnp.float32:
        np.testing.assert_array_equal(np.asarray(out), np.asarray(fused))
    else:  # tensor-core sums here, maybe CUDA-core ones in the fused op's path for this shape
        slack = _float32_bound(x, mask, CB, SCB, base) + np.abs(f64(bias))[None] * 2.0**-24
        tol = slack + 2 * UNIT_ROUNDOFF[jnp.dtype(dtype)] * (np.abs(f64(fused)) + slack)
        assert np.all(np.abs(f64(out) - f64(fused)) <= tol)


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
@pytest.mark.parametrize("n_outliers", [60, 300])
def test_cpu_and_gpu_agree(rng, n_outliers):
    """Bit for bit up to 64 outlier columns; above, the GPU's tensor-core sums within the
    float32 bound of the CPU's (and the slow CUDA-core loop is not what ran: same bits as the
    fused op's tensor-core path where both take it)."""
    gpu = gpu_device()
    if gpu is None:
        if REQUIRE_CUDA:
            pytest.fail("LT8_REQUIRE_CUDA=1 but there is no JAX GPU backend with lt8's kernels")
        pytest.skip("needs a JAX GPU backend and an lt8 build with CUDA kernels")
    x = activations(rng, (70, 513), THRESHOLD, n_outlier_cols=n_outliers, dtype=jnp.bfloat16)
    _, CB, SCB = int8_weight(rng, 300, 513)
    cpu = jax.devices("cpu")[0]
    outs = []
    for dev in (cpu, gpu):
        args = [jax.device_put(a, dev) for a in (x, CB, SCB)]
        with jax.default_device(dev):
            base, mask = parts(args[0], args[1], args[2], THRESHOLD)
            outs.append(np.asarray(_ffi.add_outlier_terms(args[0], mask, args[1], args[2], base)))
    assert int(np.asarray(mask).sum()) == n_outliers
    if n_outliers <= TC_MIN_COUNT:
        np.testing.assert_array_equal(outs[0], outs[1])
    else:
        bound = _float32_bound(x, mask, CB, SCB, base)
        assert np.all(np.abs(f64(outs[1]) - f64(outs[0])) <= 2 * bound)
        assert not np.array_equal(outs[0], outs[1])  # the tensor cores' order, not the loop's


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
