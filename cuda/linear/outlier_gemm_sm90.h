// The Hopper (sm_90a) outlier GEMM of the tensor-core outlier path (outlier_gemm_sm90.cu, CUTLASS).
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
// of `dtype`, zero-padded past the count up to the tile (outlier_tc.cu's gather). workspace:
// kOutlierGemmSm90WorkspaceBytes, 256-byte aligned.
Status launch_outlier_gemm_sm90(cudaStream_t st, DType dtype, const void* xg, const void* wg,
                                int64_t Kcap, const int32_t* count, int min_count, int64_t M,
                                int64_t N, float* d, void* workspace);

}  // namespace gpu
}  // namespace lt8
