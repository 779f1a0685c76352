// Outlier columns on tensor cores for the fused linear op's large-batch path (outlier_tc.cu).
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "internal.h"

namespace lt8 {
namespace gpu {

// Up to this many outlier columns the exact CUDA-core epilogue (bit-identical to the CPU) runs;
// above it the tensor-core path. Equal to kStagedOutliers: the exact epilogue stages that many.
constexpr int kOutlierTcMinCount = kStagedOutliers;
// Widest k-tile of the tensor-core GEMM; the gather buffers' rows are padded to it.
constexpr int kOutlierTcKTile = 64;

// Gather buffers in the fused op's scratch (LinearScratch::tc_x / tc_w): Xg (M, stride) and
// Wg (N, stride), 2-byte elements of x's dtype.
struct OutlierTcScratch {
  void* xg = nullptr;
  void* wg = nullptr;
};

// Row stride (elements) of the gather buffers: K rounded up to the GEMM's k-tile.
int64_t outlier_tc_row_stride(int64_t K);
// True when the current device (sm_80+) and x's dtype (float16, bfloat16) take the path.
bool outlier_tc_supported(DType x_dtype, int64_t M, int64_t N);

// Enqueues the gather and the tensor-core GEMM + epilogue. Both kernels return at once unless
// *outlier_count > kOutlierTcMinCount, so the caller also enqueues the exact epilogue, told to
// return at once in the opposite case.
Status launch_outlier_tc(cudaStream_t st, DType x_dtype, const void* x, const int8_t* CB,
                         const float* SCB, const int32_t* acc, const float* row_scale,
                         const int32_t* outlier_idx, const int32_t* outlier_count, DType bias_dtype,
                         const void* bias, int64_t M, int64_t N, int64_t K,
                         const OutlierTcScratch& s, void* out);

}  // namespace gpu
}  // namespace lt8
