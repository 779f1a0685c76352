// Weight-only int8 linear on CUDA (the force_no_igemmlt path): out = x @ (CB * SCB/127)^T + bias.
// One warp per output column n and a block of kRows activation rows: the warp streams the int8
// weight row once per block and reuses it for kRows rows of x. Built for small M (decode);
// correctness first, tuned later. CPU twin: weight_only_cpu.cc.
#include <algorithm>

#include "common/cuda_check.cuh"
#include "common/device_types.cuh"
#include "common/numerics.h"
#include "internal.h"

namespace lt8 {
namespace gpu {
namespace {

constexpr int kWarps = 8;  // output columns per block
constexpr int kRows = 8;   // activation rows per block

template <typename T>
__global__ void weight_linear_kernel(const T* __restrict__ x, const int8_t* __restrict__ CB,
                                     const float* __restrict__ SCB, DType bias_dtype,
                                     const void* __restrict__ bias, int64_t M, int64_t N, int64_t K,
                                     T* __restrict__ out) {
  const int lane = threadIdx.x & 31;
  const int64_t n = static_cast<int64_t>(blockIdx.x) * kWarps + (threadIdx.x >> 5);
  if (n >= N) return;
  const int8_t* w = CB + n * K;
  const float b = bias != nullptr ? load_float_any(bias_dtype, bias, n) : 0.0f;
  // Grid-stride over blocks of kRows rows, so any M fits in gridDim.y.
  for (int64_t m0 = static_cast<int64_t>(blockIdx.y) * kRows; m0 < M;
       m0 += static_cast<int64_t>(gridDim.y) * kRows) {
    const int rows = M - m0 < kRows ? static_cast<int>(M - m0) : kRows;
    float acc[kRows];
#pragma unroll
    for (int r = 0; r < kRows; ++r) acc[r] = 0.0f;
    for (int64_t k = lane; k < K; k += 32) {
      const float wk = weight_value(w[k], SCB[n]);  // dequantized: sums stay at result scale
#pragma unroll
      for (int r = 0; r < kRows; ++r)
        if (r < rows) acc[r] += to_float(x[(m0 + r) * K + k]) * wk;
    }
#pragma unroll
    for (int r = 0; r < kRows; ++r)
#pragma unroll
      for (int off = 16; off > 0; off >>= 1) acc[r] += __shfl_xor_sync(0xffffffffu, acc[r], off);
    if (lane == 0) {
      for (int r = 0; r < rows; ++r) {
        float v = acc[r];
        if (bias != nullptr) v += b;
        out[(m0 + r) * N + n] = from_float<T>(v);
      }
    }
  }
}

}  // namespace

Status int8_weight_linear(const Exec& ex, DType x_dtype, const void* x, const int8_t* CB,
                          const float* SCB, DType bias_dtype, const void* bias, int64_t M,
                          int64_t N, int64_t K, void* out) {
  if (M == 0 || N == 0) return Status::Ok();
  DeviceGuard guard(ex);
  if (!guard.ok()) return guard.status();
  const int64_t row_blocks = std::min<int64_t>((M + kRows - 1) / kRows, 65535);
  dim3 grid(static_cast<unsigned>((N + kWarps - 1) / kWarps), static_cast<unsigned>(row_blocks));
  return dispatch_float(x_dtype, [&](auto tag) {
    using T = decltype(tag);
    weight_linear_kernel<T><<<grid, kWarps * 32, 0, stream_of(ex)>>>(
        static_cast<const T*>(x), CB, SCB, bias_dtype, bias, M, N, K, static_cast<T*>(out));
    LT8_CHECK_LAUNCH("weight_linear_kernel");
    return Status::Ok();
  });
}

}  // namespace gpu
}  // namespace lt8
