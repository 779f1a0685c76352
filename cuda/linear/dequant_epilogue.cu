// gpu::dequant_epilogue: out = dequant(C, row_scale, col_scale) (+ bias) of an int32 GEMM result,
// elementwise, grid-stride, 4 elements per step when the row length is a multiple of 4 and the
// pointers are aligned. Same contract and order as dequant_epilogue_cpu.cc.
#include <cstdint>

#include "common/cuda_check.cuh"
#include "common/device_types.cuh"
#include "common/launch_shape.cuh"
#include "common/numerics.h"
#include "internal.h"

namespace lt8 {
namespace gpu {
namespace {

template <typename T, bool VEC>
__global__ void __launch_bounds__(kThreads)
    dequant_epilogue_kernel(const int32_t* __restrict__ C, const float* __restrict__ row_scale,
                            const float* __restrict__ col_scale, DType bias_dtype,
                            const void* __restrict__ bias, int64_t M, int64_t N,
                            T* __restrict__ out) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const int64_t start = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if constexpr (VEC) {
    const int64_t groups = M * N / 4;
    for (int64_t g = start; g < groups; g += stride) {
      const int64_t i = 4 * g;
      const int64_t m = i / N;
      const int64_t n = i - m * N;
      const int4 c = *reinterpret_cast<const int4*>(C + i);
      const int32_t cv[4] = {c.x, c.y, c.z, c.w};
      const float rs = row_scale[m];
      float f[4];
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        float v = dequant(cv[e], rs, col_scale[n + e]);
        if (bias != nullptr) v = __fadd_rn(v, load_float_any(bias_dtype, bias, n + e));
        f[e] = v;
      }
      store4(out + i, f);
    }
  } else {
    const int64_t total = M * N;
    for (int64_t i = start; i < total; i += stride) {
      const int64_t m = i / N;
      const int64_t n = i - m * N;
      float v = dequant(C[i], row_scale[m], col_scale[n]);
      if (bias != nullptr) v = __fadd_rn(v, load_float_any(bias_dtype, bias, n));
      out[i] = from_float<T>(v);
    }
  }
}

}  // namespace

Status dequant_epilogue(const Exec& ex, const int32_t* C, const float* row_scale,
                        const float* col_scale, DType bias_dtype, const void* bias, int64_t M,
                        int64_t N, DType out_dtype, void* out) {
  return dispatch_float(out_dtype, [&](auto tag) -> Status {
    using T = decltype(tag);
    if (M == 0 || N == 0) return Status::Ok();
    DeviceGuard guard(ex);
    if (!guard.ok()) return guard.status();
    cudaStream_t st = stream_of(ex);
    T* o = static_cast<T*>(out);
    const bool vec = N % 4 == 0 && is_aligned(C, 16) && is_aligned(o, 4 * sizeof(T));
    if (vec) {
      dequant_epilogue_kernel<T, true><<<elementwise_blocks(M * N / 4), kThreads, 0, st>>>(
          C, row_scale, col_scale, bias_dtype, bias, M, N, o);
    } else {
      dequant_epilogue_kernel<T, false><<<elementwise_blocks(M * N), kThreads, 0, st>>>(
          C, row_scale, col_scale, bias_dtype, bias, M, N, o);
    }
    LT8_CHECK_LAUNCH("dequant_epilogue_kernel");
    return Status::Ok();
  });
}

}  // namespace gpu
}  // namespace lt8
