"""Loads the compiled extension ``lt8._C`` once, with an error that says how to fix a bad build."""

from __future__ import annotations

try:
    from lt8 import _C as C
except ImportError as err:  # pragma: no cover - exercised only on broken installs
    raise ImportError(
        "lt8's compiled extension (lt8._C) could not be imported. Build and install lt8 with "
        "`pip install --no-build-isolation -e .` from the repository root (see README.md). "
        f"Original error: {err}"
    ) from err

# Codes shared with cuda/lt8.h (enum DType, Layout). Keep in sync.
DTYPE_F32, DTYPE_F16, DTYPE_BF16, DTYPE_I8, DTYPE_I32, DTYPE_U8 = range(6)
LAYOUT_CODES = {"row": 0, "col32": 1, "col_turing": 2, "col_ampere": 3}
DEVICE_CPU, DEVICE_CUDA = 0, 1


def has_cuda() -> bool:
    """True when this build of lt8 contains CUDA kernels (it says nothing about a GPU being present)."""
    return bool(C.has_cuda())


def cuda_archs() -> list[str]:
    """CUDA architectures compiled into this build, e.g. ``['75', '80', '86', '89', '90']``."""
    archs = C.cuda_archs()
    return [a for a in archs.replace(";", ",").split(",") if a] if archs else []


def has_ffi() -> bool:
    """True when the XLA FFI handlers (needed by ``lt8.jax``) were built."""
    return bool(C.has_ffi())
