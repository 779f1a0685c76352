// Intel AMX variant of the int8 GEMM (see int8_gemm.h): TDPBSSD (signed x signed int8, int32
// accumulation that wraps like the scalar sum) on 16x16 tiles of C.
//
// The roles are swapped so that the weight is read in place: the tiles compute C^T = B . A^T.
// TDPBSSD's first source is a plain row-major tile (16 rows of 64 bytes), which is exactly 16 rows
// of B (the weight, N x K) at stride K; its second source wants "VNNI" layout (row r holds four
// consecutive k of each of 16 columns), which is A's job: the driver packs A once per call into
// 16-row x 64-k chunks of 1 KiB (pack_a_amx), zero past M and K. Zeros in A also make the bytes
// of B past K irrelevant, so only tiles that would read past the end of a row of B or past its
// last row (the K tail, a partial last 16-row block) go through a zero-padded copy.
//
// Register tiles: tmm0-3 accumulate a 2x2 block of 16x16 C^T tiles (32 columns of C = one task
// of the driver, x 32 rows), tmm4-5 hold two B tiles, tmm6-7 two A tiles.
#include "cpu_simd/cpu_isa.h"
#ifdef LT8_X86_SIMD
#include <immintrin.h>
#endif

#include <algorithm>
#include <cstdlib>
#include <cstring>

#include "cpu_simd/int8_gemm.h"

#ifdef LT8_X86_SIMD
#pragma GCC push_options
#pragma GCC target("amx-tile,amx-int8,avx512f")

