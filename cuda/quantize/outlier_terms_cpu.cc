// CPU twin of outlier_terms.cu: the outlier columns' float terms of the fused linear op added onto
// a float32 base, in the fused epilogue's order (ascending k, one rounding per multiply and per
// add), so that base = the dequantized int8 product gives the fused op's value before the bias.
#include <algorithm>
#include <vector>

#include "common/host_types.h"
#include "common/numerics.h"
#include "cpu_simd/thread_pool.h"
#include "internal.h"
#include "quantize/quantize_cpu.h"

namespace lt8::cpu {

Status add_outlier_terms(DType x_dtype, const void* x, const uint8_t* outlier_mask,
                         const int8_t* CB, const float* SCB, const float* base, int64_t M,
                         int64_t N, int64_t K, float* out) {
  std::vector<int32_t> idx(static_cast<size_t>(K));
  const int32_t count = compact_outliers(outlier_mask, K, idx.data());
  // The weight's outlier columns as float, (count, N): the values weight_value() gives.
  std::vector<float> ow(static_cast<size_t>(count) * N);
  for (int32_t j = 0; j < count; ++j)
    for (int64_t n = 0; n < N; ++n) ow[j * N + n] = weight_value(CB[n * K + idx[j]], SCB[n]);
  return dispatch_float(x_dtype, [&](auto tag) {
    const auto* xt = static_cast<const decltype(tag)*>(x);
    const int64_t per = std::max<int64_t>(1, (int64_t{1} << 16) / std::max<int64_t>(N, 1));
    parallel_for((M + per - 1) / per, cpu_threads(), [&](int64_t task) {
      std::vector<float> xr(static_cast<size_t>(count));
      for (int64_t m = task * per; m < std::min(M, (task + 1) * per); ++m) {
        for (int32_t j = 0; j < count; ++j) xr[j] = load(xt[m * K + idx[j]]);
        for (int64_t n = 0; n < N; ++n) {
          float v = base[m * N + n];
          for (int32_t j = 0; j < count; ++j) v += xr[j] * ow[j * N + n];
          out[m * N + n] = v;
        }
      }
    });
    return Status::Ok();
  });
}

}  // namespace lt8::cpu
