"""cuBLASLt's tiled int8 layouts, described and implemented in plain numpy.

This module is framework-neutral: it imports only numpy. torch and jax arrays are accepted by
:func:`get_inverse_transform_indices` and :func:`undo_layout`, which find the array's library
from its type when called.

The orders (``cublasLt.h``, ``cublasLtOrder_t``), for a logical ``(rows, cols)`` int8 matrix:

* ``"col32"`` (``CUBLASLT_ORDER_COL32``): 32-column groups one after another, each group
  row-major ``(rows, 32)``.
* ``"col_turing"`` (``CUBLASLT_ORDER_COL4_4R2_8C``): groups of 8x32 tiles, stacked top to bottom.
  A tile is its even rows then its odd rows (128 bytes each); each half is eight 4x4 blocks (4
  columns of the 4 even or odd rows), one per 4-column group, row-major inside.
* ``"col_ampere"`` (``CUBLASLT_ORDER_COL32_2R_4R4``): groups of 32x32 tiles; inside a tile the
  element offset is ``(((row%8)/2*4 + row/8)*2 + row%2)*32 + col`` (cublasLt.h, verbatim).

Rows are padded to the tile height (1, 8, 32), columns to 32; padding bytes are 0. The leading
dimension (bytes between 32-column groups) is ``32 * padded_rows``. A tiled matrix is held as a
``padded_shape`` array whose flat (C-order) bytes are the tiled buffer, as bitsandbytes does.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = [
    "LayoutSpec",
    "LAYOUTS",
    "TILE_SHAPES",
    "layout_spec",
    "padded_shape",
    "leading_dim",
    "tile_offsets",
    "layout_offsets",
    "to_layout_reference",
    "from_layout_reference",
    "get_inverse_transform_indices",
    "undo_layout",
]


@dataclass(frozen=True)
class LayoutSpec:
    """One memory order.

    ``code`` is the value of ``lt8::Layout`` in ``cuda/lt8.h`` (the binding ABI);
    ``cublaslt_order`` the ``cublasLtOrder_t`` value; a tile is ``(tile_rows, tile_cols)``,
    which is also the row/column padding multiple.
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


LAYOUTS: dict[str, LayoutSpec] = {
    "row": LayoutSpec("row", 0, 1, 1, 1),  # CUBLASLT_ORDER_ROW = 1
    "col32": LayoutSpec("col32", 1, 2, 1, 32),  # CUBLASLT_ORDER_COL32 = 2
    "col_turing": LayoutSpec("col_turing", 2, 3, 8, 32),  # CUBLASLT_ORDER_COL4_4R2_8C = 3
    "col_ampere": LayoutSpec("col_ampere", 3, 4, 32, 32),  # CUBLASLT_ORDER_COL32_2R_4R4 = 4
}

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


