"""The CUDA fused op has three engines: the small-batch GEMV (M <= 16), cuBLASLt's int8 tensor
cores followed by lt8's epilogue, and lt8's own dp4a GEMM (the fallback when cuBLASLt is
missing or declines a problem). Integer accumulation is exact and every epilogue rounds in the
CPU's order, so all of them must agree with the CPU kernels bit for bit."""

from __future__ import annotations

import contextlib

import numpy as np
import pytest
import torch
from reference import linear_error_bound, linear_ref, outlier_magnitude_ref
from test_torch_ops import DTYPE_IDS, DTYPES, REL_EPS, activations, as_f64, weight

import lt8.torch  # noqa: F401  (registers torch.ops.lt8)
from lt8._native import C

pytestmark = pytest.mark.cuda


@pytest.fixture(autouse=True)
def _cuda():
    from conftest import require_cuda

    require_cuda()


@contextlib.contextmanager
def cublaslt(enabled: bool):
    C.set_cublaslt_enabled(enabled)
    try:
        yield
    finally:
        C.set_cublaslt_enabled(True)


def test_cublaslt_is_found_next_to_torch():
    """torch's CUDA build ships libcublasLt: lt8 must find it (else large batches run on dp4a)."""
    assert C.cublaslt_available()


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize(
    "M,K,N,n_outliers",
    [
        (17, 512, 130, 5),
        (33, 1024, 256, 0),
        (64, 4096, 512, 3),
        (300, 256, 72, 70),
        (129, 4100, 64, 2),
        (40, 36, 33, 1),
        (20, 4097, 40, 4),
    ],
)
def test_engines_agree_with_cpu(rng, dtype, M, K, N, n_outliers):
    """cuBLASLt path, dp4a path and CPU: identical outputs (up to 64 outlier columns; 70 > 64 takes
    the tensor-core outlier path in 16-bit dtypes), K not a multiple of 4 (cuBLASLt declines) and
    tails."""
    _, CB, SCB = weight(rng, N, K, "cpu")
    bias = torch.from_numpy(rng.standard_normal(N).astype(np.float32)).to(dtype)
    x = activations(rng, (M, K), 6.0, n_outlier_cols=n_outliers, dtype=dtype)
    args_gpu = (x.cuda(), CB.cuda(), SCB.cuda(), bias.cuda())
    for threshold in (0.0, 6.0):
        cpu = torch.ops.lt8.int8_linear(x, CB, SCB, bias, threshold)
        with cublaslt(True):
            tc = torch.ops.lt8.int8_linear(*args_gpu, threshold).cpu()
        with cublaslt(False):
            dp4a = torch.ops.lt8.int8_linear(*args_gpu, threshold).cpu()
        if threshold > 0 and n_outliers > 64 and dtype != torch.float32:
            # More than 64 outlier columns in float16/bfloat16: the cuBLASLt path sums the outlier
            # terms on tensor cores (docs/NUMERICS.md): float32 rounding of those sums, in
            # another order, then the output's own rounding.
            mag = outlier_magnitude_ref(as_f64(x), CB.numpy(), SCB.numpy(), threshold)
            bound = REL_EPS[dtype] * np.abs(as_f64(cpu)) + (n_outliers + 4) * 2.0**-23 * mag
            assert np.all(np.abs(as_f64(tc) - as_f64(cpu)) <= bound), "cuBLASLt path, many outliers"
        else:
            assert torch.equal(cpu, tc), f"cuBLASLt path, threshold={threshold}"
        assert torch.equal(cpu, dp4a), f"dp4a path, threshold={threshold}"
    # And the shared result is LLM.int8() itself: the reference's int8 rows exactly, then
    # float32 accumulation and one rounding to the dtype (a bound from the reference alone).
    ref = linear_ref(as_f64(x), as_f64(CB), as_f64(SCB), as_f64(bias), 6.0)
    q = torch.ops.lt8.quantize_rows(x.cuda(), 6.0)[0].cpu()
    bound = linear_error_bound(
        as_f64(x), CB.numpy(), SCB.numpy(), ref, REL_EPS[dtype] / 2, 0, 6.0, q.numpy()
    )
    assert np.all(np.abs(as_f64(cpu) - ref) <= bound)


