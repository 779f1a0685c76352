"""The CPU int8 GEMM and row kernels (cuda/cpu_simd/): every SIMD variant the CPU can run,
forced through LT8_CPU_ISA, against an exact numpy int64 reference on awkward shapes and extreme
values, and against the scalar variant bit for bit; results independent of the thread count."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from lt8 import _native

C = _native.C
CPU = (_native.DEVICE_CPU, 0, -1)


def _cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("flags", "Features")):  # x86, Arm
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


_FLAGS = _cpu_flags()
# Variant -> the /proc/cpuinfo flags it needs (forcing one the CPU lacks would silently run a
# lower one, so such variants are skipped instead).
VARIANTS = {
    "scalar": set(),
    "neondot": {"asimddp"},
    "avx2": {"avx2", "fma", "f16c"},
    "avxvnni": {"avx2", "fma", "f16c", "avx_vnni"},
    "avx512vnni": {"avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni"},
}
VARIANTS["amx"] = VARIANTS["avx512vnni"] | {"amx_tile", "amx_int8"}


@pytest.fixture(params=list(VARIANTS))
def isa(request, monkeypatch):
    if not VARIANTS[request.param] <= _FLAGS:
        pytest.skip(f"this CPU has no {request.param}")
    monkeypatch.setenv("LT8_CPU_ISA", request.param)
    if request.param == "amx" and C.cpu_isa() != "amx":
        # The CPU has AMX but the OS refused this process its tile state (arch_prctl).
        pytest.skip(f"AMX present but not usable here (lt8 runs {C.cpu_isa()})")
    return request.param


def gemm(A: np.ndarray, B: np.ndarray) -> np.ndarray:
    """lt8's CPU int8_gemm: A (M, K) int8 @ B (N, K) int8 ^T -> (M, N) int32."""
    A, B = np.ascontiguousarray(A, np.int8), np.ascontiguousarray(B, np.int8)
    M, K = A.shape
    N = B.shape[0]
    out = np.full((M, N), 0x5A5A5A5A, np.int32)  # garbage: every entry must be written
    C.int8_gemm(*CPU, A.ctypes.data, B.ctypes.data, M, N, K, out.ctypes.data)
    return out


def reference(A: np.ndarray, B: np.ndarray) -> np.ndarray:
    return A.astype(np.int64) @ B.astype(np.int64).T


SHAPES = [
    (1, 1, 1),
    (1, 7, 1),
    (5, 3, 2),
    (3, 5, 3),
    (2, 9, 4),
    (7, 13, 31),
    (1, 33, 63),
    (4, 4, 64),
    (3, 5, 65),
    (17, 37, 127),
    (13, 70, 257),
    (1, 129, 1000),
    (16, 33, 4099),
    (37, 67, 300),
]


@pytest.mark.parametrize("M,N,K", SHAPES)
def test_gemm_exact_on_odd_shapes(isa, rng, M, N, K):
    A = rng.integers(-128, 128, (M, K), dtype=np.int8)
    B = rng.integers(-128, 128, (N, K), dtype=np.int8)
    np.testing.assert_array_equal(gemm(A, B), reference(A, B))


@pytest.mark.parametrize("a,b", [(-128, -128), (-128, 127), (127, -128), (127, 127), (-1, -128)])
@pytest.mark.parametrize("K", [1, 3, 64, 4096, 5003])
def test_gemm_exact_at_extreme_values(isa, rng, a, b, K):
    # All-extreme rows reach the largest |sums| (where vpmaddubsw would saturate, and where the
    # VNNI variants' +128 / -128 * rowsum correction is at its largest); one row mixes in noise.
    A = np.full((3, K), a, np.int8)
    B = np.full((5, K), b, np.int8)
    A[1] = rng.integers(-128, 128, K, dtype=np.int8)
    B[2, ::2] = -B[2, ::2] if b != -128 else 127
    np.testing.assert_array_equal(gemm(A, B), reference(A, B))


