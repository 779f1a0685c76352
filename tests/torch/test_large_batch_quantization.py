"""The fused op's quantization stage past the GEMV's batch sizes on CUDA (outlier mask,
compaction, row quantization: cuda/quantize/quantize.cu) gives the CPU's bits: the whole op is
compared with the CPU kernel (an independent implementation of the same rules) up to 64 outlier
columns, where every GPU epilogue is exact. Shapes cover K not a multiple of 32, every row
quantizer (warp per row, register rows, block per row past 16384) and rows holding NaN, inf and
values exactly at the threshold; a CUDA graph replays the stage with new activations."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import require_cuda

import lt8.torch  # noqa: F401  (registers torch.ops.lt8)

THRESHOLD = 6.0
DTYPES = {"f16": torch.float16, "bf16": torch.bfloat16}


def activations(rng, M: int, K: int, n_out: int, dtype) -> torch.Tensor:
    """N(0, 1), clipped below the threshold, with n_out outlier columns (one entry each, some
    exactly at the threshold) in random rows."""
    x = np.clip(rng.standard_normal((M, K)), -0.9 * THRESHOLD, 0.9 * THRESHOLD)
    cols = rng.choice(K, size=n_out, replace=False)
    rows = rng.integers(0, M, size=n_out)
    mags = rng.uniform(THRESHOLD, 4 * THRESHOLD, n_out)
    mags[: n_out // 3] = THRESHOLD  # exactly at the threshold: an outlier
    x[rows, cols] = rng.choice([-1.0, 1.0], size=n_out) * mags
    return torch.from_numpy(x.astype(np.float32)).to(dtype)


def weight(rng, N: int, K: int):
    W = torch.from_numpy(rng.standard_normal((N, K)).astype(np.float32) * 0.05)
    CB, SCB, _ = torch.ops.lt8.quantize_rows(W, 0.0)
    return CB, SCB


def cpu_and_cuda(x, CB, SCB, bias):
    cpu = torch.ops.lt8.int8_linear(x, CB, SCB, bias, THRESHOLD)
    gpu = torch.ops.lt8.int8_linear(x.cuda(), CB.cuda(), SCB.cuda(), bias.cuda(), THRESHOLD)
    return cpu, gpu.cpu()


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", list(DTYPES.values()), ids=list(DTYPES))
@pytest.mark.parametrize(
    "M,K,N,n_out",
    [
        (17, 8, 24, 1),  # one 8-column group, first batch past the GEMV
        (40, 24, 15, 3),  # K % 32 != 0, N % 4 != 0 (the epilogue's one-column threads)
        (300, 1024, 41, 8),  # a warp per row
        (2048, 4096, 48, 8),  # Llama's q/k/v/gate/up input, rows in registers
        (64, 14336, 16, 40),  # Llama's down projection input
        (33, 16384, 8, 64),  # the largest K of the register kernel
        (20, 16392, 8, 10),  # past it: a block per row
        (100, 4096, 32, 0),  # no outlier column at all
    ],
)
def test_matches_cpu_bit_for_bit(rng, dtype, M, K, N, n_out):
    require_cuda()
    x = activations(rng, M, K, n_out, dtype)
    CB, SCB = weight(rng, N, K)
    bias = torch.from_numpy(rng.standard_normal(N).astype(np.float32)).to(dtype)
    cpu, gpu = cpu_and_cuda(x, CB, SCB, bias)
    assert torch.equal(cpu, gpu)


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", list(DTYPES.values()), ids=list(DTYPES))
def test_non_finite_rows_match_cpu(rng, dtype):
    """NaN is never an outlier and makes its row NaN; inf makes its column an outlier column."""
    require_cuda()
    M, K, N = 64, 4096, 32
    x = activations(rng, M, K, 5, dtype)
    x[3, 100] = float("nan")
    x[7, 2000] = float("inf")
    x[9, 4095] = float("-inf")
    CB, SCB = weight(rng, N, K)
    bias = torch.zeros(N, dtype=dtype)
    cpu, gpu = cpu_and_cuda(x, CB, SCB, bias)
    assert torch.equal(cpu.isnan(), gpu.isnan())
    assert torch.equal(torch.nan_to_num(cpu), torch.nan_to_num(gpu))
    assert gpu[3].isnan().all()


@pytest.mark.cuda
def test_replays_in_a_cuda_graph(rng):
    """The cooperative launch replays inside a CUDA graph with new activations each time."""
    require_cuda()
    M, K, N = 256, 4096, 64
    CB, SCB = weight(rng, N, K)
    CBc, SCBc = CB.cuda(), SCB.cuda()
    bias = torch.zeros(N, dtype=torch.float16, device="cuda")
    static = activations(rng, M, K, 4, torch.float16).cuda()
    torch.ops.lt8.int8_linear(static, CBc, SCBc, bias, THRESHOLD)  # warm-up outside capture
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        out = torch.ops.lt8.int8_linear(static, CBc, SCBc, bias, THRESHOLD)
    for n_out in (0, 30, 64, 7):
        x = activations(rng, M, K, n_out, torch.float16)
        static.copy_(x.cuda())
        g.replay()
        cpu = torch.ops.lt8.int8_linear(x, CB, SCB, bias.cpu(), THRESHOLD)
        assert torch.equal(out.cpu(), cpu)
