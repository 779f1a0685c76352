"""The extension module and the package surface: imports, info, build facts."""

from __future__ import annotations

import subprocess
import sys

import pytest

import lt8
from lt8 import _native


def run_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)


def test_import_lt8_imports_no_framework():
    r = run_python(
        "import sys, lt8; print(lt8.__version__); print('torch' in sys.modules, 'jax' in sys.modules)"
    )
    assert r.returncode == 0, r.stderr
    version, flags = r.stdout.split("\n")[:2]
    assert version == lt8.__version__
    assert flags == "False False"


@pytest.mark.parametrize(
    "first,second",
    [
        ("lt8._native", "torch"),
        ("torch", "lt8._native"),
        ("lt8._native", "jax"),
        ("jax", "lt8._native"),
    ],
)
def test_import_order_does_not_matter(first, second):
    # Regression: lt8._C once exported GNU-unique symbols that crashed a later `import torch`.
    pytest.importorskip(first if first != "lt8._native" else second)
    r = run_python(f"import {first}; import {second}; print('ok')")
    assert r.returncode == 0 and r.stdout.strip() == "ok", (r.returncode, r.stderr[-2000:])


def test_cli_info_reports_build_and_frontends():
    r = subprocess.run(
        [sys.executable, "-m", "lt8", "info"], capture_output=True, text=True, timeout=300
    )
    assert r.returncode == 0, r.stderr
    assert f"lt8 {lt8.__version__}" in r.stdout
    expected = "yes, for sm_" if _native.has_cuda() else "no (CPU-only build)"
    assert f"CUDA kernels built: {expected}" in r.stdout
    if _native.has_cuda():  # whether Hopper's CUTLASS GEMMs came with them
        sm90 = "yes" if _native.C.cutlass_sm90_built() else "no"
        assert f"Hopper outlier GEMM (CUTLASS, sm_90a): {sm90}" in r.stdout
    else:
        assert not _native.C.cutlass_sm90_built()  # no CUDA, no sm_90a code
    assert "lt8.torch:" in r.stdout and "lt8.jax:" in r.stdout


def test_build_facts_are_consistent():
    archs = lt8.cuda_archs()
    assert lt8.has_cuda() == bool(archs)
    assert all(a.isdigit() or a.rstrip("a").isdigit() for a in archs)


def test_linear_workspace_size_follows_the_call():
    """The fused op's scratch holds what that call can use: q, row scales, mask, indices and
    count always; the GPU's large-batch pieces (int32 result, cuBLASLt workspace) only for CUDA
    above 16 rows; the tensor-core outlier gather buffers (and, in builds with the CUTLASS sm_90a
    GEMMs, their float32 result and workspace) only for 16-bit x with outliers on."""
    size, C = _native.C.linear_workspace_size, _native.C
    f32, f16, bf16 = int(C.DType.float32), int(C.DType.float16), int(C.DType.bfloat16)
    cpu, cuda = int(C.Device.cpu), int(C.Device.cuda)
    M, N, K = 64, 96, 200
    base = M * K + 4 * M + K + 4 * K + 4
    assert base <= size(M, N, K, f16, 6.0, cpu) < base + 5 * 256  # alignment padding only
    assert size(4, N, K, f16, 6.0, cuda) == size(4, N, K, f16, 6.0, cpu)  # decode: no GPU extras
    gemm = size(M, N, K, f16, 0.0, cuda)
    assert gemm >= base + 4 * M * N  # the int32 result
    gather = 2 * (M + N) * ((K + 63) // 64 * 64)
    if C.cutlass_sm90_built():  # Hopper's CUTLASS GEMMs: float32 sums and their workspace
        gather += 4 * M * N + (1 << 20)
    for dt in (f16, bf16):
        assert gemm + gather <= size(M, N, K, dt, 6.0, cuda) < gemm + gather + 4 * 256
    assert size(M, N, K, f32, 6.0, cuda) == gemm  # float32 x never takes the tensor-core path
    with pytest.raises(ValueError, match="dtype"):
        size(M, N, K, 99, 6.0, cuda)
    with pytest.raises(ValueError, match="device"):
        size(M, N, K, f16, 6.0, 7)


def test_outlier_terms_workspace_size_follows_the_call():
    """add_outlier_terms' scratch: the compacted columns and the tensor-core gather buffers (plus,
    in builds with the CUTLASS sm_90a GEMM, its float32 result and 1 MiB of its workspace), only
    where that path can run (CUDA, 16-bit x); none on the CPU or for float32 x."""
    size, C = _native.C.outlier_terms_workspace_size, _native.C
    f32, f16, bf16 = int(C.DType.float32), int(C.DType.float16), int(C.DType.bfloat16)
    cpu, cuda = int(C.Device.cpu), int(C.Device.cuda)
    M, N, K = 70, 96, 200
    gather = 2 * (M + N) * ((K + 63) // 64 * 64)
    if C.cutlass_sm90_built():
        gather += 4 * M * N + (1 << 20)
    for dt in (f16, bf16):
        assert gather + 4 * K + 4 <= size(M, N, K, dt, cuda) < gather + 4 * K + 4 + 6 * 256
        assert size(M, N, K, dt, cpu) == 0
    assert size(M, N, K, f32, cuda) == 0
    with pytest.raises(ValueError, match="dtype"):
        size(M, N, K, 99, cuda)


def test_native_errors_are_python_exceptions():
    C = _native.C
    with pytest.raises(ValueError, match="device must be"):
        C.int8_gemm(7, 0, -1, 0, 0, 1, 1, 1, 0)
    with pytest.raises(ValueError, match="must not be null"):
        C.int8_gemm(0, 0, -1, 0, 0, 2, 2, 2, 0)
    with pytest.raises(ValueError, match="unknown dtype"):
        C.quantize_rows(0, 0, -1, 42, 0, 1, 1, 0.0, 0, 0, 0)
    if not lt8.has_cuda():
        with pytest.raises(RuntimeError, match="no CUDA kernels"):
            C.int8_gemm(1, 0, -1, 1, 1, 1, 1, 1, 1)
