// gpu::int8_gemm: C = A . B^T in exact int32, through cuBLASLt's int8 tensor cores when it takes
// the problem, else lt8's dp4a GEMM (dp4a_gemm.cuh). Same contract as int8_gemm_cpu.cc.
#include <cstdint>

#include "common/cuda_check.cuh"
#include "common/launch_shape.cuh"
#include "gemm/cublaslt_gemm.h"
#include "gemm/dp4a_gemm.cuh"
#include "gemm/gemm_tile.cuh"
#include "internal.h"

namespace lt8 {
namespace gpu {
namespace {

// Plain int32 store.
struct StoreI32Epilogue {
  static constexpr int kSmemBytes = 0;
  int32_t* C;
  int64_t M, N;
  bool vec;  // N % 4 == 0 and C 16-byte aligned

  __device__ __forceinline__ void operator()(const int32_t (&acc)[8][8], int64_t m0, int64_t n0,
                                             int /*tid*/, int ty, int tx,
                                             unsigned char* /*smem*/) const {
    for_each_fragment_quad(m0, n0, ty, tx, M, N, [&](int i, int h, int64_t m, int64_t n) {
      int32_t* p = C + m * N + n;
      if (vec) {
        *reinterpret_cast<int4*>(p) =
            make_int4(acc[i][4 * h], acc[i][4 * h + 1], acc[i][4 * h + 2], acc[i][4 * h + 3]);
      } else {
#pragma unroll
        for (int e = 0; e < 4; ++e)
          if (n + e < N) p[e] = acc[i][4 * h + e];
      }
    });
  }
};

}  // namespace

Status int8_gemm(const Exec& ex, const int8_t* A, const int8_t* B, int64_t M, int64_t N, int64_t K,
                 int32_t* C) {
  if (M == 0 || N == 0) return Status::Ok();
  DeviceGuard guard(ex);
  if (!guard.ok()) return guard.status();
  cudaStream_t st = stream_of(ex);
  if (K == 0) {
    const size_t bytes = static_cast<size_t>(M) * static_cast<size_t>(N) * sizeof(int32_t);
    LT8_CUDA_RETURN_IF_ERROR(cudaMemsetAsync(C, 0, bytes, st), "cudaMemsetAsync(C)");
    return Status::Ok();
  }
  Status err;
  if (cublaslt_int8_gemm(st, A, B, M, N, K, C, nullptr, 0, &err)) return Status::Ok();
  if (!err.ok()) return err;
  StoreI32Epilogue epi{C, M, N, N % 4 == 0 && is_aligned(C, 16)};
  return launch_gemm(st, A, B, M, N, K, epi, "int8_gemm_kernel");
}

}  // namespace gpu
}  // namespace lt8
