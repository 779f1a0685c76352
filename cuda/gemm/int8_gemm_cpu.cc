// CPU int8 GEMM (the CPU twin of int8_gemm.cu): C = A . B^T, exact int32 sums, through the
// run-time-dispatched SIMD GEMM of cpu_simd/int8_gemm.h.
#include "cpu_simd/int8_gemm.h"
#include "internal.h"

namespace lt8::cpu {

Status int8_gemm(const int8_t* A, const int8_t* B, int64_t M, int64_t N, int64_t K, int32_t* C) {
  if (!int8_gemm_cpu(A, B, M, N, K, C)) return Status::Internal("out of host memory in int8_gemm");
  return Status::Ok();
}

}  // namespace lt8::cpu
