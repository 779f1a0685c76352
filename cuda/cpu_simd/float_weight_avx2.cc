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

void axpy_int8_rows_avx2(float* const* acc, const float* gs, int rows, const int8_t* w, int64_t k0,
                         int64_t k1) {
  int64_t k = k0;
  for (; k + 8 <= k1; k += 8) {
    const __m256 wv = _mm256_cvtepi32_ps(
        _mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(w + k))));
    for (int r = 0; r < rows; ++r) {
      const __m256 prod = _mm256_mul_ps(_mm256_set1_ps(gs[r]), wv);
      _mm256_storeu_ps(acc[r] + k, _mm256_add_ps(_mm256_loadu_ps(acc[r] + k), prod));
    }
  }
  for (; k < k1; ++k)
    for (int r = 0; r < rows; ++r) acc[r][k] += gs[r] * static_cast<float>(w[k]);
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
void lt8::cpu::simd::axpy_int8_rows_avx2(float* const*, const float*, int, const int8_t*, int64_t,
                                         int64_t) {
  std::abort();
}
void lt8::cpu::simd::dot_columns8_avx2(const float* const*, int, const float*, int64_t,
                                       float (*)[8]) {
  std::abort();
}
#endif
