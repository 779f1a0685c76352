// The fused linear op's path for larger batches on tensor cores: cuBLASLt's int8 GEMM into int32
// scratch, then lt8's epilogue (dequant, outlier terms, bias). Defined in cublaslt_linear.cu.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "internal.h"

namespace lt8 {
namespace gpu {

// The tensor-core path: cuBLASLt GEMM, then the epilogue. Returns false (nothing enqueued) when
// cuBLASLt cannot take the problem; *err reports a failure after which the caller must stop.
template <typename T>
bool launch_linear_tensor_core(cudaStream_t st, const T* x, const int8_t* CB, const float* SCB,
                               const LinearScratch& s, float threshold, DType bias_dtype,
                               const void* bias, int64_t M, int64_t N, int64_t K, T* out,
                               Status* err);

}  // namespace gpu
}  // namespace lt8
