// The fused LLM.int8() epilogue of lt8's dp4a GEMM (gemm/dp4a_gemm.cuh): the fused linear op's
// fallback when cuBLASLt is unavailable or declines the problem.
// Header-only; include from .cu files only.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "common/device_types.cuh"
#include "common/numerics.h"
#include "gemm/gemm_tile.cuh"
#include "lt8.h"

namespace lt8 {
namespace gpu {

// Fused LLM.int8() epilogue, per output (m, n), in the CPU reference's order:
//   v = dequant(acc, row_scale[m], SCB[n]);
//   for j in [0, count): k = idx[j]; v += x[m, k] * weight_value(CB[n, k], SCB[n]);
//   v += bias[n]; out[m, n] = v (x's dtype).
// The outlier columns are staged through shared memory kOutChunk at a time:
// xs[j][r] = x[m0 + r, idx[j]] and ws[j][c] = W[n0 + c, idx[j]].
template <typename T>
struct LinearEpilogue {
  static constexpr int kOutChunk = 32;
  static constexpr int kStride = kTile + 4;  // keeps float4 reads aligned, spreads banks
  static constexpr int kSmemBytes = 2 * kOutChunk * kStride * 4;
  const T* x;
  const int8_t* CB;
  const float* SCB;
  const float* row_scale;
  const int32_t* outlier_idx;
  const int32_t* outlier_count;
  DType bias_dtype;
  const void* bias;
  T* out;
  int64_t M, N, K;
  bool vec;  // N % 4 == 0 and out 4 * sizeof(T) aligned

  __device__ __forceinline__ void operator()(const int32_t (&acc)[8][8], int64_t m0, int64_t n0,
                                             int tid, int ty, int tx, unsigned char* smem) const {
    float rs[8];
#pragma unroll
    for (int i = 0; i < 8; ++i) {
      const int64_t m = m0 + tile_row(i, ty);
      rs[i] = m < M ? row_scale[m] : 0.0f;
    }
    float v[8][8];
#pragma unroll
    for (int j = 0; j < 8; ++j) {
      const int64_t n = n0 + tile_row(j, tx);
      const float cs = n < N ? SCB[n] : 0.0f;
#pragma unroll
      for (int i = 0; i < 8; ++i) v[i][j] = dequant(acc[i][j], rs[i], cs);
    }

    const int count = *outlier_count;
    float* xs = reinterpret_cast<float*>(smem);
    float* ws = xs + kOutChunk * kStride;
    for (int base = 0; base < count; base += kOutChunk) {
      const int len = count - base < kOutChunk ? count - base : kOutChunk;
      for (int e = tid; e < kOutChunk * kTile; e += kTileThreads) {
        const int jj = e % kOutChunk, r = e / kOutChunk;
        float xv = 0.0f, wv = 0.0f;
        if (jj < len) {
          const int64_t k = outlier_idx[base + jj];
          const int64_t m = m0 + r, n = n0 + r;
          if (m < M) xv = to_float(x[m * K + k]);
          if (n < N) wv = weight_value(CB[n * K + k], SCB[n]);
        }
        xs[jj * kStride + r] = xv;
        ws[jj * kStride + r] = wv;
      }
      __syncthreads();
      for (int jj = 0; jj < len; ++jj) {
        float xr[8], wr[8];
        load_fragment(xs + jj * kStride, ty, xr);
        load_fragment(ws + jj * kStride, tx, wr);
#pragma unroll
        for (int i = 0; i < 8; ++i)
#pragma unroll
          for (int j = 0; j < 8; ++j) v[i][j] = __fadd_rn(v[i][j], __fmul_rn(xr[i], wr[j]));
      }
      __syncthreads();
    }

    if (bias != nullptr) {
      float bv[8];
#pragma unroll
      for (int j = 0; j < 8; ++j) {
        const int64_t n = n0 + tile_row(j, tx);
        bv[j] = n < N ? load_float_any(bias_dtype, bias, n) : 0.0f;
      }
#pragma unroll
      for (int i = 0; i < 8; ++i)
#pragma unroll
        for (int j = 0; j < 8; ++j) v[i][j] = __fadd_rn(v[i][j], bv[j]);
    }

    store_fragment(v, m0, n0, ty, tx, M, N, vec, out);
  }
};

}  // namespace gpu
}  // namespace lt8
