// CPU layout transforms between row-major and cuBLASLt's tiled int8 orders (see lt8.h and
// layout_offsets.h for the formulas, shared with transform_layout.cu).
#include <algorithm>
#include <cstring>
#include <thread>
#include <vector>

#include "internal.h"
#include "layout/layout_offsets.h"

namespace lt8 {

void layout_padded_shape(Layout layout, int64_t rows, int64_t cols, int64_t* padded_rows,
                         int64_t* padded_cols) {
  if (padded_rows) *padded_rows = round_up_to(rows, layout_row_multiple(layout));
  if (padded_cols) *padded_cols = round_up_to(cols, layout_col_multiple(layout));
}

namespace cpu {
namespace {

// Compile-time proof that tiled_position inverts tiled_offset on whole tiles (one 32-column
// group of 64 padded rows covers two Ampere tiles and eight Turing tiles).
constexpr bool inverse_ok(Layout l) {
  constexpr int64_t kRows = 64;
  for (int64_t r = 0; r < kRows; ++r)
    for (int64_t c = 0; c < 64; ++c) {
      TiledPos<int64_t> p = tiled_position(l, tiled_offset(l, r, c, kRows), kRows);
      if (p.row != r || p.col != c) return false;
    }
  return true;
}
static_assert(inverse_ok(Layout::kCol32) && inverse_ok(Layout::kColTuring) &&
                  inverse_ok(Layout::kColAmpere),
              "tiled_position must invert tiled_offset");

// Runs body(u0, u1) over [0, n) 4-byte units, threaded when the matrix is large. Units own
// disjoint output bytes in both directions, so no synchronisation is needed.
template <class Body>
void parallel_units(int64_t n, Body&& body) {
  int64_t hw = std::max(1u, std::thread::hardware_concurrency());
  int64_t threads = std::min<int64_t>({hw, n / (int64_t{1} << 18), 16});
  if (threads <= 1) {
    body(int64_t{0}, n);
    return;
  }
  std::vector<std::thread> pool;
  int64_t chunk = (n + threads - 1) / threads;
  for (int64_t u0 = 0; u0 < n; u0 += chunk)
    pool.emplace_back([&body, u0, u1 = std::min(n, u0 + chunk)] { body(u0, u1); });
  for (auto& t : pool) t.join();
}

}  // namespace

Status transform_layout(const int8_t* in, int8_t* out, int64_t rows, int64_t cols, Layout from,
                        Layout to) {
  if (from == Layout::kRow && to == Layout::kRow) {
    if (rows * cols > 0) std::memmove(out, in, static_cast<size_t>(rows * cols));
    return Status::Ok();
  }
  const bool to_tiled = from == Layout::kRow;
  const Layout tiled = to_tiled ? to : from;
  int64_t prows = 0, pcols = 0;
  layout_padded_shape(tiled, rows, cols, &prows, &pcols);
  // Walk the tiled buffer in memory order, 4 bytes (4 columns of one row) at a time; the same
  // traversal and formula as the CUDA kernel in transform_layout.cu.
  parallel_units(prows * pcols / 4, [&](int64_t u0, int64_t u1) {
    for (int64_t u = u0; u < u1; ++u)
      transform_unit_bytes<int64_t>(to_tiled, tiled, in, out, u * 4, rows, cols, prows);
  });
  return Status::Ok();
}

}  // namespace cpu
}  // namespace lt8
