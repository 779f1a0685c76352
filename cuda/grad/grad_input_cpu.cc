// CPU input gradient of the int8 linear op (the CPU twin of grad_input.cu):
// grad_x[m, k] = sum_n (g[m, n] * (SCB[n] / 127)) * CB[n, k] in float, n ascending.
#include <algorithm>
#include <vector>

#include "common/host_types.h"
#include "common/numerics.h"
#include "common/parallel_rows.h"

namespace lt8::cpu {
namespace {

template <typename T>
void grad_input_impl(const T* g, const int8_t* CB, const float* SCB, int64_t M, int64_t N,
                     int64_t K, T* grad_x) {
  parallel_rows(M, double(M) * N * K, [&](int64_t m0, int64_t m1) {
    std::vector<float> acc(static_cast<size_t>(K));
    for (int64_t m = m0; m < m1; ++m) {
      std::fill(acc.begin(), acc.end(), 0.0f);
      for (int64_t n = 0; n < N; ++n) {
        float gs = load(g[m * N + n]) * (SCB[n] * kInv127);
        const int8_t* wrow = CB + n * K;
        for (int64_t k = 0; k < K; ++k) acc[k] += gs * static_cast<float>(wrow[k]);
      }
      for (int64_t k = 0; k < K; ++k) grad_x[m * K + k] = store<T>(acc[k]);
    }
  });
}

}  // namespace

Status int8_linear_grad_input(DType g_dtype, const void* grad_out, const int8_t* CB,
                              const float* SCB, int64_t M, int64_t N, int64_t K, void* grad_x) {
  return dispatch_float(g_dtype, [&](auto tag) {
    using T = decltype(tag);
    grad_input_impl(static_cast<const T*>(grad_out), CB, SCB, M, N, K, static_cast<T*>(grad_x));
    return Status::Ok();
  });
}

}  // namespace lt8::cpu
