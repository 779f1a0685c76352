// AVX2 variants of the int8 GEMM (see int8_gemm.h), register tiles of rows of A x rows of B:
//   * block_avx2_sign, when no A element is -128 (always so for lt8's quantized activations,
//     which saturate to +-127): int8 operands, vpmaddubsw on |B| (unsigned) and A with B's sign
//     (vpsignb), then vpmaddwd by ones to int32. Exact: each product |b| * (+-a) equals a * b,
//     and a pair sum is at most 2 * 128 * 127 = 32512 < 2^15, so vpmaddubsw never saturates
//     (|a| <= 127 is what makes that true, and what keeps vpsignb's negation of a from wrapping).
//     Twice the int8 products per instruction of the int16 variant: on the benchmark VM's Zen 4
//     (no VNNI exposed) about 1.9x the int16 variant's rate; ~50 GMAC/s per core against a
//     float32 FMA peak of 42.5 and this instruction mix's own peak of 60 (benchmarks/NOTES.md,
//     "CPU: the vpsignb/vpmaddubsw GEMM" and "CPU: the demo's bound").
//     3x2 tiles (see kMRSign).
//   * block_avx2: int16 operands, vpmaddwd, 3x4 tiles; exact for every int8 value, the fallback
//     when A holds a -128.
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
#pragma GCC target("avx2")

namespace lt8::cpu::gemm_detail {
namespace {

constexpr int kMR = 3, kNR = 4;
constexpr int64_t kKC = 2048;  // K block: a 3-row int16 A tile (12 KiB) stays in L1

inline __m256i load_b(const int8_t* p) {
  return _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
}

// Horizontal sums of four vectors -> one lane each.
inline __m128i hsum4(__m256i a, __m256i b, __m256i c, __m256i d) {
  __m256i abcd = _mm256_hadd_epi32(_mm256_hadd_epi32(a, b), _mm256_hadd_epi32(c, d));
  return _mm_add_epi32(_mm256_castsi256_si128(abcd), _mm256_extracti128_si256(abcd, 1));
}

// C[0:R, 0:S] (+)= A[0:R, 0:klen] . B[0:S, 0:klen]; A is zero-padded past K, B is not (its K tail
// is copied into a zeroed vector so no byte past a row is read).
template <int R, int S>
void tile(const int16_t* a, int64_t lda, const int8_t* b, int64_t ldb, int64_t klen, int32_t* c,
          int64_t ldc, bool accumulate) {
  __m256i acc[R][kNR];
  for (int r = 0; r < R; ++r)
    for (int s = 0; s < kNR; ++s) acc[r][s] = _mm256_setzero_si256();
  int64_t k = 0;
  for (; k + 16 <= klen; k += 16) {
    __m256i av[R];
    for (int r = 0; r < R; ++r)
      av[r] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a + r * lda + k));
    for (int s = 0; s < S; ++s) {
      const __m256i bv = load_b(b + s * ldb + k);
      for (int r = 0; r < R; ++r)
        acc[r][s] = _mm256_add_epi32(acc[r][s], _mm256_madd_epi16(av[r], bv));
    }
  }
  if (k < klen) {
    for (int s = 0; s < S; ++s) {
      alignas(16) int8_t tail[16] = {};
      std::memcpy(tail, b + s * ldb + k, static_cast<size_t>(klen - k));
      const __m256i bv = load_b(tail);
      for (int r = 0; r < R; ++r) {
        const __m256i av = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a + r * lda + k));
        acc[r][s] = _mm256_add_epi32(acc[r][s], _mm256_madd_epi16(av, bv));
      }
    }
  }
  for (int r = 0; r < R; ++r) {
    alignas(16) uint32_t sums[4];
    _mm_store_si128(reinterpret_cast<__m128i*>(sums),
                    hsum4(acc[r][0], acc[r][1], acc[r][2], acc[r][3]));
    uint32_t* out = reinterpret_cast<uint32_t*>(c + r * ldc);
    for (int s = 0; s < S; ++s) out[s] = accumulate ? out[s] + sums[s] : sums[s];
  }
}

using TileFn = void (*)(const int16_t*, int64_t, const int8_t*, int64_t, int64_t, int32_t*, int64_t,
                        bool);
template <int R>
constexpr TileFn kRow[kNR] = {tile<R, 1>, tile<R, 2>, tile<R, 3>, tile<R, 4>};
constexpr const TileFn* kTiles[kMR] = {kRow<1>, kRow<2>, kRow<3>};

// --- int8 operands, vpsignb + vpmaddubsw ---------------------------------------------------

// C[0:R, 0:S] (+)= A[0:R, 0:klen] . B[0:S, 0:klen]; A int8 with no -128, zero-padded past K to a
// multiple of 32; B's K tail is copied into a zeroed vector.
// Register tile kMRSign x kNRSign: 6 accumulators, 3 rows of A, 2 of B, one |B| and the products
// fit the 16 ymm registers with no traffic through the stack (a 2 x 4 tile left GCC two
// accumulators half on the stack in the K loop: benchmarks/NOTES.md, "CPU: the demo's bound").
constexpr int kMRSign = 3, kNRSign = 2;

