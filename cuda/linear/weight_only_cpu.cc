// CPU weight-only int8 linear (the force_no_igemmlt path; the CPU twin of weight_only.cu):
// out = x @ (CB * SCB / 127)^T + bias in float. Each output is a sum over k ascending of
// x[m, k] * weight_value(CB[n, k], SCB[n]) (the dequantized weight inside the sum: partial sums
// stay at the result's scale, where scaling afterwards would overflow for huge activations and
// tiny weights), then the bias. Blocks of kRowsPerTask rows x kColsPerTask columns; within a
// block, groups of 8 columns with their dequantized weights transposed (K x 8), so that the AVX2
// loop (cpu_simd/float_weight_avx2.cc) runs the 8 sums of a row side by side, each in the
// scalar order: the same bits as the scalar loop.
#include <algorithm>
#include <vector>

#include "common/host_types.h"
#include "common/numerics.h"
#include "cpu_simd/cpu_isa.h"
#include "cpu_simd/rows_simd.h"
#include "cpu_simd/thread_pool.h"

namespace lt8::cpu {
namespace {

constexpr int64_t kRowsPerTask = 64;
constexpr int64_t kColsPerTask = 64;

template <typename T>
void weight_linear_scalar(const float* xf, int64_t rows, const int8_t* CB, const float* SCB,
                          DType bias_dtype, const void* bias, int64_t N, int64_t K, int64_t m0,
                          int64_t n0, int64_t n1, T* out) {
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t n = n0; n < n1; ++n) {
      const int8_t* wrow = CB + n * K;
      const float scale = SCB[n];
      float acc = 0.0f;
      for (int64_t k = 0; k < K; ++k) acc += xf[r * K + k] * weight_value(wrow[k], scale);
      float v = acc;
      if (bias != nullptr) v += load_any(bias_dtype, bias, n);
      out[(m0 + r) * N + n] = store<T>(v);
    }
}

template <typename T>
void weight_linear_impl(const T* x, const int8_t* CB, const float* SCB, DType bias_dtype,
                        const void* bias, int64_t M, int64_t N, int64_t K, T* out) {
  const bool simd = active_cpu_isa() >= CpuIsa::kAvx2;
  parallel_blocks(
      M, kRowsPerTask, N, kColsPerTask, double(M) * N * K,
      [&](int64_t m0, int64_t m1, int64_t n0, int64_t n1) {
        const int64_t rows = m1 - m0;
        thread_local std::vector<float> xf, wt;  // reused by this thread's next blocks and calls
        xf.resize(static_cast<size_t>(rows * K));
        for (int64_t i = 0; i < rows * K; ++i) xf[i] = load(x[m0 * K + i]);
        if (!simd) {
          weight_linear_scalar(xf.data(), rows, CB, SCB, bias_dtype, bias, N, K, m0, n0, n1, out);
          return;
        }
        wt.resize(static_cast<size_t>(K * 8));
        for (int64_t g0 = n0; g0 < n1; g0 += 8) {
          const int width = static_cast<int>(std::min<int64_t>(8, n1 - g0));
          for (int j = 0; j < 8; ++j)  // columns past N: zero weights, their sums are dropped
            for (int64_t k = 0; k < K; ++k)
              wt[k * 8 + j] = j < width ? weight_value(CB[(g0 + j) * K + k], SCB[g0 + j]) : 0.0f;
          for (int64_t r0 = 0; r0 < rows; r0 += 4) {
            const int rr = static_cast<int>(std::min<int64_t>(4, rows - r0));
            const float* xr[4];
            for (int r = 0; r < rr; ++r) xr[r] = xf.data() + (r0 + r) * K;
            float sums[4][8];
            simd::dot_columns8_avx2(xr, rr, wt.data(), K, sums);
            for (int r = 0; r < rr; ++r)
              for (int j = 0; j < width; ++j) {
                float v = sums[r][j];
                if (bias != nullptr) v += load_any(bias_dtype, bias, g0 + j);
                out[(m0 + r0 + r) * N + g0 + j] = store<T>(v);
              }
          }
        }
      });
}

}  // namespace

Status int8_weight_linear(DType x_dtype, const void* x, const int8_t* CB, const float* SCB,
                          DType bias_dtype, const void* bias, int64_t M, int64_t N, int64_t K,
                          void* out) {
  return dispatch_float(x_dtype, [&](auto tag) {
    using T = decltype(tag);
    weight_linear_impl(static_cast<const T*>(x), CB, SCB, bias_dtype, bias, M, N, K,
                       static_cast<T*>(out));
    return Status::Ok();
  });
}

}  // namespace lt8::cpu
