// CPU weight-only int8 linear (the force_no_igemmlt path; the CPU twin of weight_only.cu):
// out = x @ (CB * SCB / 127)^T + bias in float.
#include <vector>

#include "common/host_types.h"
#include "common/numerics.h"
#include "common/parallel_rows.h"

namespace lt8::cpu {
namespace {

template <typename T>
void weight_linear_impl(const T* x, const int8_t* CB, const float* SCB, DType bias_dtype,
                        const void* bias, int64_t M, int64_t N, int64_t K, T* out) {
  parallel_rows(M, double(M) * N * K, [&](int64_t m0, int64_t m1) {
    std::vector<float> xf(static_cast<size_t>(K));
    for (int64_t m = m0; m < m1; ++m) {
      for (int64_t k = 0; k < K; ++k) xf[k] = load(x[m * K + k]);
      for (int64_t n = 0; n < N; ++n) {
        const int8_t* wrow = CB + n * K;
        // Dequantized weight inside the sum: partial sums stay at the result's scale (scaling
        // afterwards would overflow for huge activations and tiny weights).
        const float scale = SCB[n];
        float acc = 0.0f;
        for (int64_t k = 0; k < K; ++k) acc += xf[k] * weight_value(wrow[k], scale);
        float v = acc;
        if (bias != nullptr) v += load_any(bias_dtype, bias, n);
        out[m * N + n] = store<T>(v);
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