@pytest.mark.parametrize("a,b", [(-128, -128), (127, -128), (-128, 127)])
@pytest.mark.parametrize("M,N,K", [(16, 16, 64), (33, 47, 5003), (64, 96, 4096), (70, 33, 129)])
def test_gemm_exact_at_extreme_values_many_rows(isa, rng, a, b, M, N, K):
    # At least 16 rows, so that the AMX variant runs (fewer take AVX-512 VNNI), with rows and
    # columns past its 16 x 16 tiles and 32-row groups and K past its 64-byte steps.
    A = np.full((M, K), a, np.int8)
    B = np.full((N, K), b, np.int8)
    A[M // 2] = rng.integers(-128, 128, K, dtype=np.int8)
    B[N - 1] = rng.integers(-128, 128, K, dtype=np.int8)
    np.testing.assert_array_equal(gemm(A, B), reference(A, B))


# lt8's quantized activations lie in [-127, 127]: for such an A the AVX2 variant multiplies with
# vpmaddubsw (|B| times A carrying B's sign), for an A holding a -128 with vpmaddwd on int16.
# (The last two: K a multiple of 32, the second across the AVX2 variant's 4096-wide K blocks.)
@pytest.mark.parametrize("M,N,K", SHAPES + [(9, 70, 384), (5, 33, 8192), (40, 33, 4099)])
def test_gemm_exact_with_quantized_range_a(isa, rng, M, N, K):
    A = rng.integers(-127, 128, (M, K), dtype=np.int8)
    B = rng.integers(-128, 128, (N, K), dtype=np.int8)
    np.testing.assert_array_equal(gemm(A, B), reference(A, B))


@pytest.mark.parametrize("offset", [1, 3])
def test_gemm_exact_with_unaligned_a(isa, rng, offset):
    # A from an address that is no multiple of anything (the variants copy or read it in place).
    M, N, K = 6, 20, 96
    buf = np.zeros(M * K + offset, np.int8)
    A = buf[offset:].reshape(M, K)
    A[...] = rng.integers(-127, 128, (M, K), dtype=np.int8)
    B = rng.integers(-128, 128, (N, K), dtype=np.int8)
    out = np.full((M, N), 0x5A5A5A5A, np.int32)
    C.int8_gemm(*CPU, A.ctypes.data, B.ctypes.data, M, N, K, out.ctypes.data)
    np.testing.assert_array_equal(out, reference(A, B))


@pytest.mark.parametrize("a,b", [(-127, -128), (127, -128), (-127, 127), (127, 127), (-127, -127)])
@pytest.mark.parametrize("K", [2, 33, 4096, 5003])
@pytest.mark.parametrize("M", [4, 12])
def test_gemm_exact_at_extreme_values_quantized_range_a(isa, rng, a, b, K, M):
    # The largest vpmaddubsw pair sums: 2 * 128 * 127 with B = -128 (|B| = 128 unsigned), just
    # under int16's limit; one row of each operand mixes in noise, one B row alternates signs.
    A = np.full((M, K), a, np.int8)
    B = np.full((5, K), b, np.int8)
    A[1] = rng.integers(-127, 128, K, dtype=np.int8)
    B[2] = rng.integers(-128, 128, K, dtype=np.int8)
    B[3, ::2] = 127
    np.testing.assert_array_equal(gemm(A, B), reference(A, B))


def test_gemm_one_int8_min_in_a_stays_exact(isa, rng):
    # A single -128 anywhere in A sends the AVX2 variant to its int16 kernel: still exact.
    A = rng.integers(-127, 128, (37, 300), dtype=np.int8)
    B = rng.integers(-128, 128, (67, 300), dtype=np.int8)
    A[36, 299] = -128
    np.testing.assert_array_equal(gemm(A, B), reference(A, B))


def test_gemm_empty_k_writes_zeros(isa):
    A = np.zeros((3, 0), np.int8)
    B = np.zeros((4, 0), np.int8)
    np.testing.assert_array_equal(gemm(A, B), np.zeros((3, 4), np.int32))


@pytest.mark.parametrize("threads", ["1", "2", "3", "8"])
def test_gemm_independent_of_thread_count(isa, rng, monkeypatch, threads):
    A = rng.integers(-128, 128, (77, 600), dtype=np.int8)
    B = rng.integers(-128, 128, (131, 600), dtype=np.int8)
    monkeypatch.setenv("OMP_NUM_THREADS", threads)
    C.set_cpu_threads(0)  # the environment decides (torch's frontend may have pinned a count)
    np.testing.assert_array_equal(gemm(A, B), reference(A, B))


# --- the row kernels: the SIMD variants against the scalar one, bit for bit --------------------

DTYPES = {"f32": (np.float32, _native.DTYPE_F32), "f16": (np.float16, _native.DTYPE_F16)}


def _special_rows(rng, M: int, K: int, dtype) -> np.ndarray:
    """Normal values, exact quantization ties (absmax 127, halves), zeros of both signs,
    subnormals, huge values and non-finite entries."""
    x = (rng.standard_normal((M, K)) * 3).astype(np.float32)
    x[0] = np.floor(rng.standard_normal(K) * 30) + 0.5
    x[0, 0] = 127.0
    specials = np.array([0.0, -0.0, np.nan, np.inf, -np.inf, 1e-40, 6.0, -6.0, 65504.0], np.float32)
    picks = rng.random((M, K)) < 0.02
    picks[M // 2 :: 2] = False  # some rows left clean
    x[picks] = rng.choice(specials, picks.sum())
    with np.errstate(over="ignore"):
        return x.astype(dtype)


def _quantize(x: np.ndarray, dtype_code: int, threshold: float):
    M, K = x.shape
    q = np.empty((M, K), np.int8)
    scale = np.empty(M, np.float32)
    mask = np.empty(K, np.uint8)
    C.quantize_rows(
        *CPU,
        dtype_code,
        x.ctypes.data,
        M,
        K,
        threshold,
        q.ctypes.data,
        scale.ctypes.data,
        mask.ctypes.data,
    )
    return q, scale, mask


@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("threshold", [0.0, 1.5, 6.0])
@pytest.mark.parametrize("M,K", [(1, 1), (3, 7), (9, 64), (5, 131), (33, 1000)])
def test_quantize_rows_matches_scalar_bit_for_bit(isa, rng, monkeypatch, dtype, threshold, M, K):
    np_dtype, code = DTYPES[dtype]
    x = np.ascontiguousarray(_special_rows(rng, M, K, np_dtype))
    got = _quantize(x, code, threshold)
    monkeypatch.setenv("LT8_CPU_ISA", "scalar")
    want = _quantize(x, code, threshold)
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_array_equal(got[1].view(np.uint32), want[1].view(np.uint32))
    np.testing.assert_array_equal(got[2], want[2])


def _linear(x, code, CB, SCB, bias, threshold):
    M, K = x.shape
    N = CB.shape[0]
    out = np.empty((M, N), x.dtype)
    ws_bytes = C.linear_workspace_size(M, N, K, code, threshold, CPU[0])
    ws = np.empty(max(ws_bytes, 1), np.uint8)
    bias_ptr = 0 if bias is None else bias.ctypes.data
    C.int8_linear(
        *CPU,
        code,
        x.ctypes.data,
        CB.ctypes.data,
        SCB.ctypes.data,
        _native.DTYPE_F32,
        bias_ptr,
        M,
        N,
        K,
        threshold,
        out.ctypes.data,
        ws.ctypes.data,
        ws_bytes,
    )
    return out


@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("threshold", [0.0, 1.5, 6.0])
@pytest.mark.parametrize("M,N,K", [(1, 5, 3), (3, 17, 64), (16, 70, 131), (37, 45, 1000)])
def test_linear_matches_scalar_bit_for_bit(isa, rng, monkeypatch, dtype, threshold, M, N, K):
    # The fused op (quantize, GEMM, epilogue with outlier columns and bias, fp16 stores) on
    # every variant against the scalar one: bitwise, NaN compared as NaN.
    np_dtype, code = DTYPES[dtype]
    x = np.ascontiguousarray(_special_rows(rng, M, K, np_dtype))
    CB = rng.integers(-127, 128, (N, K), dtype=np.int8)
    SCB = (np.abs(rng.standard_normal(N)) + 0.01).astype(np.float32)
    bias = rng.standard_normal(N).astype(np.float32) if M % 2 else None
    got = _linear(x, code, CB, SCB, bias, threshold)
    monkeypatch.setenv("LT8_CPU_ISA", "scalar")
    want = _linear(x, code, CB, SCB, bias, threshold)
    np.testing.assert_array_equal(got, want)


def _weight_linear(x, code, CB, SCB, bias):
    M, K = x.shape
    N = CB.shape[0]
    out = np.full((M, N), np.nan, x.dtype)
    bias_ptr = 0 if bias is None else bias.ctypes.data
    C.int8_weight_linear(
        *CPU, code, x.ctypes.data, CB.ctypes.data, SCB.ctypes.data, _native.DTYPE_F32,
        bias_ptr, M, N, K, out.ctypes.data,
    )  # fmt: skip
    return out


def _grad_input(g, code, CB, SCB):
    M, N = g.shape
    K = CB.shape[1]
    gx = np.full((M, K), np.nan, g.dtype)
    C.int8_linear_grad_input(
        *CPU, code, g.ctypes.data, CB.ctypes.data, SCB.ctypes.data, M, N, K, gx.ctypes.data
    )
    return gx


# Tails of every blocking: M not a multiple of 4, N not of 8, K not of 8 and K over the input
# gradient's 2048-column blocks.
FLOAT_WEIGHT_SHAPES = [(1, 5, 3), (3, 17, 64), (5, 70, 131), (37, 45, 1000), (6, 9, 2100)]


@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("M,N,K", FLOAT_WEIGHT_SHAPES)
def test_weight_only_and_grad_input_match_scalar_bit_for_bit(isa, rng, monkeypatch, dtype, M, N, K):
    # The float loops over the dequantized weight (AVX2: 8 sums side by side, each in the
    # scalar order) against the scalar variant: bitwise, NaN compared as NaN; and close to a
    # float64 reference where finite.
    np_dtype, code = DTYPES[dtype]
    x = np.ascontiguousarray(_special_rows(rng, M, K, np_dtype))
    g = np.ascontiguousarray(_special_rows(rng, M, N, np_dtype))
    CB = rng.integers(-127, 128, (N, K), dtype=np.int8)
    SCB = (np.abs(rng.standard_normal(N)) + 0.01).astype(np.float32)
    bias = rng.standard_normal(N).astype(np.float32) if M % 2 else None
    got = _weight_linear(x, code, CB, SCB, bias), _grad_input(g, code, CB, SCB)
    monkeypatch.setenv("LT8_CPU_ISA", "scalar")
    want = _weight_linear(x, code, CB, SCB, bias), _grad_input(g, code, CB, SCB)
    for a, b in zip(got, want):
        np.testing.assert_array_equal(a, b)
    W = CB.astype(np.float64) * (SCB.astype(np.float64) / 127)[:, None]
    clean_x = np.isfinite(x.astype(np.float64)).all(axis=1) & (
        np.abs(x.astype(np.float64)) < 1e4
    ).all(axis=1)
    ref = x.astype(np.float64)[clean_x] @ W.T + (0 if bias is None else bias)
    np.testing.assert_allclose(
        got[0][clean_x].astype(np.float64), ref, rtol=2e-2, atol=2e-2 * np.abs(ref).max(initial=1)
    )


# --- the thread pool ---------------------------------------------------------------------------


def test_thread_count_follows_setter_env_and_affinity(monkeypatch):
    try:
        C.set_cpu_threads(3)
        assert C.cpu_threads() == 3
        C.set_cpu_threads(0)
        monkeypatch.setenv("OMP_NUM_THREADS", "5")
        assert C.cpu_threads() == 5
        monkeypatch.delenv("OMP_NUM_THREADS")
        assert C.cpu_threads() == len(os.sched_getaffinity(0))
    finally:
        C.set_cpu_threads(0)


@pytest.mark.parametrize("threads", [1, 2, 7])
def test_gemm_independent_of_set_cpu_threads(isa, rng, threads):
    A = rng.integers(-128, 128, (23, 333), dtype=np.int8)
    B = rng.integers(-128, 128, (200, 333), dtype=np.int8)
    try:
        C.set_cpu_threads(threads)
        np.testing.assert_array_equal(gemm(A, B), reference(A, B))
    finally:
        C.set_cpu_threads(0)


@pytest.mark.parametrize("threads", ["pool", "openmp"])
def test_pool_survives_fork_and_never_blocks_exit(threads):
    # Workers are started by a threaded GEMM; a fork child (which has none of them) must still
    # compute, and the parent must exit promptly with its workers asleep. "openmp": the torch
    # frontend's setting (the kernels' threads in OpenMP regions; the child uses the pool).
    code = f"""
import os, numpy as np
from lt8 import _native
C = _native.C
C.use_openmp_threads({threads == "openmp"})
def gemm(A, B):
    out = np.empty((A.shape[0], B.shape[0]), np.int32)
    C.int8_gemm(_native.DEVICE_CPU, 0, -1, A.ctypes.data, B.ctypes.data, A.shape[0], B.shape[0],
                A.shape[1], out.ctypes.data)
    return out
C.set_cpu_threads(4)
rng = np.random.default_rng(0)
A = rng.integers(-128, 128, (64, 512), dtype=np.int8)
B = rng.integers(-128, 128, (256, 512), dtype=np.int8)
ref = A.astype(np.int64) @ B.astype(np.int64).T
assert (gemm(A, B) == ref).all()
pid = os.fork()
if pid == 0:
    os._exit(0 if (gemm(A, B) == ref).all() else 3)
_, status = os.waitpid(pid, 0)
assert os.waitstatus_to_exitcode(status) == 0, status
assert (gemm(A, B) == ref).all()
print("ok")
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "ok", (r.returncode, r.stderr[-2000:])


def test_cpu_isa_names_the_level_in_use(monkeypatch):
    monkeypatch.delenv("LT8_CPU_ISA", raising=False)
    detected = C.cpu_isa()
    assert detected in VARIANTS
    # Only levels this CPU's flags allow (AMX may still be refused by the OS: one level down).
    assert VARIANTS[detected] <= _FLAGS
    monkeypatch.setenv("LT8_CPU_ISA", "scalar")
    assert C.cpu_isa() == "scalar"
    monkeypatch.setenv("LT8_CPU_ISA", "amx")  # a request above the CPU's gives what it has
    assert C.cpu_isa() == detected


@pytest.mark.parametrize("panels", ["0", "1"])
@pytest.mark.parametrize("M,N,K", [(32, 128, 4), (45, 131, 131), (96, 130, 2050), (64, 256, 384)])
def test_avx2_panels_and_dot_tiles_agree(monkeypatch, rng, panels, M, N, K):
    # AVX2 with quantized-range A: tasks of >= 32 rows take B packed in panels unless
    # LT8_AVX2_PANELS=0; both must give the exact sums (K blocks of 2048, tails of N and K).
    # One thread and >= 4 blocks of 32 columns, so that no task is cut to fewer rows.
    if not VARIANTS["avx2"] <= _FLAGS:
        pytest.skip("this CPU has no avx2")
    monkeypatch.setenv("LT8_CPU_ISA", "avx2")
    monkeypatch.setenv("LT8_AVX2_PANELS", panels)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    C.set_cpu_threads(0)  # the environment decides
    A = rng.integers(-127, 128, (M, K), dtype=np.int8)
    B = rng.integers(-128, 128, (N, K), dtype=np.int8)
    np.testing.assert_array_equal(gemm(A, B), reference(A, B))
