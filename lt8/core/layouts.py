"""cuBLASLt's tiled int8 layouts: names, codes, padded shapes and element offsets.

This module is framework-neutral: it imports numpy and lt8's extension, never torch or jax.
torch and jax arrays are accepted by :func:`get_inverse_transform_indices` and
:func:`undo_layout` through :mod:`lt8.core.arrays`, where each frontend registers its arrays.

The layout geometry (padding, offsets) is computed by the C++ formula the kernels use
(``cuda/layout/layout_offsets.h``, through ``lt8._C``), so every frontend and the checkpoint code
agree with the kernels by construction; the tests hold an independent numpy statement of the
``cublasLt.h`` descriptions to check it against. The orders (``cublasLtOrder_t``), for a logical
``(rows, cols)`` int8 matrix:

* ``"col32"`` (``CUBLASLT_ORDER_COL32``): 32-column groups one after another, each group
  row-major ``(rows, 32)``.
* ``"col_turing"`` (``CUBLASLT_ORDER_COL4_4R2_8C``): groups of 8x32 tiles, stacked top to bottom,
  each tile interleaving 4-column blocks of its even and odd rows.
* ``"col_ampere"`` (``CUBLASLT_ORDER_COL32_2R_4R4``): groups of 32x32 tiles, rows stored in pairs.

Rows are padded to the tile height (1, 8, 32), columns to 32; padding bytes are 0. The leading
dimension (bytes between 32-column groups) is ``32 * padded_rows``. A tiled matrix is held as a
``padded_shape`` array whose flat (C-order) bytes are the tiled buffer, as bitsandbytes does.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from lt8._native import LAYOUT_CODES, C
from lt8.core import arrays

__all__ = [
    "LayoutSpec",
    "LAYOUTS",
    "TILE_SHAPES",
    "layout_spec",
    "padded_shape",
    "leading_dim",
    "layout_offsets",
    "get_inverse_transform_indices",
    "undo_layout",
]


@dataclass(frozen=True)
class LayoutSpec:
    """One memory order.

    ``code`` is its ``lt8._C.Layout`` value (the binding ABI, and the checkpoint's
    ``weight_format``); ``cublaslt_order`` the ``cublasLtOrder_t`` value; a tile is
    ``(tile_rows, tile_cols)``, which is also the row/column padding multiple.
    """

    name: str
    code: int
    cublaslt_order: int
    tile_rows: int
    tile_cols: int

    @property
    def row_pad(self) -> int:
        return self.tile_rows

    @property
    def col_pad(self) -> int:
        return self.tile_cols

    @property
    def tiled(self) -> bool:
        return self.name != "row"


# cublasLtOrder_t values (cublasLt.h): ROW = 1, COL32 = 2, COL4_4R2_8C = 3, COL32_2R_4R4 = 4.
_CUBLASLT_ORDERS = {"row": 1, "col32": 2, "col_turing": 3, "col_ampere": 4}


def _spec(name: str, code: int) -> LayoutSpec:
    # The padded shape of a 1x1 matrix is one tile.
    tile_rows, tile_cols = C.layout_padded_shape(code, 1, 1)
    return LayoutSpec(name, code, _CUBLASLT_ORDERS[name], tile_rows, tile_cols)


LAYOUTS: dict[str, LayoutSpec] = {name: _spec(name, code) for name, code in LAYOUT_CODES.items()}

#: Tile shape of each tiled order: the ``tile_size`` that :func:`get_inverse_transform_indices`
#: and :func:`undo_layout` work with (col32's "tile" is one row of a 32-column group).
TILE_SHAPES: dict[str, tuple[int, int]] = {
    name: (s.tile_rows, s.tile_cols) for name, s in LAYOUTS.items() if s.tiled
}


def layout_spec(order: str) -> LayoutSpec:
    """The :class:`LayoutSpec` of ``order`` ("row", "col32", "col_turing" or "col_ampere")."""
    try:
        return LAYOUTS[order]
    except KeyError:
        raise ValueError(f"order must be one of {sorted(LAYOUTS)}, got {order!r}") from None


def padded_shape(order: str, rows: int, cols: int) -> tuple[int, int]:
    """Shape ``(padded_rows, padded_cols)`` of a ``(rows, cols)`` matrix stored in ``order``."""
    return tuple(C.layout_padded_shape(layout_spec(order).code, rows, cols))


def leading_dim(order: str, rows: int, cols: int) -> int:
    """cuBLASLt's leading dimension: ``cols`` for "row", else ``32 * padded_rows``."""
    prows, _ = padded_shape(order, rows, cols)
    return cols if order == "row" else 32 * prows


def layout_offsets(order: str, rows: int, cols: int) -> np.ndarray:
    """Byte offset of every element of a logical ``(rows, cols)`` matrix in the buffer of
    ``order`` (int64, shape ``(rows, cols)``), by the kernels' own formula."""
    return C.layout_offsets(layout_spec(order).code, rows, cols)


