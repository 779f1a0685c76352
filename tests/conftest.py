"""Shared fixtures: the torch device under test, seeds, and LT8_REQUIRE_CUDA.

Tests run on the CPU everywhere and on CUDA where a GPU and a CUDA build of lt8 are present.
With LT8_REQUIRE_CUDA=1 (the GPU script sets it) a missing GPU or CUDA build is an error,
not a skip, so a broken GPU setup can never pass as green; tests that need two GPUs also fail
then, unless LT8_GPUS says the machine has fewer (``require_gpus``).
"""

from __future__ import annotations

import os
import random

import numpy as np
import pytest

REQUIRE_CUDA = os.environ.get("LT8_REQUIRE_CUDA") == "1"
# Fresh inputs every run; LT8_SEED=<n> replays a failing run (the seed is in pytest's header;
# it seeds the ``rng`` fixture, torch's generator and hypothesis).
SEED = int(os.environ.get("LT8_SEED", random.SystemRandom().randrange(2**31)))


def pytest_configure(config):
    """Hypothesis draws from LT8_SEED too (unless --hypothesis-seed is given), so that one
    number replays a whole run, property tests included."""
    try:
        from hypothesis import core
    except ImportError:
        return
    if config.getoption("--hypothesis-seed", None) is None:
        core.global_force_seed = SEED


def pytest_report_header(config):
    return (
        f"lt8: LT8_SEED={SEED} (numpy, torch and hypothesis), "
        f"LT8_REQUIRE_CUDA={int(REQUIRE_CUDA)}, LT8_GPUS={os.environ.get('LT8_GPUS', 'unset')}"
    )


def cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    import lt8

    return torch.cuda.is_available() and lt8.has_cuda()


def require_cuda() -> None:
    """Skips (or, under LT8_REQUIRE_CUDA=1, fails) the calling test when CUDA is unusable."""
    if cuda_available():
        return
    msg = "needs a CUDA GPU and an lt8 build with CUDA kernels"
    if REQUIRE_CUDA:
        pytest.fail(f"LT8_REQUIRE_CUDA=1 but this test {msg}")
    pytest.skip(msg)


def require_gpus(n: int) -> None:
    """Skips the calling test on a machine with fewer than ``n`` GPUs; under LT8_REQUIRE_CUDA=1
    that is a failure unless LT8_GPUS (the number of GPUs the machine is meant to have; the GPU
    script sets it from nvidia-smi) says fewer than ``n``, so a multi-GPU machine whose GPUs
    torch does not see can never pass as green."""
    require_cuda()
    import torch

    have = torch.cuda.device_count()
    if have >= n:
        return
    declared = os.environ.get("LT8_GPUS")
    msg = f"needs {n} GPUs, torch sees {have} (LT8_GPUS={declared or 'unset'})"
    if REQUIRE_CUDA and (declared is None or int(declared) >= n):
        pytest.fail(
            f"LT8_REQUIRE_CUDA=1 but this test {msg}; on a machine with fewer GPUs set "
            f"LT8_GPUS to its count (e.g. LT8_GPUS=1) to skip it"
        )
    pytest.skip(msg)


DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)]


@pytest.fixture(params=DEVICES)
def device(request) -> str:
    """A torch device string: 'cpu', and 'cuda' when usable."""
    if request.param == "cuda":
        require_cuda()
    return request.param


@pytest.fixture
def rng(request) -> np.random.Generator:
    """A generator per test: fresh each run (LT8_SEED), distinct per test id."""
    import zlib

    return np.random.default_rng([SEED, zlib.crc32(request.node.nodeid.encode())])


@pytest.fixture(autouse=True)
def _seed_frameworks(request):
    """Seeds torch's generator (when torch is in use) the same way as ``rng``."""
    import sys
    import zlib

    torch = sys.modules.get("torch")
    if torch is not None:
        torch.manual_seed((SEED ^ zlib.crc32(request.node.nodeid.encode())) & 0x7FFFFFFF)