namespace lt8::cpu::gemm_detail {
namespace {

constexpr int kT = 16;            // rows of a tile (C^T rows = columns of C; A rows)
constexpr int kKB = 64;           // k per tile step (bytes of a B tile row)
constexpr int kChunk = kT * kKB;  // bytes of one packed A chunk

// LDTILECFG's 64-byte operand (palette 1): every tile 16 rows x 64 bytes.
struct alignas(64) TileConfig {
  uint8_t palette = 1;
  uint8_t start_row = 0;
  uint8_t reserved[14] = {};
  uint16_t colsb[16] = {};
  uint8_t rows[16] = {};
};

void configure_tiles() {
  TileConfig cfg;
  for (int t = 0; t < 8; ++t) {
    cfg.colsb[t] = kKB;
    cfg.rows[t] = kT;
  }
  _tile_loadconfig(&cfg);
}

// B rows [n, n + rows) x k [k, k + cols) into a zero-padded 16 x 64 tile image.
void copy_b_tile(const int8_t* B, int64_t K, int64_t n, int rows, int64_t k, int cols,
                 int8_t* out) {
  std::memset(out, 0, kChunk);
  for (int r = 0; r < rows; ++r) std::memcpy(out + r * kKB, B + (n + r) * K + k, cols);
}

// Where B's tile at (n, k) is read from: in place (stride K) when it lies within B, else from
// `pad` (a 1 KiB buffer, stride 64) after a zero-padded copy. (The tile number of _tile_loadd
// must be a literal: GCC pastes it into the instruction.)
struct TileSrc {
  const int8_t* ptr;
  int64_t stride;
};
inline TileSrc b_tile(const Problem& p, int64_t n, int64_t k, int8_t* pad) {
  const int rows = static_cast<int>(std::min<int64_t>(kT, p.N - n));
  const int cols = static_cast<int>(std::min<int64_t>(kKB, p.K - k));
  if (rows == kT && cols == kKB) return {p.B + n * p.K + k, p.K};
  copy_b_tile(p.B, p.K, n, rows, k, cols, pad);
  return {pad, kKB};
}

// C[m .. m + 16) x [n .. n + 16) from a 16 x 16 int32 C^T tile image, clipped to the block.
void store_transposed(const int32_t* ct, Problem const& p, int64_t m, int64_t m1, int64_t n,
                      int64_t n1) {
  const int rows = static_cast<int>(std::min<int64_t>(kT, m1 - m));
  const int cols = static_cast<int>(std::min<int64_t>(kT, n1 - n));
  for (int i = 0; i < rows; ++i)
    for (int j = 0; j < cols; ++j) p.C[(m + i) * p.N + n + j] = ct[j * kT + i];
}

// One 2x2 (NB x MB at the block's edges) group of C^T tiles over the whole K.
template <int NB, int MB>
void group(const Problem& p, int64_t m, int64_t m1, int64_t n, int64_t n1) {
  alignas(64) int8_t pad[2][kChunk];
  alignas(64) int32_t ct[kT * kT];
  const int8_t* A = static_cast<const int8_t*>(p.a);
  const int64_t kchunks = (p.K + kKB - 1) / kKB;
  // A chunks of the group's two 16-row blocks, consecutive in k (pack_a_amx's layout).
  const int8_t* a0 = A + (m / kT) * kchunks * kChunk;
  const int8_t* a1 = a0 + kchunks * kChunk;
  _tile_zero(0);
  if constexpr (MB > 1) _tile_zero(1);
  if constexpr (NB > 1) _tile_zero(2);
  if constexpr (NB > 1 && MB > 1) _tile_zero(3);
  for (int64_t c = 0; c < kchunks; ++c) {
    const int64_t k = c * kKB;
    const TileSrc b0 = b_tile(p, n, k, pad[0]);
    _tile_loadd(4, b0.ptr, b0.stride);
    if constexpr (NB > 1) {
      const TileSrc b1 = b_tile(p, n + kT, k, pad[1]);
      _tile_loadd(5, b1.ptr, b1.stride);
    }
    _tile_loadd(6, a0 + c * kChunk, kKB);
    if constexpr (MB > 1) _tile_loadd(7, a1 + c * kChunk, kKB);
    _tile_dpbssd(0, 4, 6);
    if constexpr (MB > 1) _tile_dpbssd(1, 4, 7);
    if constexpr (NB > 1) _tile_dpbssd(2, 5, 6);
    if constexpr (NB > 1 && MB > 1) _tile_dpbssd(3, 5, 7);
  }
  _tile_stored(0, ct, kT * 4);
  store_transposed(ct, p, m, m1, n, n1);
  if constexpr (MB > 1) {
    _tile_stored(1, ct, kT * 4);
    store_transposed(ct, p, m + kT, m1, n, n1);
  }
  if constexpr (NB > 1) {
    _tile_stored(2, ct, kT * 4);
    store_transposed(ct, p, m, m1, n + kT, n1);
  }
  if constexpr (NB > 1 && MB > 1) {
    _tile_stored(3, ct, kT * 4);
    store_transposed(ct, p, m + kT, m1, n + kT, n1);
  }
}

}  // namespace

void pack_a_amx(const int8_t* A, int64_t M, int64_t K, int8_t* out) {
  const int64_t kchunks = (K + kKB - 1) / kKB, mblocks = (M + kT - 1) / kT;
  std::memset(out, 0, static_cast<size_t>(mblocks * kchunks * kChunk));
  const int64_t kquads = K / 4 * 4;
  for (int64_t m = 0; m < M; ++m) {
    int8_t* rowblock = out + (m / kT) * kchunks * kChunk + (m % kT) * 4;
    const int8_t* a = A + m * K;
    // k = 64 c + 4 r + j lands at chunk c, row r, byte 4 (m % 16) + j; with k = 4 q that is
    // byte offset 64 q + 4 (m % 16) + j of the block (chunks of 16 rows of 64 bytes follow on).
    for (int64_t k = 0; k < kquads; k += 4) std::memcpy(rowblock + k * kT, a + k, 4);
    if (kquads < K)
      std::memcpy(rowblock + kquads * kT, a + kquads, static_cast<size_t>(K - kquads));
  }
}

void block_amx(const Problem& p, int64_t m0, int64_t m1, int64_t n0, int64_t n1) {
  // Tile state is per thread: configured for this block, released after it (a released thread
  // has no AMX state for the OS to save).
  configure_tiles();
  for (int64_t m = m0; m < m1; m += 2 * kT) {
    const bool two_m = m1 - m > kT;
    for (int64_t n = n0; n < n1; n += 2 * kT) {
      const bool two_n = n1 - n > kT;
      if (two_n && two_m)
        group<2, 2>(p, m, m1, n, n1);
      else if (two_n)
        group<2, 1>(p, m, m1, n, n1);
      else if (two_m)
        group<1, 2>(p, m, m1, n, n1);
      else
        group<1, 1>(p, m, m1, n, n1);
    }
  }
  _tile_release();
}

}  // namespace lt8::cpu::gemm_detail

#pragma GCC pop_options
#else
// Not x86: active_cpu_isa() is never kAmx, so these are never called.
void lt8::cpu::gemm_detail::pack_a_amx(const int8_t*, int64_t, int64_t, int8_t*) {
  std::abort();
}
void lt8::cpu::gemm_detail::block_amx(const Problem&, int64_t, int64_t, int64_t, int64_t) {
  std::abort();
}
#endif