# ---------------------------------------------------------------------------------------------
# bitsandbytes' layout helpers (bitsandbytes.autograd._functions, <= 0.43), for numpy arrays and
# the arrays of a registered frontend (lt8.core.arrays: torch once lt8.torch is imported, jax once
# lt8.jax is). No framework is imported here.


def get_inverse_transform_indices(
    transform: Callable[[Any], Any], tile_size: tuple[int, int], like: Any = None
) -> Any:
    """Finds the permutation a tiled transform applies inside one tile.

    Pushes the indices ``0 .. d1*d2-1`` of a ``tile_size = (d1, d2)`` tile through ``transform``
    one byte at a time (as int8 tiles, shifted by -128) and reassembles them, so that entry ``p``
    of the result is the row-major index, within the tile, of the element the transform stored at
    position ``p``. Same semantics as bitsandbytes' function of the same name.

    Args:
        transform: maps a row-major ``(d1, d2)`` int8 array to its tiled form (e.g.
            ``lambda x: lt8.functional.transform(x.cuda(), to_order="col_turing")[0].cpu()``).
            It must return an array of ``d1 * d2`` elements.
        tile_size: ``(8, 32)`` for col_turing, ``(32, 32)`` for col_ampere (``TILE_SHAPES``).
        like: which library ``transform`` is fed: an array (its library and device are used)
            or "numpy" / "torch" / "jax" (torch and jax once ``lt8.torch`` / ``lt8.jax`` is
            imported). Default: torch when ``lt8.torch`` is imported (the bitsandbytes
            behaviour), else numpy.

    Returns:
        int64 ``(d1, d2)`` indices, an array of ``like``'s library, for :func:`undo_layout`.
    """
    d1, d2 = tile_size
    n = d1 * d2
    if not 0 < n < 2**63:
        raise ValueError(f"invalid tile_size {tile_size}")
    if like is None:
        like = "torch" if arrays.has_library("torch") else "numpy"
    tile_indices = np.arange(n, dtype=np.int64).reshape(d1, d2)
    permuted = np.zeros_like(tile_indices)
    for i in range(8):
        # byte i of every index, as int8 so that it survives an int8 transform unchanged
        byte_i = (tile_indices // 256**i) % 256
        sample = (byte_i - 128).astype(np.int8)
        moved = arrays.to_numpy(transform(arrays.from_numpy(sample, like)))
        moved = moved.astype(np.int64).reshape(-1)
        if moved.size != n:
            raise ValueError(f"transform returned {moved.size} elements for a {d1}x{d2} tile")
        permuted += (moved.reshape(d1, d2) + 128) * 256**i
        if n <= 256 ** (i + 1):
            break  # every index fits in the bytes seen so far
    return arrays.from_numpy(permuted, like)


def undo_layout(permuted_tensor: Any, tile_indices: Any) -> Any:
    """Restores row-major order from a tiled buffer, given :func:`get_inverse_transform_indices`.

    ``permuted_tensor`` is a 2-D ``(rows, cols)`` array holding a tiled buffer of whole tiles
    (its padded shape, as returned by a transform) and ``tile_indices`` the ``(tile_rows,
    tile_cols)`` indices with ``tile_cols == 32``. Tiles are assumed column-group major, as in all
    cuBLASLt tiled orders. Returns a contiguous ``(rows, cols)`` array of the same library and
    device as ``permuted_tensor``. Same semantics as bitsandbytes' function of the same name.
    """
    (rows, cols), (tile_rows, tile_cols) = tuple(permuted_tensor.shape), tuple(tile_indices.shape)
    if rows % tile_rows or cols % tile_cols:
        raise ValueError(
            f"tensor of shape {(rows, cols)} must contain a whole number of {tile_rows}x{tile_cols} tiles"
        )
    # One gather of the flat buffer (works on immutable jax arrays too): position (i, j) of a
    # row-major tile takes the tiled byte that tile_indices says holds index i * tile_cols + j.
    # Tiles are stored column-group major: tile (tile row r, column group g) is number
    # g * (rows // tile_rows) + r.
    inv = np.argsort(arrays.to_numpy(tile_indices).reshape(-1), kind="stable")
    inv = inv.reshape(tile_rows, tile_cols)
    r = np.arange(rows, dtype=np.int64)[:, None]
    c = np.arange(cols, dtype=np.int64)[None, :]
    tile = (c // tile_cols) * (rows // tile_rows) + r // tile_rows
    src = tile * (tile_rows * tile_cols) + inv[r % tile_rows, c % tile_cols]
    return permuted_tensor.reshape(-1)[arrays.from_numpy(src, like=permuted_tensor)]
