"""The fused op's paths for many outlier columns on CUDA (more than 64): the tensor-core outlier
GEMM (M > 16, float16/bfloat16) and the dense-outlier GEMV (M <= 16, every dtype), against the
float64 reference of LLM.int8(); and bit-identical to the CPU up to 64 outlier columns (where
the exact epilogues still run). docs/NUMERICS.md states the rule."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import require_cuda
from reference import linear_ref, outlier_magnitude_ref, outlier_mask_ref

import lt8.torch  # noqa: F401  (registers torch.ops.lt8)

THRESHOLD = 6.0
EXACT_MAX = 64  # outlier columns up to which the GPU's epilogue is the CPU's, bit for bit
DTYPES = {"f16": torch.float16, "bf16": torch.bfloat16}


def inputs_with_outliers(rng, M: int, K: int, n_out: int, dtype) -> tuple[torch.Tensor, np.ndarray]:
    """N(0,1) activations clipped below the threshold, with exactly n_out outlier columns (one
    entry of magnitude >= threshold in each, in a random row)."""
    x = np.clip(rng.standard_normal((M, K)), -0.9 * THRESHOLD, 0.9 * THRESHOLD)
    cols = rng.choice(K, size=n_out, replace=False)
    rows = rng.integers(0, M, size=n_out)
    x[rows, cols] = rng.choice([-1.0, 1.0], size=n_out) * rng.uniform(
        THRESHOLD, 3 * THRESHOLD, n_out
    )
    t = torch.from_numpy(x.astype(np.float32)).to(dtype)
    return t, np.sort(cols)


def reference(x: torch.Tensor, CB: torch.Tensor, SCB: torch.Tensor, bias: torch.Tensor):
    """float64 LLM.int8() (tests/reference.py), the magnitude sum that bounds float32 rounding of
    the outlier terms, and the number of outlier columns."""
    args = (x.double().numpy(), CB.numpy(), SCB.numpy())
    ref = linear_ref(*args, bias.double().numpy(), THRESHOLD)
    count = int(outlier_mask_ref(args[0], THRESHOLD).sum())
    return ref, outlier_magnitude_ref(*args, THRESHOLD), count


def weight(rng, N, K):
    W = torch.from_numpy(rng.standard_normal((N, K)).astype(np.float32) * 0.05)
    CB, SCB, _ = torch.ops.lt8.quantize_rows(W, 0.0)
    return CB, SCB


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", list(DTYPES.values()), ids=list(DTYPES))
@pytest.mark.parametrize(
    "M,K,N,n_out",
    [
        (130, 300, 200, 65),  # one over the exact path's limit, ragged tiles everywhere
        (64, 512, 256, 200),
        (33, 1000, 130, 1000),  # every column an outlier column
        (257, 4096, 384, 4096),
        (300, 2048, 520, 1500),  # several tiles along M, N and k on every GEMM kernel
        (48, 96, 40, 70),
        # wide inputs (K >= 12288): on Hopper CUTLASS's int8 GEMM, which stands aside (and the
        # quantizer leaves the int8 operand unwritten) when every column is an outlier column
        (40, 12288, 72, 12288),
        (40, 12288, 72, 500),
        # M <= 16: the decode path's dense-outlier GEMV (K % 16 == 0) or, for odd K, the
        # large-batch path
        (1, 4096, 384, 4096),
        (5, 1024, 200, 300),
        (16, 2048, 130, 65),
        (16, 512, 96, 512),
        (9, 520, 70, 100),
        (3, 300, 50, 100),
    ],
)
def test_many_outliers_match_reference(rng, dtype, M, K, N, n_out):
    require_cuda()
    x, _ = inputs_with_outliers(rng, M, K, n_out, dtype)
    CB, SCB = weight(rng, N, K)
    bias = torch.from_numpy(rng.standard_normal(N).astype(np.float32)).to(dtype)
    ref, mag, count = reference(x, CB, SCB, bias)
    assert count == n_out
    out = torch.ops.lt8.int8_linear(x.cuda(), CB.cuda(), SCB.cuda(), bias.cuda(), THRESHOLD)
    got = out.cpu().double().numpy()
    # The int8 part is exact up to its float32 dequant; the outlier terms carry float32 sums of
    # n_out products (any order) and the output one rounding to the dtype.
    eps_out = {torch.float16: 2.0**-11, torch.bfloat16: 2.0**-8}[dtype]
    # (float32 dequant of the int8 part: a few roundings relative to its magnitude, at most
    # |ref| + mag + |bias|; no int8 step is forgiven: the reference quantizer is the kernel's)
    regular_scale = np.abs(ref) + mag + np.abs(bias.double().numpy())[None, :]
    bound = eps_out * np.abs(ref) + (n_out + 4) * 2.0**-23 * mag + 2.0**-20 * regular_scale
    bound += 2.0**-24  # the output dtype's subnormal spacing
    err = np.abs(got - ref)
    assert np.all(err <= bound + 1e-30), f"max excess {np.max(err - bound):.3g}"


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", list(DTYPES.values()), ids=list(DTYPES))
@pytest.mark.parametrize("M", [96, 12, 2])
def test_exact_path_up_to_64_outlier_columns(rng, dtype, M):
    """At 64 outlier columns the CUDA epilogues are still the CPU's (bit for bit); at 65 the
    many-outlier paths take over and agree within float32 rounding of the outlier sums."""
    require_cuda()
    K, N = 512, 160
    CB, SCB = weight(rng, N, K)
    bias = torch.from_numpy(rng.standard_normal(N).astype(np.float32)).to(dtype)
    for n_out in (EXACT_MAX, EXACT_MAX + 1):
        x, _ = inputs_with_outliers(rng, M, K, n_out, dtype)
        cpu = torch.ops.lt8.int8_linear(x, CB, SCB, bias, THRESHOLD)
        gpu = torch.ops.lt8.int8_linear(x.cuda(), CB.cuda(), SCB.cuda(), bias.cuda(), THRESHOLD)
        if n_out <= EXACT_MAX:
            assert torch.equal(cpu, gpu.cpu())
        else:
            ref, mag, _ = reference(x, CB, SCB, bias)
            eps_out = {torch.float16: 2.0**-11, torch.bfloat16: 2.0**-8}[dtype]
            bound = 2 * eps_out * np.abs(ref) + (n_out + 4) * 2.0**-23 * mag + 1e-6
            diff = np.abs(gpu.cpu().double().numpy() - cpu.double().numpy())
            assert np.all(diff <= bound)


@pytest.mark.cuda
def test_tensor_core_path_in_cuda_graph_and_jax(rng):
    """The outlier count stays on the device: a captured graph replays correctly when the count
    changes between replays, and JAX on the GPU gives the same bits as torch."""
    require_cuda()
    M, K, N = 64, 256, 128
    CB, SCB = weight(rng, N, K)
    CBc, SCBc = CB.cuda(), SCB.cuda()
    bias = torch.zeros(N, dtype=torch.float16, device="cuda")
    x_few, _ = inputs_with_outliers(rng, M, K, 3, torch.float16)
    x_many, _ = inputs_with_outliers(rng, M, K, 200, torch.float16)
    static = x_few.cuda().clone()
    torch.ops.lt8.int8_linear(static, CBc, SCBc, bias, THRESHOLD)  # warm-up outside capture
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        out = torch.ops.lt8.int8_linear(static, CBc, SCBc, bias, THRESHOLD)
    for x in (x_many, x_few, x_many):
        static.copy_(x.cuda())
        g.replay()
        eager = torch.ops.lt8.int8_linear(x.cuda(), CBc, SCBc, bias, THRESHOLD)
        assert torch.equal(out, eager)

    import jax
    import jax.numpy as jnp

    import lt8.jax as lj

    gpu = jax.devices("gpu")[0]
    y = jax.jit(lambda a, b, c, d: lj.linear(a, b, c, d, threshold=THRESHOLD))(
        jax.device_put(jnp.asarray(x_many.numpy()), gpu),
        jax.device_put(jnp.asarray(CB.numpy()), gpu),
        jax.device_put(jnp.asarray(SCB.numpy()), gpu),
        jax.device_put(jnp.zeros((N,), jnp.float16), gpu),
    )
    eager = torch.ops.lt8.int8_linear(x_many.cuda(), CBc, SCBc, bias, THRESHOLD)
    np.testing.assert_array_equal(np.asarray(y), eager.cpu().numpy())
