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
// True when the current device (sm_80+) and the grid (M) can take the path. Whether the call
// qualifies (16-bit x, outliers on) is decided where the scratch is carved: s.tc_x != nullptr.
bool outlier_tc_supported(int64_t M);
// True when the path runs its GEMMs on CUTLASS's sm_90a kernels (linear/outlier_gemm_sm90.h):
// a build with them, a Hopper device, the scratch carved for them (tc_d), N % 4 == 0, and
// LT8_OUTLIER_TC_WMMA not "1". Then the int8 GEMM may be CUTLASS's too (cublaslt_linear.cu).
bool outlier_tc_takes_sm90(const float* tc_d, int64_t M, int64_t N);

// Enqueues the gather into s.tc_x / s.tc_w and the tensor-core GEMM + epilogue reading s.acc,
// s.row_scale and the compacted outlier columns. Both kernels return at once unless
// *s.outlier_count > kOutlierTcMinCount, so the caller also enqueues the exact epilogue, told to
// return at once in the opposite case. x_dtype: float16 or bfloat16.
Status launch_outlier_tc(cudaStream_t st, DType x_dtype, const void* x, const int8_t* CB,
                         const float* SCB, const LinearScratch& s, DType bias_dtype,
                         const void* bias, int64_t M, int64_t N, int64_t K, void* out);

// The same gather and tensor-core GEMM for add_outlier_terms (x 16-bit): out (M, N) float32 =
// base + the outlier terms, with s.outlier_idx / s.outlier_count compacted by the caller. Both
// kernels return at once unless *s.outlier_count > kOutlierTcMinCount (the caller's exact
// kernel covers the other case). out may be base.
Status launch_outlier_tc_terms(cudaStream_t st, DType x_dtype, const void* x, const int8_t* CB,
                               const float* SCB, const TermsScratch& s, const float* base,
                               int64_t M, int64_t N, int64_t K, float* out);

}  // namespace gpu
}  // namespace lt8