def _round_up(v: int, m: int) -> int:
    return -(-v // m) * m


def padded_shape(order: str, rows: int, cols: int) -> tuple[int, int]:
    """Shape ``(padded_rows, padded_cols)`` of a ``(rows, cols)`` matrix stored in ``order``."""
    s = layout_spec(order)
    return _round_up(rows, s.row_pad), _round_up(cols, s.col_pad)


def leading_dim(order: str, rows: int, cols: int) -> int:
    """cuBLASLt's leading dimension: ``cols`` for "row", else ``32 * padded_rows``."""
    prows, _ = padded_shape(order, rows, cols)
    return cols if order == "row" else 32 * prows


def tile_offsets(order: str) -> np.ndarray:
    """Byte offset of each element of one tile inside that tile: an int64 ``TILE_SHAPES[order]``
    array. Derived from the cublasLt.h descriptions (see the module docstring)."""
    if order not in TILE_SHAPES:
        raise ValueError(f"order must be one of {sorted(TILE_SHAPES)}, got {order!r}")
    tr, tc = TILE_SHAPES[order]
    r = np.arange(tr, dtype=np.int64)[:, None]
    c = np.arange(tc, dtype=np.int64)[None, :]
    if order == "col32":
        return np.broadcast_to(c, (tr, tc)).copy()
    if order == "col_turing":
        # half (even/odd rows) | 4x4 block of the column quad | row within the 4 even/odd rows | col
        return (r % 2) * 128 + (c // 4) * 16 + (r // 2) * 4 + c % 4
    return (((r % 8) // 2 * 4 + r // 8) * 2 + r % 2) * 32 + c  # col_ampere


def layout_offsets(order: str, rows: int, cols: int) -> np.ndarray:
    """Byte offset of every element of a logical ``(rows, cols)`` matrix in the tiled buffer of
    ``order`` (int64, shape ``(rows, cols)``)."""
    if layout_spec(order).name == "row":
        return np.arange(rows * cols, dtype=np.int64).reshape(rows, cols)
    tr, tc = TILE_SHAPES[order]
    prows, _ = padded_shape(order, rows, cols)
    r = np.arange(rows, dtype=np.int64)[:, None]
    c = np.arange(cols, dtype=np.int64)[None, :]
    inner = tile_offsets(order)[r % tr, c % tc]
    # 32-column groups are `ld` bytes apart; inside a group, tiles are stacked top to bottom.
    return (c // tc) * (32 * prows) + (r // tr) * (tr * tc) + inner


def to_layout_reference(a: Any, order: str) -> np.ndarray:
    """Row-major int8 ``(rows, cols)`` -> tiled: a ``padded_shape(order, rows, cols)`` int8 numpy
    array whose C-order bytes are the cuBLASLt buffer (padding bytes are 0)."""
    a = np.asarray(a)
    if a.ndim != 2:
        raise ValueError(f"expected a 2-D matrix, got shape {a.shape}")
    rows, cols = a.shape
    out = np.zeros(int(np.prod(padded_shape(order, rows, cols))), dtype=a.dtype)
    out[layout_offsets(order, rows, cols).ravel()] = a.ravel()
    return out.reshape(padded_shape(order, rows, cols))


def from_layout_reference(buf: Any, order: str, rows: int, cols: int) -> np.ndarray:
    """Tiled -> row-major: reads the padded tiled buffer ``buf`` (any shape with
    ``prod(padded_shape(order, rows, cols))`` elements) and returns a dense ``(rows, cols)``."""
    flat = np.asarray(buf).reshape(-1)
    need = int(np.prod(padded_shape(order, rows, cols)))
    if flat.size != need:
        raise ValueError(
            f"{order} buffer of a ({rows}, {cols}) matrix has {need} elements, got {flat.size}"
        )
    return flat[layout_offsets(order, rows, cols)]


# ---------------------------------------------------------------------------------------------
# bitsandbytes' layout helpers (bitsandbytes.autograd._functions, <= 0.43), for numpy, torch and
# jax arrays. The array library is found from the array's type, never imported here.


def _lib_of(x: Any) -> str:
    mod = type(x).__module__.split(".")[0]
    if mod == "torch":
        return "torch"
    if mod in ("jax", "jaxlib"):
        return "jax"
    return "numpy"


def _to_numpy(x: Any) -> np.ndarray:
    if _lib_of(x) == "torch":
        return x.detach().cpu().numpy()
    return np.asarray(x)


def _from_numpy(a: np.ndarray, like: Any) -> Any:
    """``a`` as an array of ``like``'s library (and torch device); ``like`` may be an array or one
    of the names "numpy", "torch", "jax"."""
    lib = like if isinstance(like, str) else _lib_of(like)
    if lib == "torch":
        import torch

        device = like.device if not isinstance(like, str) else "cpu"
        return torch.from_numpy(np.ascontiguousarray(a)).to(device)
    if lib == "jax":
        import jax.numpy as jnp

        return jnp.asarray(a)
    if lib != "numpy":
        raise ValueError(f"like must be an array or one of 'numpy', 'torch', 'jax', got {like!r}")
    return a


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
        like: which library ``transform`` is fed: an array (its library and torch device are
            used) or "numpy" / "torch" / "jax". Default: torch when it is already imported (the
            bitsandbytes behaviour), else numpy.

    Returns:
        int64 ``(d1, d2)`` indices, an array of ``like``'s library, for :func:`undo_layout`.
    """
    d1, d2 = tile_size
    n = d1 * d2
    if not 0 < n < 2**63:
        raise ValueError(f"invalid tile_size {tile_size}")
    if like is None:
        like = "torch" if "torch" in sys.modules else "numpy"
    tile_indices = np.arange(n, dtype=np.int64).reshape(d1, d2)
    permuted = np.zeros_like(tile_indices)
    for i in range(8):
        # byte i of every index, as int8 so that it survives an int8 transform unchanged
        byte_i = (tile_indices // 256**i) % 256
        sample = (byte_i - 128).astype(np.int8)
        moved = _to_numpy(transform(_from_numpy(sample, like))).astype(np.int64).reshape(-1)
        if moved.size != n:
            raise ValueError(f"transform returned {moved.size} elements for a {d1}x{d2} tile")
        permuted += (moved.reshape(d1, d2) + 128) * 256**i
        if n <= 256 ** (i + 1):
            break  # every index fits in the bytes seen so far
    return _from_numpy(permuted, like)


def undo_layout(permuted_tensor: Any, tile_indices: Any) -> Any:
    """Restores row-major order from a tiled buffer, given :func:`get_inverse_transform_indices`.

    ``permuted_tensor`` is a 2-D ``(rows, cols)`` array holding a tiled buffer of whole tiles
    (its padded shape, as returned by a transform) and ``tile_indices`` the ``(tile_rows,
    tile_cols)`` indices with ``tile_cols == 32``. Tiles are assumed column-group major, as in all
    cuBLASLt tiled orders. Returns a contiguous ``(rows, cols)`` array of the same library and
    device as ``permuted_tensor``. Same semantics as bitsandbytes' function of the same name.
    """
    lib = _lib_of(permuted_tensor)
    (rows, cols), (tile_rows, tile_cols) = tuple(permuted_tensor.shape), tuple(tile_indices.shape)
    if rows % tile_rows or cols % tile_cols:
        raise ValueError(
            f"tensor of shape {(rows, cols)} must contain a whole number of {tile_rows}x{tile_cols} tiles"
        )
    # Gather with the inverse permutation (works on immutable jax arrays too): position q of a
    # row-major tile takes the tiled byte that tile_indices says holds index q.
    inv = np.argsort(_to_numpy(tile_indices).reshape(-1), kind="stable")
    n_tiles, tile_numel = (rows // tile_rows) * (cols // tile_cols), tile_rows * tile_cols
    shape4 = (cols // tile_cols, rows // tile_rows, tile_rows, tile_cols)  # memory order of tiles
    if lib == "torch":
        import torch

        idx = torch.from_numpy(inv).to(permuted_tensor.device)
        tiles = permuted_tensor.reshape(n_tiles, tile_numel)[:, idx]
        return tiles.reshape(shape4).permute(1, 2, 0, 3).reshape(rows, cols).contiguous()
    xp = np
    if lib == "jax":
        import jax.numpy as xp  # type: ignore[no-redef]
    tiles = xp.reshape(permuted_tensor, (n_tiles, tile_numel))[:, inv]
    out = xp.reshape(xp.transpose(xp.reshape(tiles, shape4), (1, 2, 0, 3)), (rows, cols))
    return np.ascontiguousarray(out) if lib == "numpy" else out
