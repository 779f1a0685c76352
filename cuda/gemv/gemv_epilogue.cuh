// What the two GEMV kernels (dp4a_gemv.cu, mma_gemv.cu) share: the wait for the preparation, the
// K chunk they stage in shared memory and their common epilogue. Header-only; include from .cu
// files only.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "common/dependent_launch.cuh"
#include "common/device_types.cuh"
#include "common/numerics.h"
#include "lt8.h"

namespace lt8 {
namespace gpu {

// The wait for the kernel that wrote q, the row scales and the outlier columns (the preparation,
// when this kernel was launched dependent on it: dependent_launch.cuh), after which the kernel
// after this one (the dense-outlier GEMV, itself a dependent launch) may start. What the
// preparation wrote is read with __ldcg (L2) from here on: the read-only path (ld.global.nc)
// assumes data that does not change while the reading kernel runs, and under a dependent launch
// it does. Before the wait a kernel may only touch its constant operands: the weights, SCB, bias.
__device__ __forceinline__ void wait_then_release() {
  wait_for_prior_kernel();
  release_dependent_kernel();
}

// The epilogue's constant operands of the block's columns (SCB and the bias) into L2 at the
// start, so that the epilogue after the weight stream does not wait on DRAM for them.
__device__ __forceinline__ void prefetch_epilogue_operands(const float* SCB, DType bias_dtype,
                                                           const void* bias, int64_t block_n0,
                                                           int64_t N) {
  if (threadIdx.x == 0 && block_n0 < N) {
    prefetch_l2_line(SCB + block_n0);
    if (bias != nullptr)
      prefetch_l2_line(static_cast<const char*>(bias) +
                       block_n0 * (bias_dtype == DType::kF32 ? 4 : 2));
  }
}

constexpr int kGemvChunk = 128;    // 16-byte words of K per staged chunk (2 KiB per row)
constexpr int kGemvOutChunk = 64;  // outlier columns staged per step of the epilogue

// Common epilogue of the GEMV kernels. sacc holds the block's int32 sums as [group][r][col]:
// `groups` groups of COLS output columns (ROWS rows each; groups <= the block's warps), the block's
// columns in order; the block's outputs are spread over its threads.
// Outlier terms: per chunk of kGemvOutChunk outlier columns, the block gathers the weights of
// its columns and the activations of its rows into shared memory in parallel (one load per
// thread, instead of a chain of dependent gathers per output). Order as the CPU: dequant,
// outlier terms in ascending k, bias.
template <typename T, int ROWS, int COLS>
__device__ __forceinline__ void gemv_epilogue(
    const int32_t* sacc, const T* __restrict__ x, const int8_t* __restrict__ CB,
    const float* __restrict__ SCB, const float* __restrict__ row_scale,
    const int32_t* __restrict__ outlier_idx, const int32_t* __restrict__ outlier_count,
    DType bias_dtype, const void* __restrict__ bias, int M, int64_t N, int64_t K, int groups,
    T* __restrict__ out) {
  constexpr int kPer = (ROWS * COLS + 31) / 32;  // outputs per thread
  constexpr int kMaxBlockCols = 32;
  // +1: the gathers below write along j (one row of CB or x per run of threads, so that runs of
  // adjacent outlier columns read adjacent bytes); the padding keeps those writes off one bank.
  __shared__ float s_w[kGemvOutChunk][kMaxBlockCols + 1];
  __shared__ float s_x[kGemvOutChunk][ROWS + 1];
  // __ldcg: these may have been written while this kernel ran (a dependent launch after the
  // preparation kernel: common/dependent_launch.cuh), which the read-only path does not allow.
  const int count = __ldcg(outlier_count);
  const int block_cols = groups * COLS, outputs = groups * ROWS * COLS;
  const int64_t block_n0 = static_cast<int64_t>(blockIdx.x) * block_cols;
  float v[kPer];
#pragma unroll
  for (int i = 0; i < kPer; ++i) {
    const int e = threadIdx.x + i * blockDim.x;
    const int col = e % COLS, r = (e / COLS) % ROWS, w = e / (COLS * ROWS);
    const int64_t n = block_n0 + w * COLS + col;
    v[i] = (e < outputs && r < M && n < N) ? dequant(sacc[e], __ldcg(row_scale + r), SCB[n]) : 0.0f;
  }
  for (int j0 = 0; j0 < count; j0 += kGemvOutChunk) {
    const int len = count - j0 < kGemvOutChunk ? count - j0 : kGemvOutChunk;
    __syncthreads();
    for (int e = threadIdx.x; e < len * block_cols; e += blockDim.x) {
      const int c = e / len, j = e % len;
      const int64_t n = block_n0 + c;
      s_w[j][c] = n < N ? weight_value(CB[n * K + __ldcg(outlier_idx + j0 + j)], SCB[n]) : 0.0f;
    }
    for (int e = threadIdx.x; e < len * M; e += blockDim.x) {
      const int r = e / len, j = e % len;
      s_x[j][r] = to_float(x[static_cast<int64_t>(r) * K + __ldcg(outlier_idx + j0 + j)]);
    }
    __syncthreads();
#pragma unroll
    for (int i = 0; i < kPer; ++i) {
      const int e = threadIdx.x + i * blockDim.x;
      const int col = e % COLS, r = (e / COLS) % ROWS, w = e / (COLS * ROWS);
      if (e < outputs && r < M)
        for (int j = 0; j < len; ++j)
          v[i] = __fadd_rn(v[i], __fmul_rn(s_x[j][r], s_w[j][w * COLS + col]));
    }
  }
#pragma unroll
  for (int i = 0; i < kPer; ++i) {
    const int e = threadIdx.x + i * blockDim.x;
    const int col = e % COLS, r = (e / COLS) % ROWS, w = e / (COLS * ROWS);
    const int64_t n = block_n0 + w * COLS + col;
    if (e >= outputs || r >= M || n >= N) continue;
    float o = v[i];
    if (bias != nullptr) o = __fadd_rn(o, load_float_any(bias_dtype, bias, n));
    out[static_cast<int64_t>(r) * N + n] = from_float<T>(o);
  }
}

}  // namespace gpu
}  // namespace lt8
