// The fused linear op's path for larger batches on tensor cores: cuBLASLt's int8 GEMM into int32
// scratch, then lt8's epilogue (dequant, outlier terms, bias). Defined in cublaslt_linear.cu.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "internal.h"

namespace lt8 {
namespace gpu {

// False when the tensor-core path cannot run at all (no int32 scratch, or too many rows for its
// epilogue's grid): the caller takes its fallback GEMM.
bool tensor_core_path_fits(const LinearScratch& s, int64_t M);

// True when the tensor-core path is to use CUTLASS's sm_90a int8 GEMM (the caller passes it to
// launch_linear_tensor_core), which stands aside on the device when every column is an outlier
// column, so that the quantized activations are then never read.
bool takes_int8_gemm_sm90(const int8_t* CB, const LinearScratch& s, int64_t M, int64_t N,
                          int64_t K);

// The tensor-core path: the int8 GEMM (CUTLASS's when int8_sm90, from takes_int8_gemm_sm90,
// else cuBLASLt's), then the epilogue. Returns false (nothing enqueued) when cuBLASLt cannot take
// the problem; *err reports a failure after which the caller must stop.
template <typename T>
bool launch_linear_tensor_core(cudaStream_t st, const T* x, const int8_t* CB, const float* SCB,
                               const LinearScratch& s, float threshold, DType bias_dtype,
                               const void* bias, int64_t M, int64_t N, int64_t K, bool int8_sm90,
                               T* out, Status* err);

}  // namespace gpu
}  // namespace lt8
