// The Hopper (sm_90a) GEMMs of the fused op's many-outlier path (outlier_gemm_sm90.cu, CUTLASS):
// the 16-bit outlier GEMM and the int8 GEMM, both with their shapes decided on the device.
// Declared always; defined only in builds with LT8_WITH_CUTLASS_SM90 (CMakeLists.txt).
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "internal.h"

namespace lt8 {
namespace gpu {

// True when the current device runs sm_90a code (compute capability 9.0) and D's rows (N floats)
// suit TMA stores. The build must also have LT8_WITH_CUTLASS_SM90.
bool outlier_gemm_sm90_supported(int64_t M, int64_t N);

// d (M, N) float32 = xg (M, Kcap) @ wg (N, Kcap)^T over the first ceil(*count / kOutlierGatherTile)
// k-tiles (count read on the device); writes nothing when *count <= min_count. xg / wg: 16-bit
// of `dtype`, zero-padded past the count up to the tile (outlier_tc.cu's gather). When every
// column is an outlier column (*count == K) and x (M, K) suits TMA (outlier_gemm_x_direct), x
// itself is A and xg is not read. workspace: kOutlierGemmSm90WorkspaceBytes, 256-byte aligned,
// shared with launch_int8_gemm_sm90 (each uses its own half).
Status launch_outlier_gemm_sm90(cudaStream_t st, DType dtype, const void* xg, const void* wg,
                                int64_t Kcap, const int32_t* count, int min_count, int64_t M,
                                int64_t N, const void* x, int64_t K, float* d, void* workspace);

// True when x (M, K) of a 16-bit dtype can be the outlier GEMM's A directly.
inline bool outlier_gemm_x_direct(const void* x, int64_t K) {
  return K % 8 == 0 && reinterpret_cast<uintptr_t>(x) % 16 == 0;
}

// True when the int8 GEMM below can run: compute capability 9.0 and TMA-aligned operands.
bool int8_gemm_sm90_supported(const int8_t* q, const int8_t* CB, int64_t M, int64_t N, int64_t K);

// acc (M, N) int32 = q (M, K) @ CB (N, K)^T, exact, in place of cuBLASLt on the many-outlier
// path. When every column is an outlier column (*count == K > min_count) q is all zeros and it
// computes nothing: then acc is not written, and the epilogue (outlier_tc.cu) reads it as 0.
Status launch_int8_gemm_sm90(cudaStream_t st, const int8_t* q, const int8_t* CB, int64_t M,
                             int64_t N, int64_t K, const int32_t* count, int min_count,
                             int32_t* acc, void* workspace);

}  // namespace gpu
}  // namespace lt8
