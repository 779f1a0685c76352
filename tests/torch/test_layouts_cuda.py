"""cuBLASLt's own transform (cublasLtMatrixTransform, loaded with ctypes from the CUDA wheels
torch uses) against the numpy reference and lt8's CUDA kernel, byte for byte; and bitsandbytes'
test_layout_exact_match at full size.

Enum values used below, checked against cublasLt.h / library_types.h:
  cublasLtOrder_t: COL=0, ROW=1, COL32=2, COL4_4R2_8C=3, COL32_2R_4R4=4
  cublasLtMatrixLayoutAttribute_t: TYPE=0, ORDER=1 (int32_t value), ROWS=2, COLS=3, LD=4
  cublasLtMatrixTransformDescAttributes_t: SCALE_TYPE=0, POINTER_MODE=1, TRANSA=2, TRANSB=3
  cudaDataType: CUDA_R_32F=0, CUDA_R_8I=3
Signatures (cublasLt.h): cublasLtMatrixLayoutCreate(layout*, cudaDataType, uint64 rows,
uint64 cols, int64 ld); cublasLtMatrixTransformDescCreate(desc*, cudaDataType scaleType);
cublasLtMatrixTransform(handle, desc, alpha*, A, Adesc, beta*, B, Bdesc, C, Cdesc, stream).
"""

from __future__ import annotations

import ctypes
import glob
import os
import site
import sys

import numpy as np
import pytest
from conftest import REQUIRE_CUDA, require_cuda
from layout_reference import tile_offsets_ref, to_layout_ref

from lt8.core import layouts as L

torch = pytest.importorskip("torch")
import lt8.torch  # noqa: E402,F401  (registers torch's arrays with lt8.core.arrays)

pytestmark = pytest.mark.cuda

CUBLASLT_MATRIX_LAYOUT_ORDER = 1
CUDA_R_32F, CUDA_R_8I = 0, 3
CUBLAS_STATUS_NOT_SUPPORTED, CUBLAS_STATUS_ARCH_MISMATCH = 15, 8
TILED = ["col32", "col_turing", "col_ampere"]
SHAPES = [(40, 70), (3, 5), (128, 256), (1000, 1000), (1, 1), (33, 33)]


def _skip_or_fail(msg: str):
    if REQUIRE_CUDA:
        pytest.fail(f"LT8_REQUIRE_CUDA=1 but {msg}")
    pytest.skip(msg)


def _find_cublaslt() -> str | None:
    dirs = [os.path.join(p, "nvidia", "cublas", "lib") for p in site.getsitepackages() + sys.path]
    dirs += [os.path.join(os.path.dirname(torch.__file__), "lib")]
    dirs += [os.path.join(p, "nvidia", "cu13", "lib") for p in site.getsitepackages()]
    for d in dirs:
        hits = sorted(glob.glob(os.path.join(d, "libcublasLt.so*")))
        if hits:
            return hits[0]
    return None


