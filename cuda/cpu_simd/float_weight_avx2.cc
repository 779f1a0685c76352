// AVX2 loops of the CPU kernels that multiply by the dequantized weight in float: the input
// gradient (grad_input_cpu.cc) and the weight-only linear (weight_only_cpu.cc). Each does the
// scalar loop's float operations lane-wise in the same order (a multiply, then an add; no FMA:
// the file is compiled for AVX2 without FMA), so results are bit-identical to the scalar code.
#include "cpu_simd/cpu_isa.h"
#ifdef LT8_X86_SIMD
#include <immintrin.h>
#endif

#include <cstdlib>

#include "cpu_simd/rows_simd.h"

#ifdef LT8_X86_SIMD
#pragma GCC push_options
#pragma GCC target("avx2")

namespace lt8::cpu::simd {

void grad_rows16_avx2(float (*acc)[16], const float* gs, int64_t gs_ld, int rows, const int8_t* w,
                      int64_t ldw, int64_t n_count) {
  __m256 a[4][2];
  for (int r = 0; r < 4; ++r) a[r][0] = a[r][1] = _mm256_setzero_ps();
  for (int64_t n = 0; n < n_count; ++n) {
    const __m128i wb = _mm_loadu_si128(reinterpret_cast<const __m128i*>(w + n * ldw));
    const __m256 w0 = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(wb));
    const __m256 w1 = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(wb, 8)));
    for (int r = 0; r < rows; ++r) {
      const __m256 g = _mm256_set1_ps(gs[r * gs_ld + n]);
      a[r][0] = _mm256_add_ps(a[r][0], _mm256_mul_ps(g, w0));
      a[r][1] = _mm256_add_ps(a[r][1], _mm256_mul_ps(g, w1));
    }
  }
  for (int r = 0; r < rows; ++r) {
    _mm256_storeu_ps(acc[r], a[r][0]);
    _mm256_storeu_ps(acc[r] + 8, a[r][1]);
  }
}

void dot_columns8_avx2(const float* const* x, int rows, const float* wt, int64_t K,
                       float (*out)[8]) {
  __m256 acc[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(),
                   _mm256_setzero_ps()};
  for (int64_t k = 0; k < K; ++k) {
    const __m256 wv = _mm256_loadu_ps(wt + k * 8);
    for (int r = 0; r < rows; ++r)
      acc[r] = _mm256_add_ps(acc[r], _mm256_mul_ps(_mm256_set1_ps(x[r][k]), wv));
  }
  for (int r = 0; r < rows; ++r) _mm256_storeu_ps(out[r], acc[r]);
}

}  // namespace lt8::cpu::simd

#pragma GCC pop_options
#else
// Not x86: active_cpu_isa() is always kScalar, so these are never called.
void lt8::cpu::simd::grad_rows16_avx2(float (*)[16], const float*, int64_t, int, const int8_t*,
                                      int64_t, int64_t) {
  std::abort();
}
void lt8::cpu::simd::dot_columns8_avx2(const float* const*, int, const float*, int64_t,
                                       float (*)[8]) {
  std::abort();
}
#endif
