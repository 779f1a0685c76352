// Arm variant of the int8 GEMM (see int8_gemm.h): the dot-product instructions of Armv8.2
// (SDOT, vdotq_s32: four signed int8 x int8 products summed into each int32 lane), 4x4 register
// tiles over the whole K. Signed x signed, so every A value (-128 included) is exact and A needs no
// preparation beyond rows zero-padded to a multiple of 16 (int8_gemm.cc); B's last, partial
// 16-byte step of each row is copied into a zeroed buffer instead of being read past the row.
// Each lane's sums wrap like the int32 sum of the plain loop (addition modulo 2^32 does not depend
// on the order), so the results equal the scalar variant's bit for bit.
#include "cpu_simd/cpu_isa.h"
#ifdef LT8_ARM_SIMD
#include <arm_neon.h>
#endif

#include <cstdlib>
#include <cstring>

#include "cpu_simd/int8_gemm.h"

#ifdef LT8_ARM_SIMD
#pragma GCC push_options
#pragma GCC target("arch=armv8.2-a+dotprod")

namespace lt8::cpu::gemm_detail {
namespace {

constexpr int kMR = 4, kNR = 4;

// C[r][c] for R rows of A (stride lda, zero beyond K up to lda) and C columns of B (rows of
// stride ldb, K long).
template <int R, int C>
void tile(const int8_t* a, int64_t lda, const int8_t* b, int64_t ldb, int64_t K, int32_t* out,
          int64_t ldc) {
  int32x4_t acc[R][C];
#pragma GCC unroll 4
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
    for (int c = 0; c < C; ++c) acc[r][c] = vdupq_n_s32(0);
  const int64_t full = K / 16 * 16;
  for (int64_t k = 0; k < full; k += 16) {
    int8x16_t av[R], bv[C];
#pragma GCC unroll 4
    for (int r = 0; r < R; ++r) av[r] = vld1q_s8(a + r * lda + k);
#pragma GCC unroll 4
    for (int c = 0; c < C; ++c) bv[c] = vld1q_s8(b + c * ldb + k);
#pragma GCC unroll 4
    for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
      for (int c = 0; c < C; ++c) acc[r][c] = vdotq_s32(acc[r][c], av[r], bv[c]);
  }
  if (full < K) {  // A is zero from K on; B's tail goes through a zeroed copy
    int8_t tail[C][16] = {};
    int8x16_t av[R], bv[C];
    for (int c = 0; c < C; ++c) {
      std::memcpy(tail[c], b + c * ldb + full, static_cast<size_t>(K - full));
      bv[c] = vld1q_s8(tail[c]);
    }
    for (int r = 0; r < R; ++r) av[r] = vld1q_s8(a + r * lda + full);
    for (int r = 0; r < R; ++r)
      for (int c = 0; c < C; ++c) acc[r][c] = vdotq_s32(acc[r][c], av[r], bv[c]);
  }
  for (int r = 0; r < R; ++r)
    for (int c = 0; c < C; ++c) out[r * ldc + c] = vaddvq_s32(acc[r][c]);
}

using TileFn = void (*)(const int8_t*, int64_t, const int8_t*, int64_t, int64_t, int32_t*, int64_t);
template <int R>
constexpr TileFn kRow[kNR] = {tile<R, 1>, tile<R, 2>, tile<R, 3>, tile<R, 4>};
constexpr const TileFn* kTiles[kMR] = {kRow<1>, kRow<2>, kRow<3>, kRow<4>};

}  // namespace

void block_neondot(const Problem& p, int64_t m0, int64_t m1, int64_t n0, int64_t n1) {
  const int8_t* A = static_cast<const int8_t*>(p.a);
  for (int64_t n = n0; n < n1; n += kNR) {
    const int cols = static_cast<int>(n1 - n < kNR ? n1 - n : kNR);
    for (int64_t m = m0; m < m1; m += kMR) {
      const int rows = static_cast<int>(m1 - m < kMR ? m1 - m : kMR);
      kTiles[rows - 1][cols - 1](A + m * p.lda, p.lda, p.B + n * p.K, p.K, p.K, p.C + m * p.N + n,
                                 p.N);
    }
  }
}

}  // namespace lt8::cpu::gemm_detail

#pragma GCC pop_options
#else
// Not Arm: active_cpu_isa() is never kNeonDot, so this is never called.
void lt8::cpu::gemm_detail::block_neondot(const Problem&, int64_t, int64_t, int64_t, int64_t) {
  std::abort();
}
#endif
