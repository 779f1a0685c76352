// Where element (row, col) of a logical (rows, cols) int8 matrix lives in cuBLASLt's tiled
// orders. One formula for the CPU and CUDA kernels (LT8_HD) so both produce identical bytes.
//
// Every tiled order stores 32-column groups one after another; a group is `ld = 32 * padded_rows`
// bytes (cuBLASLt's leading dimension) and is split into tiles of `tile_rows` x 32 stacked
// top to bottom. Sources (cublasLt.h, cublasLtOrder_t):
//   COL32        "Column-major ordered tiles of 32 columns": a group is row-major (rows, 32), no
//                row padding (ld >= 32 * rows).
//   COL4_4R2_8C  "composite tiles with total 32 columns and 8 rows, tile composed of interleaved
//                inner tiles of 4 columns within 4 even or odd rows in an alternating pattern";
//                ld >= 32 * 8 * ceil(rows / 8).
//   COL32_2R_4R4 "composite tiles with total 32 columns and 32 rows. Element offset within the
//                tile is calculated as (((row%8)/2*4+row/8)*2+row%2)*32+col";
//                ld >= 32 * 32 * ceil(rows / 32).
#pragma once

#include <cstdint>

#include "lt8.h"
#include "common/numerics.h"  // LT8_HD

namespace lt8 {

// Rows of one tile (the row padding multiple): 1 for row-major and COL32, 8 for COL4_4R2_8C,
// 32 for COL32_2R_4R4.
LT8_HD constexpr int64_t layout_row_multiple(Layout l) {
  return l == Layout::kColTuring ? 8 : (l == Layout::kColAmpere ? 32 : 1);
}

// Column padding multiple: every tiled order stores whole 32-column groups.
LT8_HD constexpr int64_t layout_col_multiple(Layout l) {
  return l == Layout::kRow ? 1 : 32;
}

LT8_HD constexpr int64_t round_up_to(int64_t v, int64_t m) {
  return (v + m - 1) / m * m;
}

// ---- forward: (row, col) -> byte offset --------------------------------------------------

// COL4_4R2_8C inside one 8x32 tile (r < 8, c < 32). The 256 bytes are two halves of 128: even
// rows first, then odd rows. Each half is 8 inner tiles of 4 rows (r/2) x 4 columns, one per
// 4-column group (c/4), stored row-major (16 bytes each). So:
//   offset = (r % 2) * 128 + (c / 4) * 16 + (r / 2) * 4 + c % 4.
// Cross-checked with bitsandbytes' kTransformRowToFormat / kExtractOutliers COL_TURING branch
// (odd rows: 128 + (c/4)*16 + c%4 + (r-1)*2; even rows: (c/4)*16 + c%4 + r*2) and with the
// numpy packing in TVM's cuBLASLt igemm test (verify_matmul_add_igemm: rows reordered
// 0,2,4,6,1,3,5,7, then each 4-row slab written as eight 4x4 blocks).
LT8_HD constexpr int32_t col_turing_tile_offset(int32_t r, int32_t c) {
  return ((r & 1) << 7) | ((c >> 2) << 4) | ((r >> 1) << 2) | (c & 3);
}

// COL32_2R_4R4 inside one 32x32 tile (r, c < 32): cublasLt.h's formula verbatim. Rows are
// stored in pairs; the tile row slot is ((r%8)/2)*8 + (r/8)*2 + r%2, i.e. slots hold rows
// 0 1 8 9 16 17 24 25 2 3 10 11 ... (bitsandbytes' COL_AMPERE "ampere_row" is the same).
LT8_HD constexpr int32_t col_ampere_tile_offset(int32_t r, int32_t c) {
  return ((((r & 7) >> 1) * 4 + (r >> 3)) * 2 + (r & 1)) * 32 + c;
}

// Byte offset of (row, col) in a tiled buffer with `padded_rows` rows (layout_padded_shape).
// Tiled orders only; row-major is row * cols + col.
LT8_HD constexpr int64_t tiled_offset(Layout l, int64_t row, int64_t col, int64_t padded_rows) {
  const int64_t group = (col >> 5) * 32 * padded_rows;  // start of this 32-column group
  const int32_t c = static_cast<int32_t>(col & 31);
  if (l == Layout::kColTuring)
    return group + (row >> 3) * 256 + col_turing_tile_offset(static_cast<int32_t>(row & 7), c);
  if (l == Layout::kColAmpere)
    return group + (row >> 5) * 1024 + col_ampere_tile_offset(static_cast<int32_t>(row & 31), c);
  return group + row * 32 + c;  // kCol32
}

// Byte offset of (row, col) of a logical matrix with `cols` columns stored in any order (row-major
// included); lt8._C.layout_offsets exposes it, so lt8.core.layouts asks this formula too.
LT8_HD constexpr int64_t layout_offset(Layout l, int64_t row, int64_t col, int64_t cols,
                                       int64_t padded_rows) {
  return l == Layout::kRow ? row * cols + col : tiled_offset(l, row, col, padded_rows);
}

// ---- inverse: byte offset -> (row, col) ---------------------------------------------------
// The kernels walk the tiled buffer in memory order (coalesced on the tiled side) and ask which
// element lives there. Every aligned 4-byte unit of a tiled buffer holds 4 consecutive columns
// of one row (c % 4 is the fastest-varying part of all three offsets), which is what lets the
// kernels move 4 bytes at a time. transform_layout_cpu.cc static_asserts these invert the forward
// form.

template <class I>
struct TiledPos {
  I row, col;
};

// Position of byte `o` of one 32-column group (o < 32 * padded_rows): row, and column within
// the group.
template <class I>
LT8_HD constexpr TiledPos<I> tiled_position_in_group(Layout l, I o) {
  if (l == Layout::kColTuring) {
    const int32_t p = static_cast<int32_t>(o & 255);
    const I r = static_cast<I>(((p >> 2) & 3) * 2 + (p >> 7));
    return {(o >> 8) * 8 + r, static_cast<I>(((p >> 4) & 7) * 4 + (p & 3))};
  }
  if (l == Layout::kColAmpere) {
    const int32_t s = static_cast<int32_t>((o & 1023) >> 5);  // row slot in the 32x32 tile
    const I r = static_cast<I>((s >> 3) * 2 + ((s >> 1) & 3) * 8 + (s & 1));
    return {(o >> 10) * 32 + r, o & 31};
  }
  return {o >> 5, o & 31};  // kCol32
}

// Position of byte `offset` of a whole tiled buffer with `padded_rows` rows.
template <class I>
LT8_HD constexpr TiledPos<I> tiled_position(Layout l, I offset, I padded_rows) {
  const I ld = padded_rows * 32;  // bytes per 32-column group
  const I g = offset / ld;
  TiledPos<I> p = tiled_position_in_group(l, offset - g * ld);
  p.col += g * 32;
  return p;
}

// Moves the 4-byte unit at tiled byte offset `o` (a multiple of 4), one byte at a time with all
// bounds checks: row -> tiled writes 0 for padding, tiled -> row skips padding. The CPU uses it
// for everything, the CUDA kernel where vector accesses are not aligned.
template <class I>
LT8_HD void transform_unit_bytes(bool to_tiled, Layout l, const int8_t* in, int8_t* out, I o,
                                 I rows, I cols, I padded_rows) {
  const TiledPos<I> p = tiled_position(l, o, padded_rows);
  const bool row_ok = p.row < rows;
  for (int k = 0; k < 4; ++k) {
    const bool ok = row_ok && p.col + k < cols;
    if (to_tiled)
      out[o + k] = ok ? in[p.row * cols + p.col + k] : int8_t{0};
    else if (ok)
      out[p.row * cols + p.col + k] = in[o + k];
  }
}

}  // namespace lt8
