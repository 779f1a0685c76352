"""Shared fixtures: the torch device under test, seeds, and LT8_REQUIRE_CUDA.

Tests run on the CPU everywhere and on CUDA where a GPU and a CUDA build of lt8 are present.
With LT8_REQUIRE_CUDA=1 (the GPU script sets it) a missing GPU or CUDA build is an error,
not a skip, so a broken GPU setup can never pass as green.
"""

from __future__ import annotations

import os
import random

import numpy as np
import pytest

REQUIRE_CUDA = os.environ.get("LT8_REQUIRE_CUDA") == "1"
# Fresh inputs every run; LT8_SEED=<n> replays a failing run (the seed is in pytest's header).
SEED = int(os.environ.get("LT8_SEED", random.SystemRandom().randrange(2**31)))


def pytest_report_header(config):
    return f"lt8: LT8_SEED={SEED}, LT8_REQUIRE_CUDA={int(REQUIRE_CUDA)}"


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
