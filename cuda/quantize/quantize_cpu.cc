// CPU row quantization, outlier mask, outlier compaction and dequantization: the CPU twins of
// quantize.cu, same contracts (see lt8.h) and the same arithmetic (common/numerics.h). The
// scalar loops below are the definition; the AVX2 kernels (cpu_simd/rows_simd.h) repeat their
// float operations lane-wise and are used when the CPU has them (bit-identical either way).
#include "quantize/quantize_cpu.h"

#include <algorithm>

#include "common/host_types.h"
#include "common/numerics.h"
#include "cpu_simd/cpu_isa.h"
#include "cpu_simd/rows_simd.h"
#include "cpu_simd/thread_pool.h"

namespace lt8::cpu {
namespace {

template <typename T>
void outlier_mask_scalar(const T* x, int64_t M, int64_t K, float threshold, uint8_t* mask) {
  for (int64_t m = 0; m < M; ++m)
    for (int64_t k = 0; k < K; ++k)
      if (is_outlier(load(x[m * K + k]), threshold)) mask[k] = 1;
}

// One row given the outlier mask: NaN-winning absmax over the other columns, then q.
template <typename T>
void quantize_row_scalar(const T* row, int64_t K, const uint8_t* mask, int8_t* q,
                         float* row_scale) {
  float amax = 0.0f;
  for (int64_t k = 0; k < K; ++k)
    if (!mask[k]) amax = absmax_step(amax, load(row[k]));
  *row_scale = amax;
  for (int64_t k = 0; k < K; ++k) q[k] = mask[k] ? 0 : quantize_value(load(row[k]), amax);
}

template <typename T>
void quantize_typed(DType t, const T* x, int64_t M, int64_t K, float threshold, int8_t* q,
                    float* row_scale, uint8_t* mask) {
  const bool simd = active_cpu_isa() >= CpuIsa::kAvx2;
  std::fill(mask, mask + K, uint8_t{0});
  if (threshold > 0.0f) {
    if (simd) {
      simd::outlier_mask_avx2(t, x, M, K, threshold, mask);
    } else {
      outlier_mask_scalar(x, M, K, threshold, mask);
    }
  }
  // Rows in chunks of ~256K elements (~0.15 ms with AVX2), so that small inputs stay on the
  // calling thread: waking a helper costs more than a smaller chunk's work.
  const int64_t per = std::max<int64_t>(1, (int64_t{1} << 18) / std::max<int64_t>(K, 1));
  parallel_for((M + per - 1) / per, cpu_threads(), [&](int64_t task) {
    for (int64_t m = task * per; m < std::min(M, (task + 1) * per); ++m) {
      if (simd && simd::quantize_row_avx2(t, x + m * K, K, mask, q + m * K, row_scale + m))
        continue;
      quantize_row_scalar(x + m * K, K, mask, q + m * K, row_scale + m);
    }
  });
}

}  // namespace

int32_t compact_outliers(const uint8_t* mask, int64_t K, int32_t* idx) {
  int32_t count = 0;
  for (int64_t k = 0; k < K; ++k)
    if (mask[k]) idx[count++] = static_cast<int32_t>(k);
  return count;
}

Status quantize_rows(DType x_dtype, const void* x, int64_t M, int64_t K, float threshold, int8_t* q,
                     float* row_scale, uint8_t* outlier_mask) {
  return dispatch_float(x_dtype, [&](auto tag) {
    using T = decltype(tag);
    quantize_typed(x_dtype, static_cast<const T*>(x), M, K, threshold, q, row_scale, outlier_mask);
    return Status::Ok();
  });
}

Status dequantize_rows(const int8_t* q, const float* row_scale, int64_t M, int64_t K,
                       DType out_dtype, void* out) {
  return dispatch_float(out_dtype, [&](auto tag) {
    using T = decltype(tag);
    T* o = static_cast<T*>(out);
    for (int64_t m = 0; m < M; ++m) {
      float s = row_scale[m] * kInv127;
      for (int64_t k = 0; k < K; ++k) o[m * K + k] = store<T>(static_cast<float>(q[m * K + k]) * s);
    }
    return Status::Ok();
  });
}

}  // namespace lt8::cpu
