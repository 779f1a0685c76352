// AVX2 variant of the int8 GEMM (see int8_gemm.h): int16 operands, vpmaddwd, 3x4 register tiles.
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

}  // namespace

void block_avx2(const Problem& p, int64_t m0, int64_t m1, int64_t n0, int64_t n1) {
  const int16_t* A = static_cast<const int16_t*>(p.a);
  for (int64_t kb = 0; kb < p.K; kb += kKC) {
    const int64_t klen = std::min(kKC, p.K - kb);
    for (int64_t m = m0; m < m1; m += kMR) {
      const int rows = static_cast<int>(std::min<int64_t>(kMR, m1 - m));
      for (int64_t n = n0; n < n1; n += kNR) {
        const int cols = static_cast<int>(std::min<int64_t>(kNR, n1 - n));
        kTiles[rows - 1][cols - 1](A + m * p.lda + kb, p.lda, p.B + n * p.K + kb, p.K, klen,
                                   p.C + m * p.N + n, p.N, kb > 0);
      }
    }
  }
}

}  // namespace lt8::cpu::gemm_detail

#pragma GCC pop_options
#else
// Not x86: active_cpu_isa() is always kScalar, so this is never called.
void lt8::cpu::gemm_detail::block_avx2(const Problem&, int64_t, int64_t, int64_t, int64_t) {
  std::abort();
}
#endif