// Horizontal sums of two vectors -> lanes 0 and 1.
inline __m128i hsum2(__m256i a, __m256i b) {
  const __m256i ab = _mm256_hadd_epi32(a, b);   // per 128-bit half: a01 a23 b01 b23
  const __m256i h = _mm256_hadd_epi32(ab, ab);  // a0123 b0123 a0123 b0123
  return _mm_add_epi32(_mm256_castsi256_si128(h), _mm256_extracti128_si256(h, 1));
}

template <int R, int S>
void tile_sign(const int8_t* a, int64_t lda, const int8_t* b, int64_t ldb, int64_t klen, int32_t* c,
               int64_t ldc, bool accumulate) {
  const __m256i ones = _mm256_set1_epi16(1);
  __m256i acc[R][kNRSign];
  for (int r = 0; r < R; ++r)
    for (int s = 0; s < kNRSign; ++s) acc[r][s] = _mm256_setzero_si256();
  // acc[r][s] += A row r . B row s over the 32 bytes at k (bv[s]: B row s's bytes there).
  auto step = [&](const __m256i(&bv)[S], int64_t k) {
    __m256i av[R];
    for (int r = 0; r < R; ++r)
      av[r] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a + r * lda + k));
    for (int s = 0; s < S; ++s) {
      const __m256i ub = _mm256_abs_epi8(bv[s]);  // |b| as unsigned: 128 for -128, exactly
      for (int r = 0; r < R; ++r) {
        const __m256i pairs = _mm256_maddubs_epi16(ub, _mm256_sign_epi8(av[r], bv[s]));
        acc[r][s] = _mm256_add_epi32(acc[r][s], _mm256_madd_epi16(pairs, ones));
      }
    }
  };
  int64_t k = 0;
  for (; k + 32 <= klen; k += 32) {
    __m256i bv[S];
    for (int s = 0; s < S; ++s)
      bv[s] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b + s * ldb + k));
    step(bv, k);
  }
  if (k < klen) {  // A is zero past K, so the tail's padding bytes of B contribute nothing
    __m256i bv[S];
    for (int s = 0; s < S; ++s) {
      alignas(32) int8_t tail[32] = {};
      std::memcpy(tail, b + s * ldb + k, static_cast<size_t>(klen - k));
      bv[s] = _mm256_load_si256(reinterpret_cast<const __m256i*>(tail));
    }
    step(bv, k);
  }
  for (int r = 0; r < R; ++r) {
    alignas(16) uint32_t sums[4];
    _mm_store_si128(reinterpret_cast<__m128i*>(sums), hsum2(acc[r][0], acc[r][1]));
    uint32_t* out = reinterpret_cast<uint32_t*>(c + r * ldc);
    for (int s = 0; s < S; ++s) out[s] = accumulate ? out[s] + sums[s] : sums[s];
  }
}

using TileSignFn = void (*)(const int8_t*, int64_t, const int8_t*, int64_t, int64_t, int32_t*,
                            int64_t, bool);
template <int R>
constexpr TileSignFn kSignRow[kNRSign] = {tile_sign<R, 1>, tile_sign<R, 2>};
constexpr const TileSignFn* kSignTiles[kMRSign] = {kSignRow<1>, kSignRow<2>, kSignRow<3>};
constexpr int64_t kKCSign = 4096;  // K block: a 3-row int8 A tile (12 KiB) stays in L1

// C[m0:m1, n0:n1] in K blocks of KC and register tiles of up to MR x NR: tiles[rows - 1][cols
// - 1] takes the A rows of type TA (the variant's prepared copy) and B's rows in place.
template <int MR, int NR, int64_t KC, typename TA, typename Tile>
void run_tiles(const Problem& p, const Tile* const (&tiles)[MR], int64_t m0, int64_t m1, int64_t n0,
               int64_t n1) {
  const TA* A = static_cast<const TA*>(p.a);
  for (int64_t kb = 0; kb < p.K; kb += KC) {
    const int64_t klen = std::min(KC, p.K - kb);
    for (int64_t m = m0; m < m1; m += MR) {
      const int rows = static_cast<int>(std::min<int64_t>(MR, m1 - m));
      for (int64_t n = n0; n < n1; n += NR) {
        const int cols = static_cast<int>(std::min<int64_t>(NR, n1 - n));
        tiles[rows - 1][cols - 1](A + m * p.lda + kb, p.lda, p.B + n * p.K + kb, p.K, klen,
                                  p.C + m * p.N + n, p.N, kb > 0);
      }
    }
  }
}

}  // namespace

void block_avx2_sign(const Problem& p, int64_t m0, int64_t m1, int64_t n0, int64_t n1) {
  run_tiles<kMRSign, kNRSign, kKCSign, int8_t>(p, kSignTiles, m0, m1, n0, n1);
}

void block_avx2(const Problem& p, int64_t m0, int64_t m1, int64_t n0, int64_t n1) {
  run_tiles<kMR, kNR, kKC, int16_t>(p, kTiles, m0, m1, n0, n1);
}

}  // namespace lt8::cpu::gemm_detail

#pragma GCC pop_options
#else
// Not x86: active_cpu_isa() is always kScalar, so this is never called.
void lt8::cpu::gemm_detail::block_avx2(const Problem&, int64_t, int64_t, int64_t, int64_t) {
  std::abort();
}
void lt8::cpu::gemm_detail::block_avx2_sign(const Problem&, int64_t, int64_t, int64_t, int64_t) {
  std::abort();
}
#endif
