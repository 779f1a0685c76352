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

# The enums of cuda/lt8.h as the extension exports them (C.DType, C.Layout, C.Device). The entry
# points take plain ints, so the per-call paths use these cached ints, never enum objects.
DTYPE_F32 = int(C.DType.float32)
DTYPE_F16 = int(C.DType.float16)
DTYPE_BF16 = int(C.DType.bfloat16)
DEVICE_CPU = int(C.Device.cpu)
DEVICE_CUDA = int(C.Device.cuda)
#: Layout name -> code ("row", "col32", "col_turing", "col_ampere"); also the checkpoint's
#: ``weight_format`` codes. The one Python copy of lt8::Layout.
LAYOUT_CODES: dict[str, int] = {layout.name: int(layout) for layout in C.Layout}


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
