"""Independent numpy reference of cuBLASLt's tiled int8 layouts, for the tests.

Written from the ``cublasLt.h`` descriptions (``cublasLtOrder_t``), not from lt8's kernels; lt8
itself computes layouts only in C++ (``cuda/layout/layout_offsets.h``, reached from Python
through ``lt8._C.layout_offsets``), and the layout tests compare that against this module. For
a logical ``(rows, cols)`` int8 matrix:

* ``"col32"`` (``CUBLASLT_ORDER_COL32``): 32-column groups one after another, each group
  row-major ``(rows, 32)``.
* ``"col_turing"`` (``CUBLASLT_ORDER_COL4_4R2_8C``): groups of 8x32 tiles, stacked top to bottom.
  A tile is its even rows then its odd rows (128 bytes each); each half is eight 4x4 blocks (4
  columns of the 4 even or odd rows), one per 4-column group, row-major inside.
* ``"col_ampere"`` (``CUBLASLT_ORDER_COL32_2R_4R4``): groups of 32x32 tiles; inside a tile the
  element offset is ``(((row%8)/2*4 + row/8)*2 + row%2)*32 + col`` (cublasLt.h, verbatim).

Rows are padded to the tile height (1, 8, 32), columns to 32; padding bytes are 0. The leading
dimension (bytes between 32-column groups) is ``32 * padded_rows``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

#: (tile_rows, tile_cols) of each order: the row and column padding multiples.
TILES: dict[str, tuple[int, int]] = {
    "row": (1, 1),
    "col32": (1, 32),
    "col_turing": (8, 32),
    "col_ampere": (32, 32),
}
TILED = ["col32", "col_turing", "col_ampere"]


def padded_shape_ref(order: str, rows: int, cols: int) -> tuple[int, int]:
    tr, tc = TILES[order]
    return -(-rows // tr) * tr, -(-cols // tc) * tc


def tile_offsets_ref(order: str) -> np.ndarray:
    """Byte offset of each element of one tile inside that tile: int64 ``TILES[order]``."""
    tr, tc = TILES[order]
    r = np.arange(tr, dtype=np.int64)[:, None]
    c = np.arange(tc, dtype=np.int64)[None, :]
    if order == "col32":
        return np.broadcast_to(c, (tr, tc)).copy()
    if order == "col_turing":
        # half (even/odd rows) | 4x4 block of the column quad | row within the 4 even/odd rows | col
        return (r % 2) * 128 + (c // 4) * 16 + (r // 2) * 4 + c % 4
    if order == "col_ampere":
        return (((r % 8) // 2 * 4 + r // 8) * 2 + r % 2) * 32 + c
    raise ValueError(f"not a tiled order: {order!r}")


def layout_offsets_ref(order: str, rows: int, cols: int) -> np.ndarray:
    """Byte offset of every element of a ``(rows, cols)`` matrix in the buffer of ``order``."""
    if order == "row":
        return np.arange(rows * cols, dtype=np.int64).reshape(rows, cols)
    tr, tc = TILES[order]
    prows, _ = padded_shape_ref(order, rows, cols)
    r = np.arange(rows, dtype=np.int64)[:, None]
    c = np.arange(cols, dtype=np.int64)[None, :]
    inner = tile_offsets_ref(order)[r % tr, c % tc]
    # 32-column groups are `ld` bytes apart; inside a group, tiles are stacked top to bottom.
    return (c // tc) * (32 * prows) + (r // tr) * (tr * tc) + inner


def to_layout_ref(a: Any, order: str) -> np.ndarray:
    """Row-major int8 ``(rows, cols)`` -> a ``padded_shape_ref`` array whose C-order bytes are
    the cuBLASLt buffer (padding bytes 0)."""
    a = np.asarray(a)
    if a.ndim != 2:
        raise ValueError(f"expected a 2-D matrix, got shape {a.shape}")
    rows, cols = a.shape
    shape = padded_shape_ref(order, rows, cols)
    out = np.zeros(shape[0] * shape[1], dtype=a.dtype)
    out[layout_offsets_ref(order, rows, cols).ravel()] = a.ravel()
    return out.reshape(shape)


def from_layout_ref(buf: Any, order: str, rows: int, cols: int) -> np.ndarray:
    """Tiled -> row-major: the dense ``(rows, cols)`` matrix held by the padded buffer ``buf``."""
    flat = np.asarray(buf).reshape(-1)
    pr, pc = padded_shape_ref(order, rows, cols)
    if flat.size != pr * pc:
        raise ValueError(
            f"{order} buffer of ({rows}, {cols}) has {pr * pc} elements, got {flat.size}"
        )
    return flat[layout_offsets_ref(order, rows, cols)]
