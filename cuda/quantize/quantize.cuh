// Row quantization stage of the CUDA kernels, as the fused linear op (linear/int8_linear.cu)
// runs it: outlier mask, outlier compaction, row quantization. Defined in quantize.cu.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "common/numerics.h"
#include "lt8.h"

namespace lt8 {
namespace gpu {

// NaN-winning absmax of two partial results (both >= 0 or NaN).
__device__ __forceinline__ float absmax_combine(float a, float b) {
  return absmax_step(a, b);
}

// Row quantization in two launches. launch_outlier_mask: zeroes mask, then sets mask[k] for the
// outlier columns (threshold > 0). launch_quantize_rows: row_scale (the absmax over the other
// columns) and q (outlier columns zeroed) from x and mask; with skip_count (the device-side
// outlier count) and *skip_count == K, only row_scale (all 0) is written: for callers whose int8
// GEMM then stands aside and never reads q. T: float, __half or __nv_bfloat16.
template <typename T>
Status launch_outlier_mask(cudaStream_t st, const T* x, int64_t M, int64_t K, float threshold,
                           uint8_t* mask);
template <typename T>
Status launch_quantize_rows(cudaStream_t st, const T* x, int64_t M, int64_t K, const uint8_t* mask,
                            const int32_t* skip_count, int8_t* q, float* row_scale);

// idx[0 .. *count) = the ascending k with mask[k] != 0; one block, the count stays on the device.
Status launch_compact_outliers(cudaStream_t st, const uint8_t* mask, int64_t K, int32_t* idx,
                               int32_t* count);

}  // namespace gpu
}  // namespace lt8
