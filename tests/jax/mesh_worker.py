"""Runs a test file's ``test_worker_*`` tests on 8 host (CPU) devices.

JAX fixes its device count when its backend starts, so mesh tests run in a subprocess that sets
XLA_FLAGS=--xla_force_host_platform_device_count=8 first. A test file defines one launcher test
that calls :func:`run_workers` (skipped inside the worker) and marks its mesh tests ``@worker``
(skipped in the parent process); any failure in the worker fails the launcher.
"""

from __future__ import annotations

import os
import pathlib
import re
import subprocess
import sys

import jax
import numpy as np
import pytest
from conftest import SEED

IN_WORKER = os.environ.get("LT8_SHARDING_WORKER") == "1"
worker = pytest.mark.skipif(not IN_WORKER, reason="runs in its file's 8-host-device subprocess")


def run_workers(test_file: str) -> None:
    """Runs ``test_file``'s worker tests in a subprocess with 8 host devices; fails on failure."""
    if IN_WORKER:
        pytest.skip("this is the worker process")
    here = pathlib.Path(test_file).resolve()
    env = {
        **os.environ,
        "LT8_SHARDING_WORKER": "1",
        "LT8_SEED": str(SEED),
        "JAX_PLATFORMS": "cpu",
        "XLA_FLAGS": (
            os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
        ).strip(),
    }
    r = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-k", "worker", str(here)],
        cwd=here.parents[2],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert r.returncode == 0, r.stdout[-8000:] + r.stderr[-3000:]
    assert " passed" in r.stdout and "skipped" not in r.stdout, r.stdout[-3000:]


def host_devices() -> np.ndarray:
    devices = jax.devices("cpu")
    assert len(devices) == 8, "the worker must see 8 host devices"
    return np.array(devices)


COLLECTIVES = ("all-reduce", "all-gather", "all-to-all", "collective-permute", "reduce-scatter")


def compiled_hlo(fn, *args) -> str:
    return jax.jit(fn).lower(*args).compile().as_text()


def s8_all_gathers(hlo: str) -> list[str]:
    """The all-gather instructions of compiled HLO whose result is int8 (a gathered int8 weight)."""
    return re.findall(r"= s8\[[^\]]*\][^ ]* all-gather(?:-start)?\(", hlo)


def collectives(hlo: str) -> set[str]:
    return {op for op in COLLECTIVES if op in hlo}