@pytest.mark.parametrize("M,K,N", [(1, 64, 64), (40, 1024, 520), (513, 256, 1000), (8, 4, 4)])
def test_int8_gemm_engines_exact(rng, M, K, N):
    A = torch.from_numpy(rng.integers(-127, 128, (M, K), dtype=np.int8))
    B = torch.from_numpy(rng.integers(-127, 128, (N, K), dtype=np.int8))
    exact = torch.from_numpy(A.numpy().astype(np.int64) @ B.numpy().astype(np.int64).T)
    for enabled in (True, False):
        with cublaslt(enabled):
            C_ = torch.ops.lt8.int8_gemm(A.cuda(), B.cuda()).cpu()
        assert torch.equal(C_.to(torch.int64), exact), f"cublaslt={enabled}"


@pytest.mark.parametrize("offset", [1, 4])
def test_offset_pointers_still_exact(rng, offset):
    """Contiguous views that start at odd byte offsets reach the GEMM engines with less than
    256-byte alignment (cuBLASLt takes 4-byte aligned ones, lt8's GEMM the rest)."""
    M, K, N = 48, 512, 96
    base = torch.from_numpy(rng.integers(-127, 128, (N * K + offset,), dtype=np.int8)).cuda()
    CB = base[offset:].view(N, K)
    A = base[offset : offset + 8 * K].view(8, K)
    exact = A.cpu().to(torch.int64) @ CB.cpu().to(torch.int64).T
    assert torch.equal(torch.ops.lt8.int8_gemm(A, CB).cpu().to(torch.int64), exact)
    SCB = torch.rand(N, device="cuda") + 0.5
    x = activations(rng, (M, K), 6.0, n_outlier_cols=2, dtype=torch.float16).cuda()
    out = torch.ops.lt8.int8_linear(x, CB, SCB, None, 6.0).cpu()
    cpu = torch.ops.lt8.int8_linear(x.cpu(), CB.cpu(), SCB.cpu(), None, 6.0)
    assert torch.equal(out, cpu)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize(
    "M,K,N,n_outliers",
    [
        (1, 2080, 70, 3),
        (5, 4096, 33, 40),
        (9, 2080, 70, 0),
        (12, 512, 1000, 35),
        (16, 16 * 129, 40, 5),
        # The streaming dp4a GEMV's largest M * K (64 KiB) at M = 1 and 2, M = 3 just under it,
        # and the most outlier columns the exact epilogue takes (64; above,
        # test_outlier_tensor_cores).
        (1, 32768, 40, 2),
        (2, 32768, 40, 2),
        (3, 10912, 66, 3),
        (3, 21840, 66, 3),
        (1, 8208, 300, 64),
        # The streaming GEMV splits K over 1, 2 or 4 warps per column group by N (on an H200;
        # 8 for every N above).
        (1, 2048, 6400, 3),
        (2, 1024, 4000, 5),
        (1, 4096, 2000, 2),
        # The preparation kernel's 3 and 4 steps of 8192 columns per thread block, all 16 rows.
        (2, 24576, 50, 7),
        (16, 28672, 24, 20),
    ],
)
def test_decode_gemvs_agree_with_cpu(rng, dtype, M, K, N, n_outliers):
    """The decode path (M <= 16, K % 16 == 0): fused preparation kernel, then the dp4a GEMV
    (M < 4) or the mma.sync GEMV (M >= 4; scripts/gpu_check.sh's gemv stage also runs this with
    each engine and tile count forced); chunk tails in K, N not a multiple of the block's
    columns, more outlier columns than one epilogue stage."""
    _, CB, SCB = weight(rng, N, K, "cpu")
    bias = torch.from_numpy(rng.standard_normal(N).astype(np.float32)).to(dtype)
    x = activations(rng, (M, K), 6.0, n_outlier_cols=n_outliers, dtype=dtype)
    for threshold in (0.0, 6.0):
        cpu = torch.ops.lt8.int8_linear(x, CB, SCB, bias, threshold)
        gpu = torch.ops.lt8.int8_linear(
            x.cuda(), CB.cuda(), SCB.cuda(), bias.cuda(), threshold
        ).cpu()
        assert torch.equal(cpu, gpu), f"threshold={threshold}"