class CublasLt:
    """The few cuBLASLt entry points a layout transform needs."""

    def __init__(self, path: str):
        self.lib = ctypes.CDLL(path)
        vp, p = ctypes.c_void_p, ctypes.POINTER(ctypes.c_void_p)
        self.lib.cublasLtCreate.argtypes = [p]
        self.lib.cublasLtDestroy.argtypes = [vp]
        self.lib.cublasLtMatrixLayoutCreate.argtypes = [
            p,
            ctypes.c_int,
            ctypes.c_uint64,
            ctypes.c_uint64,
            ctypes.c_int64,
        ]
        self.lib.cublasLtMatrixLayoutDestroy.argtypes = [vp]
        self.lib.cublasLtMatrixLayoutSetAttribute.argtypes = [vp, ctypes.c_int, vp, ctypes.c_size_t]
        self.lib.cublasLtMatrixTransformDescCreate.argtypes = [p, ctypes.c_int]
        self.lib.cublasLtMatrixTransformDescDestroy.argtypes = [vp]
        self.lib.cublasLtMatrixTransform.argtypes = [vp, vp, vp, vp, vp, vp, vp, vp, vp, vp, vp]
        self.handle = ctypes.c_void_p()
        self._check(self.lib.cublasLtCreate(ctypes.byref(self.handle)), "cublasLtCreate")

    @staticmethod
    def _check(status: int, what: str) -> None:
        if status in (CUBLAS_STATUS_NOT_SUPPORTED, CUBLAS_STATUS_ARCH_MISMATCH):
            _skip_or_fail(f"{what}: cuBLASLt does not support this on this GPU (status {status})")
        assert status == 0, f"{what} failed with cublasStatus_t {status}"

    def _layout(self, order: str, rows: int, cols: int) -> ctypes.c_void_p:
        desc = ctypes.c_void_p()
        ld = L.leading_dim(order, rows, cols)  # ROW: cols; tiled: 32 * padded rows
        self._check(
            self.lib.cublasLtMatrixLayoutCreate(ctypes.byref(desc), CUDA_R_8I, rows, cols, ld),
            "LayoutCreate",
        )
        value = ctypes.c_int32(L.LAYOUTS[order].cublaslt_order)
        self._check(
            self.lib.cublasLtMatrixLayoutSetAttribute(
                desc, CUBLASLT_MATRIX_LAYOUT_ORDER, ctypes.byref(value), 4
            ),
            "LayoutSetAttribute(ORDER)",
        )
        return desc

    def transform(self, x: torch.Tensor, to_order: str) -> torch.Tensor:
        """Row-major int8 CUDA (rows, cols) -> ``to_order``, in a zero-filled padded buffer."""
        assert x.dtype == torch.int8 and x.is_cuda and x.dim() == 2
        x = x.contiguous()
        rows, cols = x.shape
        out = torch.zeros(L.padded_shape(to_order, rows, cols), dtype=torch.int8, device=x.device)
        desc = ctypes.c_void_p()
        self._check(
            self.lib.cublasLtMatrixTransformDescCreate(ctypes.byref(desc), CUDA_R_32F),
            "TransformDescCreate",
        )
        a_desc, c_desc = self._layout("row", rows, cols), self._layout(to_order, rows, cols)
        alpha, beta = ctypes.c_float(1.0), ctypes.c_float(0.0)
        try:
            status = self.lib.cublasLtMatrixTransform(
                self.handle,
                desc,
                ctypes.byref(alpha),
                ctypes.c_void_p(x.data_ptr()),
                a_desc,
                ctypes.byref(beta),
                None,
                None,
                ctypes.c_void_p(out.data_ptr()),
                c_desc,
                ctypes.c_void_p(torch.cuda.current_stream().cuda_stream),
            )
            self._check(status, f"cublasLtMatrixTransform(row -> {to_order})")
        finally:
            self.lib.cublasLtMatrixLayoutDestroy(a_desc)
            self.lib.cublasLtMatrixLayoutDestroy(c_desc)
            self.lib.cublasLtMatrixTransformDescDestroy(desc)
        return out


@pytest.fixture(scope="module")
def cublaslt() -> CublasLt:
    if not torch.cuda.is_available():
        _skip_or_fail("no CUDA GPU visible to torch")
    path = _find_cublaslt()
    if path is None:
        _skip_or_fail("libcublasLt.so not found next to torch (nvidia/cublas/lib or torch/lib)")
    lt = CublasLt(path)
    yield lt
    lt.lib.cublasLtDestroy(lt.handle)


def lt8_transform(x, to_order, from_order="row", state=None):
    import lt8.functional as F

    return F.transform(x, to_order=to_order, from_order=from_order, state=state)


