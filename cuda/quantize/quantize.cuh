// Row quantization stage of the CUDA kernels, as the fused linear op (linear/int8_linear.cu)
// runs it: outlier mask + row quantization, then outlier compaction. Defined in quantize.cu.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "common/numerics.h"
#include "internal.h"
#include "lt8.h"

namespace lt8 {
namespace gpu {

// NaN-winning absmax of two partial results (both >= 0 or NaN).
__device__ __forceinline__ float absmax_combine(float a, float b) {
  return absmax_step(a, b);
}

// Zeroes mask, sets mask[k] for the outlier columns (threshold > 0), then writes row_scale (the
// absmax over the other columns) and q (outlier columns zeroed). T: float, __half or
// __nv_bfloat16.
template <typename T>
Status launch_quantize(cudaStream_t st, const T* x, int64_t M, int64_t K, float threshold,
                       int8_t* q, float* row_scale, uint8_t* mask);

// idx[0 .. *count) = the ascending k with mask[k] != 0; one block, the count stays on the device.
Status launch_compact_outliers(cudaStream_t st, const uint8_t* mask, int64_t K, int32_t* idx,
                               int32_t* count);

// launch_quantize + launch_compact_outliers in one cooperative launch (prepare_large_batch.cu)
// for 16-bit x with K % 8 == 0, threshold > 0, on s.q, s.row_scale, s.outlier_idx and
// s.outlier_count; s.mask holds the mask as K bits instead of K bytes. zero_when_all: when every
// column is an outlier column, q is left unwritten (the caller's int8 GEMM stands aside then).
// Returns false when it does not apply (nothing enqueued unless *err is set, which the caller
// must return).
template <typename T>
bool launch_prepare_large_batch(cudaStream_t st, const T* x, int64_t M, int64_t K,
                                float threshold, bool zero_when_all, const LinearScratch& s,
                                Status* err);

}  // namespace gpu
}  // namespace lt8
