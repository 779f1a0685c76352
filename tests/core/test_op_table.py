"""The op table (cuda/ops.def, exported as lt8._C.ops()) and the enums of cuda/lt8.h: every
frontend covers every op of the list, and every entry point rejects an unknown enum code with a
ValueError naming the argument (the one is_valid check per enum)."""

from __future__ import annotations

import re

import numpy as np
import pytest

from lt8._native import LAYOUT_CODES, C, has_ffi


def test_every_op_has_an_entry_point_of_the_listed_arity():
    ops = C.ops()
    assert ops, "lt8._C.ops() is empty"
    for name, arity in ops.items():
        fn = getattr(C, name)
        params = re.match(rf"{name}\((.*)\)", fn.__doc__.splitlines()[0]).group(1)
        args = [p for p in params.split(", ") if p.startswith("arg")]
        assert len(args) == arity, (name, fn.__doc__)


@pytest.mark.skipif(not has_ffi(), reason="built without XLA FFI handlers")
def test_ffi_targets_are_the_op_list_on_every_platform():
    regs = C.registrations()
    assert "cpu" in regs
    for platform, targets in regs.items():
        assert list(targets) == list(C.ops()), platform


def test_torch_registers_every_op_for_cpu_and_cuda():
    torch = pytest.importorskip("torch")
    import lt8.torch._kernels  # noqa: F401  (registers the kernels)

    for name in C.ops():
        for key in ("CPU", "CUDA"):
            assert torch._C._dispatch_has_kernel_for_dispatch_key(f"lt8::{name}", key), (name, key)


@pytest.mark.skipif(not has_ffi(), reason="built without XLA FFI handlers")
def test_jax_wraps_every_op():
    pytest.importorskip("jax")
    from lt8.jax import _ffi

    for name in C.ops():
        assert callable(getattr(_ffi, name)) and name in _ffi.__all__


def test_enum_members_are_named_as_python_names_them():
    assert [d.name for d in C.DType] == [
        "float32",
        "float16",
        "bfloat16",
        "int8",
        "int32",
        "uint8",
    ]
    assert [d.name for d in C.Device] == ["cpu", "cuda"]
    assert LAYOUT_CODES == {layout.name: int(layout) for layout in C.Layout}


def _unknown(enum) -> list[int]:
    """Codes just outside the enum: -1 and one past the largest member."""
    return [-1, max(int(m) for m in enum) + 1]


@pytest.mark.parametrize("code", _unknown(C.DType))
def test_unknown_dtype_code_is_a_value_error(code):
    with pytest.raises(ValueError, match=f"dtype must be a member of lt8._C.DType.*code {code}"):
        C.dequantize_rows(0, 0, -1, 0, 0, 1, 1, code, 0)


@pytest.mark.parametrize("code", _unknown(C.Device))
def test_unknown_device_code_is_a_value_error(code):
    with pytest.raises(ValueError, match=f"device must be a member of lt8._C.Device.*code {code}"):
        C.int8_gemm(code, 0, -1, 0, 0, 1, 1, 1, 0)


@pytest.mark.parametrize("code", _unknown(C.Layout))
def test_unknown_layout_code_is_a_value_error(code):
    with pytest.raises(ValueError, match=f"layout must be a member of lt8._C.Layout.*code {code}"):
        C.transform_layout(0, 0, -1, 0, 0, 1, 1, code, 0)
    with pytest.raises(ValueError, match="layout must be a member"):
        C.layout_padded_shape(code, 1, 1)
    with pytest.raises(ValueError, match="layout must be a member"):
        C.layout_offsets(code, 1, 1)


def test_every_valid_code_is_accepted(rng):
    # Each layout round-trips a random matrix through the kernel entry points.
    a = rng.integers(-127, 128, size=(9, 40), dtype=np.int8)
    for layout in C.Layout:
        pr, pc = C.layout_padded_shape(int(layout), *a.shape)
        tiled = np.empty(pr * pc, np.int8)
        back = np.empty_like(a)
        row = LAYOUT_CODES["row"]
        C.transform_layout(0, 0, -1, a.ctypes.data, tiled.ctypes.data, *a.shape, row, int(layout))
        C.transform_layout(
            0, 0, -1, tiled.ctypes.data, back.ctypes.data, *a.shape, int(layout), row
        )
        np.testing.assert_array_equal(back, a)
        np.testing.assert_array_equal(tiled[C.layout_offsets(int(layout), *a.shape)], a)


@pytest.mark.skipif(not has_ffi(), reason="built without XLA FFI handlers")
@pytest.mark.parametrize("code", _unknown(C.Layout))
def test_ffi_rejects_unknown_layout_code(code):
    jax = pytest.importorskip("jax")
    import jax.numpy as jnp

    import lt8.jax._ffi  # noqa: F401  (registers the targets)

    call = jax.ffi.ffi_call("lt8_transform_layout", jax.ShapeDtypeStruct((32,), np.int8))
    with pytest.raises(Exception, match="unknown layout code"):
        jax.block_until_ready(
            call(
                jnp.zeros((32,), jnp.int8),
                rows=np.int64(1),
                cols=np.int64(32),
                from_layout=np.int32(code),
                to_layout=np.int32(0),
            )
        )
