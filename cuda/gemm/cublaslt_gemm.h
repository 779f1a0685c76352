// Int8 tensor-core GEMM through cuBLASLt (CUDA builds only; used by gemm/int8_gemm.cu and linear/).
//
// cuBLASLt is loaded at run time (dlopen), not linked: lt8 keeps building where no cuBLAS is
// installed (the CPU build machines have nvcc but no cuBLAS headers), and at run time it uses
// the libcublasLt that torch or jaxlib has already loaded into the process. Without one, or when
// cuBLASLt has no algorithm for a problem, the callers fall back to lt8's own dp4a GEMM.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "lt8.h"

namespace lt8 {
namespace gpu {

// Lets (default) or stops the kernels using cuBLASLt; false when no libcublasLt could be loaded.
void set_cublaslt_enabled(bool enabled);
bool cublaslt_available();
// The flag set_cublaslt_enabled sets: also whether the Hopper CUTLASS int8 GEMM may run (off: the
// dp4a GEMM, which tests compare with the CPU bit for bit).
bool cublaslt_enabled();

// Enqueues C (M, N) int32 = A (M, K) int8 @ B (N, K) int8 ^T (both row-major, exact) on `stream`
// and returns true; returns false (nothing enqueued, *err untouched) when cuBLASLt is unavailable,
// disabled (set_cublaslt_enabled / LT8_DISABLE_CUBLASLT=1) or has no algorithm for the problem,
// and false with *err set when a cuBLASLt call fails. Uses the current device.
bool cublaslt_int8_gemm(cudaStream_t stream, const int8_t* A, const int8_t* B, int64_t M, int64_t N,
                        int64_t K, int32_t* C, void* workspace, size_t workspace_bytes,
                        Status* err);

}  // namespace gpu
}  // namespace lt8
