"""The torch ops (torch.ops.lt8.*) against the float64 numpy reference, on every device."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from reference import (
    dequant_epilogue_f32,
    dequantize_rows_f32,
    grad_input_ref,
    linear_error_bound,
    linear_ref,
    quantize_rows_ref,
)

import lt8.torch  # noqa: F401  (registers torch.ops.lt8)

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
DTYPE_IDS = ["f32", "f16", "bf16"]
# Output rounding of each dtype (half an ulp at 1.0, as a relative bound).
REL_EPS = {torch.float32: 2.0**-22, torch.float16: 2.0**-10, torch.bfloat16: 2.0**-7}


def activations(rng, shape, threshold=6.0, n_outlier_cols=3, dtype=torch.float16):
    """N(0,1) activations with a few outlier columns (entries at or beyond the threshold)."""
    x = rng.standard_normal(shape).astype(np.float32)
    x = np.clip(x, -0.9 * threshold, 0.9 * threshold) if threshold > 0 else x
    K = shape[-1]
    if n_outlier_cols and threshold > 0 and x.size:
        flat = x.reshape(-1, K)
        cols = rng.choice(K, size=min(n_outlier_cols, K), replace=False)
        rows = rng.integers(0, flat.shape[0], size=cols.size)
        mags = rng.uniform(threshold, 4 * threshold, size=cols.size)
        mags[0] = threshold  # exactly at the threshold: an outlier (|x| >= threshold)
        flat[rows, cols] = rng.choice([-1.0, 1.0], size=cols.size) * mags
    return torch.from_numpy(x).to(dtype)


def as_f64(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().to(torch.float64).numpy()


def weight(rng, N, K, device):
    W = torch.from_numpy(rng.standard_normal((N, K)).astype(np.float32) * 0.05).to(device)
    CB, SCB, _ = torch.ops.lt8.quantize_rows(W, 0.0)
    return W, CB, SCB


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("threshold", [0.0, 6.0])
@pytest.mark.parametrize("shape", [(7, 33), (64, 256), (1, 4097), (2, 3, 40)])
def test_quantize_rows(device, rng, dtype, threshold, shape):
    x = activations(rng, shape, threshold, dtype=dtype)
    q, scale, mask = torch.ops.lt8.quantize_rows(x.to(device), threshold)
    q_ref, scale_ref, mask_ref = quantize_rows_ref(as_f64(x), threshold)
    assert q.dtype == torch.int8 and q.shape == x.shape
    assert scale.dtype == torch.float32 and scale.shape == x.shape[:-1]
    assert mask.dtype == torch.bool and mask.shape == x.shape[-1:]
    np.testing.assert_array_equal(mask.cpu().numpy(), mask_ref)
    np.testing.assert_array_equal(scale.cpu().numpy(), scale_ref.astype(np.float32))
    # The reference reproduces the kernel's float32 formula: every int8 element is equal.
    np.testing.assert_array_equal(q.cpu().numpy(), q_ref)
    if threshold > 0:
        assert mask_ref.any(), "the input generator must plant outliers"
        assert np.all(q.cpu().numpy()[..., mask_ref] == 0)


def test_quantize_all_zero_rows_give_exact_zeros(device):
    x = torch.zeros(4, 64, dtype=torch.float16, device=device)
    x[1] = torch.linspace(-1, 1, 64)
    q, scale, _ = torch.ops.lt8.quantize_rows(x, 6.0)
    assert torch.all(q[[0, 2, 3]] == 0) and torch.all(scale[[0, 2, 3]] == 0)
    assert not torch.isnan(scale).any()
    assert q[1].abs().max() == 127


@pytest.mark.parametrize(
    "M,N,K", [(5, 7, 1), (3, 9, 3), (33, 17, 33), (64, 128, 256), (0, 8, 16), (2, 3, 0)]
)
def test_int8_gemm_exact(device, rng, M, N, K):
    A = torch.from_numpy(rng.integers(-127, 128, (M, K), dtype=np.int8))
    B = torch.from_numpy(rng.integers(-127, 128, (N, K), dtype=np.int8))
    C = torch.ops.lt8.int8_gemm(A.to(device), B.to(device))
    ref = A.numpy().astype(np.int64) @ B.numpy().astype(np.int64).T
    assert C.dtype == torch.int32 and C.shape == (M, N)
    np.testing.assert_array_equal(C.cpu().numpy(), ref)


@pytest.mark.parametrize("out_dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("with_bias", [False, True])
def test_dequant_epilogue(device, rng, out_dtype, with_bias):
    M, N = 9, 70
    C = torch.from_numpy(rng.integers(-(2**20), 2**20, (M, N), dtype=np.int32))
    rs = torch.from_numpy(rng.uniform(0.1, 8, M).astype(np.float32))
    cs = torch.from_numpy(rng.uniform(0.01, 2, N).astype(np.float32))
    bias = torch.from_numpy(rng.standard_normal(N).astype(np.float32)).half() if with_bias else None
    out = torch.ops.lt8.dequant_epilogue(
        C.to(device),
        rs.to(device),
        cs.to(device),
        None if bias is None else bias.to(device),
        out_dtype,
    )
    # The documented float32 evaluation order (cuda/numerics.h dequant), bit for bit.
    ref = dequant_epilogue_f32(
        C.numpy(), rs.numpy(), cs.numpy(), None if bias is None else as_f64(bias)
    )
    assert out.dtype == out_dtype
    np.testing.assert_array_equal(as_f64(out), as_f64(torch.from_numpy(ref).float().to(out_dtype)))


def test_dequantize_rows(device, rng):
    q = torch.from_numpy(rng.integers(-127, 128, (6, 50), dtype=np.int8))
    s = torch.from_numpy(rng.uniform(0.5, 4, 6).astype(np.float32))
    out = torch.ops.lt8.dequantize_rows(q.to(device), s.to(device), torch.float32)
    np.testing.assert_array_equal(as_f64(out), dequantize_rows_f32(q.numpy(), s.numpy()))


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("threshold", [0.0, 6.0])
@pytest.mark.parametrize(
    "shape,N", [((4, 64), 48), ((2, 5, 33), 17), ((1, 4097), 9), ((16, 256), 130)]
)
@pytest.mark.parametrize("with_bias", [False, True])
def test_int8_linear_matches_reference(device, rng, dtype, threshold, shape, N, with_bias):
    K = shape[-1]
    _, CB, SCB = weight(rng, N, K, device)
    bias = (
        torch.from_numpy(rng.standard_normal(N).astype(np.float32)).to(device)
        if with_bias
        else None
    )
    x = activations(rng, shape, threshold, dtype=dtype).to(device)
    out = torch.ops.lt8.int8_linear(x, CB, SCB, bias, threshold)
    ref = linear_ref(
        as_f64(x),
        CB.cpu().numpy(),
        SCB.cpu().numpy(),
        None if bias is None else bias.cpu().numpy(),
        threshold,
    )
    assert out.dtype == dtype and out.shape == (*shape[:-1], N)
    # The int8 rows equal the reference's (checked by linear_error_bound); what remains is
    # float32 accumulation and one rounding to the output dtype, bounded from the reference.
    q, _, _ = torch.ops.lt8.quantize_rows(x, threshold)
    bound = linear_error_bound(
        as_f64(x),
        CB.cpu().numpy(),
        SCB.cpu().numpy(),
        ref,
        REL_EPS[dtype] / 2,
        0,
        threshold,
        q.cpu(),
    )
    assert np.all(np.abs(as_f64(out) - ref) <= bound), np.abs(as_f64(out) - ref).max()


@pytest.mark.parametrize("threshold", [0.0, 6.0])
def test_int8_linear_close_to_fp_linear(device, rng, threshold):
    M, K, N = 32, 512, 256
    W, CB, SCB = weight(rng, N, K, device)
    x = activations(rng, (M, K), 6.0, n_outlier_cols=4, dtype=torch.float32).to(device)
    out = torch.ops.lt8.int8_linear(x, CB, SCB, None, threshold)
    ref = as_f64(x) @ as_f64(W).T
    rel = np.linalg.norm(as_f64(out) - ref) / np.linalg.norm(ref)
    assert rel < 0.02
    if threshold > 0:
        # Outlier decomposition must help when outliers are present.
        plain = torch.ops.lt8.int8_linear(x, CB, SCB, None, 0.0)
        rel_plain = np.linalg.norm(as_f64(plain) - ref) / np.linalg.norm(ref)
        assert rel < rel_plain


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_grad_input(device, rng, dtype):
    M, K, N = 10, 67, 33
    _, CB, SCB = weight(rng, N, K, device)
    g = torch.from_numpy(rng.standard_normal((M, N)).astype(np.float32)).to(dtype).to(device)
    gx = torch.ops.lt8.int8_linear_grad_input(g, CB, SCB)
    ref = grad_input_ref(as_f64(g), CB.cpu().numpy(), SCB.cpu().numpy())
    assert gx.dtype == dtype and gx.shape == (M, K)
    tol = (4 * REL_EPS[dtype] + 1e-5) * (np.abs(ref).max() + 1e-6)
    np.testing.assert_allclose(as_f64(gx), ref, rtol=0, atol=tol)


def test_autograd_through_int8_linear(device, rng):
    _, CB, SCB = weight(rng, 24, 40, device)
    bias = torch.randn(24, device=device, requires_grad=True)
    x = activations(rng, (3, 4, 40), 6.0, dtype=torch.float32).to(device).requires_grad_(True)
    out = torch.ops.lt8.int8_linear(x, CB, SCB, bias, 6.0)
    g = torch.randn_like(out)
    out.backward(g)
    ref_gx = grad_input_ref(as_f64(g).reshape(-1, 24), CB.cpu().numpy(), SCB.cpu().numpy()).reshape(
        3, 4, 40
    )
    np.testing.assert_allclose(as_f64(x.grad), ref_gx, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(as_f64(bias.grad), as_f64(g).sum((0, 1)), rtol=1e-5, atol=1e-5)


def test_empty_batch(device, rng):
    _, CB, SCB = weight(rng, 8, 16, device)
    x = torch.empty(0, 16, dtype=torch.float16, device=device, requires_grad=True)
    out = torch.ops.lt8.int8_linear(x, CB, SCB, None, 6.0)
    assert out.shape == (0, 8)
    out.sum().backward()
    assert x.grad.shape == (0, 16)


def test_opcheck(device, rng):
    _, CB, SCB = weight(rng, 16, 32, device)
    x = activations(rng, (4, 32), 6.0, dtype=torch.float16).to(device)
    bias = torch.randn(16, device=device, dtype=torch.float16)
    cases = [
        (torch.ops.lt8.int8_linear.default, (x, CB, SCB, bias, 6.0)),
        (torch.ops.lt8.int8_linear.default, (x.float().requires_grad_(), CB, SCB, None, 0.0)),
        (torch.ops.lt8.quantize_rows.default, (x, 6.0)),
        (torch.ops.lt8.int8_gemm.default, (CB, CB)),
        (
            torch.ops.lt8.int8_linear_grad_input.default,
            (torch.randn(4, 16, device=device), CB, SCB),
        ),
        (torch.ops.lt8.dequantize_rows.default, (CB, SCB, torch.float16)),
        (torch.ops.lt8.transform_layout.default, (CB, 16, 32, "row", "col_ampere")),
    ]
    for op, args in cases:
        torch.library.opcheck(op, args)


@pytest.mark.parametrize(
    "make_args,exc,match",
    [
        (
            lambda d: (
                torch.zeros(2, 8, dtype=torch.int8, device=d),
                torch.zeros(4, 8, dtype=torch.int8, device=d),
                torch.ones(4, device=d),
            ),
            TypeError,
            "x must be float32",
        ),
        (
            lambda d: (
                torch.zeros(2, 8, device=d),
                torch.zeros(4, 8, device=d),
                torch.ones(4, device=d),
            ),
            TypeError,
            "CB must be torch.int8",
        ),
        (
            lambda d: (
                torch.zeros(2, 7, device=d),
                torch.zeros(4, 8, dtype=torch.int8, device=d),
                torch.ones(4, device=d),
            ),
            ValueError,
            "x has 7 features",
        ),
        (
            lambda d: (
                torch.zeros(2, 8, device=d),
                torch.zeros(4, 8, dtype=torch.int8, device=d),
                torch.ones(3, device=d),
            ),
            ValueError,
            "SCB must have shape",
        ),
        (
            lambda d: (
                torch.zeros(2, 8, device=d),
                torch.zeros(4, 8, dtype=torch.int8, device=d),
                torch.ones(4, dtype=torch.float64, device=d),
            ),
            TypeError,
            "SCB must be torch.float32",
        ),
    ],
)
def test_bad_inputs_raise_clear_errors(device, make_args, exc, match):
    with pytest.raises(exc, match=match):
        torch.ops.lt8.int8_linear(*make_args(device), None, 6.0)


@pytest.mark.parametrize("threshold", [-1.0, float("nan")])
def test_bad_threshold(device, threshold):
    x = torch.zeros(2, 8, device=device)
    with pytest.raises(ValueError, match="threshold"):
        torch.ops.lt8.quantize_rows(x, threshold)


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize(
    "M,K,N",
    [(1, 4096, 512), (7, 1024, 300), (16, 256, 64), (17, 512, 130), (64, 33, 70), (300, 4097, 40)],
)
def test_cuda_matches_cpu_bit_for_bit(rng, dtype, M, K, N):
    """The CUDA kernels round exactly like the CPU ones (no FMA contraction in the epilogues),
    on the small-M GEMV path, the tiled GEMM path and the odd-K fallbacks alike."""
    from conftest import require_cuda

    require_cuda()
    _, CB, SCB = weight(rng, N, K, "cpu")
    bias = torch.from_numpy(rng.standard_normal(N).astype(np.float32)).to(dtype)
    x = activations(rng, (M, K), 6.0, n_outlier_cols=5, dtype=dtype)
    for threshold in (0.0, 6.0):
        cpu = torch.ops.lt8.int8_linear(x, CB, SCB, bias, threshold)
        gpu = torch.ops.lt8.int8_linear(x.cuda(), CB.cuda(), SCB.cuda(), bias.cuda(), threshold)
        assert torch.equal(cpu, gpu.cpu()), (
            f"threshold={threshold}: max diff {(cpu.float() - gpu.cpu().float()).abs().max()}"
        )
        q_cpu = torch.ops.lt8.quantize_rows(x, threshold)
        q_gpu = torch.ops.lt8.quantize_rows(x.cuda(), threshold)
        for a, b in zip(q_cpu, q_gpu):
            assert torch.equal(a, b.cpu())
    g = torch.from_numpy(rng.standard_normal((M, N)).astype(np.float32)).to(dtype)
    assert torch.equal(
        torch.ops.lt8.int8_linear_grad_input(g, CB, SCB),
        torch.ops.lt8.int8_linear_grad_input(g.cuda(), CB.cuda(), SCB.cuda()).cpu(),
    )