def valid_mask(order: str, rows: int, cols: int) -> torch.Tensor:
    """True at the bytes of a tiled CUDA buffer that hold matrix elements (not padding); the
    numpy reference's offsets, evaluated with torch on the GPU so that full-size weights fit."""
    tr, tc = L.TILE_SHAPES[order]
    prows, pcols = L.padded_shape(order, rows, cols)
    table = torch.from_numpy(tile_offsets_ref(order)).cuda()
    mask = torch.zeros(prows * pcols, dtype=torch.bool, device="cuda")
    c = torch.arange(cols, device="cuda")
    for r0 in range(0, rows, 4096):  # in row blocks: bounded temporaries
        r = torch.arange(r0, min(rows, r0 + 4096), device="cuda")[:, None]
        off = (c // tc) * (32 * prows) + (r // tr) * (tr * tc) + table[r % tr, c % tc]
        mask[off.flatten()] = True
    return mask.view(prows, pcols)


def random_int8_cuda(rows: int, cols: int) -> torch.Tensor:
    return torch.randint(-128, 128, (rows, cols), dtype=torch.int8, device="cuda")


@pytest.mark.parametrize("order", TILED)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_reference_matches_cublaslt(cublaslt, order, shape):
    x = random_int8_cuda(*shape)
    expected = cublaslt.transform(x, order).cpu().numpy()
    ref = to_layout_ref(x.cpu().numpy(), order)
    # cuBLASLt defines only the element bytes; padding is compared in the lt8 test below.
    mask = valid_mask(order, *shape).cpu().numpy()
    np.testing.assert_array_equal(ref[mask], expected[mask])


@pytest.mark.parametrize("order", TILED)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_lt8_matches_cublaslt(cublaslt, order, shape):
    require_cuda()
    x = random_int8_cuda(*shape)
    out, state = lt8_transform(x, order)
    assert tuple(out.shape) == L.padded_shape(order, *shape) and out.dtype == torch.int8
    mask = valid_mask(order, *shape)
    expected = cublaslt.transform(x, order)
    assert torch.equal(out[mask], expected[mask])
    assert torch.all(out[~mask] == 0), "padding bytes must be 0"
    np.testing.assert_array_equal(out.cpu().numpy(), to_layout_ref(x.cpu().numpy(), order))
    back, _ = lt8_transform(out, "row", from_order=order, state=state)
    assert torch.equal(back, x)


@pytest.mark.parametrize("order", TILED)
def test_lt8_unaligned_input_and_side_stream(cublaslt, order):
    # An input 1 byte off 4-byte alignment takes the kernel's byte path; run on a side stream.
    require_cuda()
    rows, cols = 100, 260
    base = torch.randint(-128, 128, (rows * cols + 1,), dtype=torch.int8, device="cuda")
    x = base[1:].view(rows, cols)
    assert x.data_ptr() % 4 != 0
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        out, state = lt8_transform(x, order)
        back, _ = lt8_transform(out, "row", from_order=order, state=state)
    torch.cuda.current_stream().wait_stream(stream)
    mask = valid_mask(order, rows, cols)
    assert torch.equal(out[mask], cublaslt.transform(x, order)[mask])
    assert torch.equal(back, x)


@pytest.mark.parametrize("order, tile_size", [("col_turing", (8, 32)), ("col_ampere", (32, 32))])
def test_layout_exact_match(order, tile_size):
    """bitsandbytes' test_layout_exact_match (tests/test_autograd.py, <= 0.43), full size."""
    require_cuda()
    x = (torch.randn(14336 * 3, 14336, device="cuda") * 10).to(torch.int8)

    def transform(t):
        return lt8_transform(t.cuda(), to_order=order, from_order="row")[0].to(t.device)

    tile_indices = L.get_inverse_transform_indices(transform, tile_size)
    cxb = transform(x)
    torch.cuda.synchronize()
    restored_x = L.undo_layout(cxb, tile_indices)
    torch.cuda.synchronize()
    assert restored_x.is_contiguous()
    assert torch.all(torch.eq(restored_x, x))


@pytest.mark.parametrize("order", ["col_turing", "col_ampere"])
def test_lt8_matches_cublaslt_full_size(cublaslt, order):
    # 43008 x 14336 (616M elements) with odd padding: 43001 rows, 14333 columns.
    require_cuda()
    for rows, cols in [(14336 * 3, 14336), (14336 * 3 - 7, 14336 - 3)]:
        x = random_int8_cuda(rows, cols)
        out, state = lt8_transform(x, order)
        expected = cublaslt.transform(x, order)  # zero-filled padding
        mask = valid_mask(order, rows, cols)
        assert torch.equal(out[mask], expected[mask])
        assert torch.all(out[~mask] == 0)
        del expected, mask
        assert torch.equal(lt8_transform(out, "row", from_order=order, state=state)[0], x)
        del x, out
        torch.cuda.empty_cache()


def test_lt8_int64_indexing(cublaslt):
    # 2^31 bytes switch the kernel to 64-bit indexing (no padding: whole 32x32 tiles).
    require_cuda()
    rows, cols = 65536, 32768
    x = random_int8_cuda(rows, cols)
    out, state = lt8_transform(x, "col_ampere")
    assert out.numel() == 2**31
    assert torch.equal(out, cublaslt.transform(x, "col_ampere"))
    assert torch.equal(lt8_transform(out, "row", from_order="col_ampere", state=state)[0], x)
