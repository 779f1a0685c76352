"""The AMX int8 GEMM's packing and tiling, on any x86-64 CPU: few machines that run the suite have
AMX (test_cpu_gemm.py covers the real instructions where they do), so this compiles
cuda/cpu_simd/int8_gemm_amx.cc with its tile intrinsics replaced by a scalar model of them
(tests/core/native/amx_emulation.h) into a small check program (amx_gemm_check.cc) that compares
it with the exact int64 sum on odd shapes, -128 included. Skips without a C++ compiler or off
x86-64."""

from __future__ import annotations

import platform
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
NATIVE = ROOT / "tests/core/native"
CXX = shutil.which("g++") or shutil.which("c++")

pytestmark = pytest.mark.skipif(
    CXX is None or platform.machine() not in ("x86_64", "AMD64"),
    reason="needs a C++ compiler on x86-64",
)


def _emulated_source(tmp: Path) -> Path:
    """int8_gemm_amx.cc with <immintrin.h> swapped for the model and its target pragma dropped
    (the model is plain C++, which must run on CPUs without AVX-512 too)."""
    src = (ROOT / "cuda/cpu_simd/int8_gemm_amx.cc").read_text()
    pragma = '#pragma GCC target("amx-tile,amx-int8,avx512f")\n'
    assert src.count("#include <immintrin.h>\n") == 1 and src.count(pragma) == 1, (
        "int8_gemm_amx.cc's intrinsics include or target pragma changed: update this test"
    )
    src = src.replace("#include <immintrin.h>\n", '#include "amx_emulation.h"\n')
    out = tmp / "int8_gemm_amx_emulated.cc"
    out.write_text(src.replace(pragma, ""))
    return out


def test_amx_gemm_matches_exact_sums_under_emulation(tmp_path):
    binary = tmp_path / "amx_gemm_check"
    cmd = [
        CXX, "-std=c++17", "-O1", f"-I{ROOT / 'cuda'}", f"-I{NATIVE}", "-o", str(binary),
        str(NATIVE / "amx_gemm_check.cc"), str(_emulated_source(tmp_path)),
    ]  # fmt: skip
    subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=300)
    run = subprocess.run([str(binary)], capture_output=True, text=True, timeout=300)
    lines = run.stdout.splitlines()
    assert run.returncode == 0, run.stdout
    assert len(lines) >= 10 and all(line.endswith("ok (0 bad)") for line in lines), run.stdout
