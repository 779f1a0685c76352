// AVX-512 VNNI variant of the int8 GEMM (see int8_gemm.h): vpdpbusd on 512-bit vectors, B + 128
// as the unsigned operand, 4x4 register tiles, masked loads for the K tail.
#include "cpu_simd/cpu_isa.h"
#ifdef LT8_X86_SIMD
#include <immintrin.h>
#endif

#include <algorithm>
#include <cstdlib>

#include "cpu_simd/int8_gemm.h"

#ifdef LT8_X86_SIMD
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512vnni")

namespace lt8::cpu::gemm_detail {
namespace {

constexpr int kMR = 4, kNR = 4;
constexpr int64_t kKC = 4096;

inline __m256i fold(__m512i v) {
  return _mm256_add_epi32(_mm512_maskz_extracti64x4_epi64(0xff, v, 0),
                          _mm512_maskz_extracti64x4_epi64(0xff, v, 1));
}
inline __m128i hsum4(__m512i a, __m512i b, __m512i c, __m512i d) {
  __m256i abcd =
      _mm256_hadd_epi32(_mm256_hadd_epi32(fold(a), fold(b)), _mm256_hadd_epi32(fold(c), fold(d)));
  return _mm_add_epi32(_mm256_castsi256_si128(abcd), _mm256_extracti128_si256(abcd, 1));
}

template <int R, int S>
void tile(const int8_t* a, int64_t lda, const int32_t* rowsum, const int8_t* b, int64_t ldb,
          int64_t klen, int32_t* c, int64_t ldc, bool accumulate) {
  const __m512i flip = _mm512_set1_epi8(static_cast<char>(0x80));
  __m512i acc[R][kNR];
  for (int r = 0; r < R; ++r)
    for (int s = 0; s < kNR; ++s) acc[r][s] = _mm512_setzero_si512();
  for (int64_t k = 0; k < klen; k += 64) {
    // Full mask except in the last step; A is zero past K, so masked-off B bytes add nothing.
    const __mmask64 mask = klen - k >= 64 ? ~__mmask64{0} : (__mmask64{1} << (klen - k)) - 1;
    __m512i av[R];
    for (int r = 0; r < R; ++r) av[r] = _mm512_loadu_si512(a + r * lda + k);
    for (int s = 0; s < S; ++s) {
      const __m512i bv = _mm512_xor_si512(_mm512_maskz_loadu_epi8(mask, b + s * ldb + k), flip);
      for (int r = 0; r < R; ++r) acc[r][s] = _mm512_dpbusd_epi32(acc[r][s], bv, av[r]);
    }
  }
  for (int r = 0; r < R; ++r) {
    alignas(16) uint32_t sums[4];
    _mm_store_si128(reinterpret_cast<__m128i*>(sums),
                    hsum4(acc[r][0], acc[r][1], acc[r][2], acc[r][3]));
    const uint32_t fix = accumulate ? 0u : 128u * static_cast<uint32_t>(rowsum[r]);
    uint32_t* out = reinterpret_cast<uint32_t*>(c + r * ldc);
    for (int s = 0; s < S; ++s) out[s] = (accumulate ? out[s] : 0u) + sums[s] - fix;
  }
}

using TileFn = void (*)(const int8_t*, int64_t, const int32_t*, const int8_t*, int64_t, int64_t,
                        int32_t*, int64_t, bool);
template <int R>
constexpr TileFn kRow[kNR] = {tile<R, 1>, tile<R, 2>, tile<R, 3>, tile<R, 4>};
constexpr const TileFn* kTiles[kMR] = {kRow<1>, kRow<2>, kRow<3>, kRow<4>};

}  // namespace

void block_avx512vnni(const Problem& p, int64_t m0, int64_t m1, int64_t n0, int64_t n1) {
  const int8_t* A = static_cast<const int8_t*>(p.a);
  for (int64_t kb = 0; kb < p.K; kb += kKC) {
    const int64_t klen = std::min(kKC, p.K - kb);
    for (int64_t m = m0; m < m1; m += kMR) {
      const int rows = static_cast<int>(std::min<int64_t>(kMR, m1 - m));
      for (int64_t n = n0; n < n1; n += kNR) {
        const int cols = static_cast<int>(std::min<int64_t>(kNR, n1 - n));
        kTiles[rows - 1][cols - 1](A + m * p.lda + kb, p.lda, p.a_rowsum + m, p.B + n * p.K + kb,
                                   p.K, klen, p.C + m * p.N + n, p.N, kb > 0);
      }
    }
  }
}

}  // namespace lt8::cpu::gemm_detail

#pragma GCC pop_options
#else
// Not x86: active_cpu_isa() is always kScalar, so this is never called.
void lt8::cpu::gemm_detail::block_avx512vnni(const Problem&, int64_t, int64_t, int64_t, int64_t) {
  std::abort();
}
#endif
