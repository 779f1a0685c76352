"""The Arm int8 GEMM (SDOT) against the scalar variant and an exact sum, under emulation: no Arm
machine runs the suite, so where an AArch64 cross compiler and qemu-aarch64 are installed this
builds the GEMM's sources with a small C++ check (tests/core/native/arm_gemm_check.cc) and runs
it on an emulated CPU with the dot-product instructions and on one without them (the scalar
fallback). Skips elsewhere (CI has neither tool)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CXX = shutil.which("aarch64-linux-gnu-g++")
QEMU = shutil.which("qemu-aarch64")
SOURCES = [
    "cpu_isa.cc",
    "int8_gemm.cc",
    "int8_gemm_neondot.cc",
    "int8_gemm_avx2.cc",
    "int8_gemm_avxvnni.cc",
    "int8_gemm_avx512vnni.cc",
    "int8_gemm_amx.cc",
    "scratch.cc",
    "thread_pool.cc",
]

pytestmark = pytest.mark.skipif(
    CXX is None or QEMU is None, reason="needs aarch64-linux-gnu-g++ and qemu-aarch64"
)


@pytest.fixture(scope="module")
def binary(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("arm") / "arm_gemm_check"
    cmd = [
        CXX, "-std=c++17", "-O2", "-static", f"-I{ROOT / 'cuda'}", "-o", str(out),
        str(ROOT / "tests/core/native/arm_gemm_check.cc"),
        *(str(ROOT / "cuda/cpu_simd" / s) for s in SOURCES), "-lpthread",
    ]  # fmt: skip
    subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=300)
    return out


@pytest.mark.parametrize("cpu,isa", [("max", "neondot"), ("cortex-a53", "scalar")])
def test_arm_gemm_matches_exact_sums(binary, cpu, isa):
    run = subprocess.run(
        [QEMU, "-cpu", cpu, str(binary)], capture_output=True, text=True, timeout=600
    )
    assert run.stdout.splitlines()[0] == f"detected {isa}", run.stdout
    assert run.returncode == 0, run.stdout
    assert run.stdout.count(": ok") == len(run.stdout.splitlines()) - 1
