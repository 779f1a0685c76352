// Tensor-core GEMV of the decode path (sm_80+, 9 <= M <= 16): mma.sync m16n8k32 on int8, exact
// int32 sums, then the GEMV epilogue shared with dp4a_gemv.cu.
#include <cstdint>
#include <cstdlib>

#include "common/cuda_check.cuh"
#include "common/device_caps.cuh"
#include "common/device_types.cuh"
#include "common/launch_shape.cuh"
#include "common/numerics.h"
#include "gemv/gemv.cuh"
#include "gemv/gemv_epilogue.cuh"

namespace lt8 {
namespace gpu {
namespace {

// Tensor-core GEMV (sm_80+): mma.sync m16n8k32 on int8, exact int32 sums. A warp owns kTcCols
// = 8 output columns (the mma's n) and all 16 (zero-padded) rows. The integer sum over k does not
// depend on the order of k, so each lane (g = lane / 4, t = lane % 4) feeds the mma 16
// contiguous bytes of one weight row and of the two activation rows it holds (g, g + 8) instead
// of the architectural k order: one 16-byte load of the weight per lane and step, two mmas.
constexpr int kTcWarps = 4;
constexpr int kTcCols = 8;
constexpr int kTcStride = kGemvChunk + 4;  // padded row stride in words: conflict-free reads
constexpr int kTcUnroll = 8;               // weight loads in flight per lane

__device__ __forceinline__ void mma_s8_16x8x32(int32_t (&c)[4], uint32_t a0, uint32_t a1,
                                               uint32_t a2, uint32_t a3, uint32_t b0, uint32_t b1) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile(
      "mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
      "{%8,%9}, {%0,%1,%2,%3};\n"
      : "+r"(c[0]), "+r"(c[1]), "+r"(c[2]), "+r"(c[3])
      : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
#else
  __trap();  // launched only on sm_80+ (see tensor_core_gemv)
#endif
}

template <typename T>
__global__ void __launch_bounds__(kTcWarps * 32)
    linear_gemv_tc_kernel(const int8_t* __restrict__ q, const T* __restrict__ x,
                          const int8_t* __restrict__ CB, const float* __restrict__ SCB,
                          const float* __restrict__ row_scale,
                          const int32_t* __restrict__ outlier_idx,
                          const int32_t* __restrict__ outlier_count, DType bias_dtype,
                          const void* __restrict__ bias, int M, int64_t N, int64_t K,
                          int exact_max_count, T* __restrict__ out) {
  if (*outlier_count > exact_max_count) return;  // the dense-outlier GEMV writes out
  __shared__ int4 sq[kSmallBatchRows * kTcStride];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int g = lane >> 2, t = lane & 3;
  const int64_t n = (static_cast<int64_t>(blockIdx.x) * kTcWarps + warp) * kTcCols + g;
  const int4* wrow = reinterpret_cast<const int4*>(CB + (n < N ? n : 0) * K);
  const int64_t words = K / 16;
  int32_t c[4] = {0, 0, 0, 0}, c1[4] = {0, 0, 0, 0};
  for (int64_t w0 = 0; w0 < words; w0 += kGemvChunk) {
    const int len = static_cast<int>(words - w0 < kGemvChunk ? words - w0 : kGemvChunk);
    __syncthreads();
    for (int e = threadIdx.x; e < kSmallBatchRows * kGemvChunk; e += blockDim.x) {
      const int r = e / kGemvChunk, cc = e % kGemvChunk;
      int4 v = make_int4(0, 0, 0, 0);
      if (r < M && cc < len) v = reinterpret_cast<const int4*>(q + r * K)[w0 + cc];
      sq[r * kTcStride + cc] = v;
    }
    __syncthreads();
    // Every lane runs the same number of steps (mma.sync needs the whole warp); words past the
    // chunk's end read as zeros. kTcUnroll weight loads are issued before their mmas, which
    // alternate between two accumulator sets (independent chains).
    for (int i0 = 0; 4 * i0 < len; i0 += kTcUnroll) {
      int4 wv[kTcUnroll];
#pragma unroll
      for (int u = 0; u < kTcUnroll; ++u) {
        const int cc = t + 4 * (i0 + u);
        wv[u] = cc < len && n < N ? __ldcs(wrow + w0 + cc) : make_int4(0, 0, 0, 0);
      }
#pragma unroll
      for (int u = 0; u < kTcUnroll; ++u) {
        const int cc = t + 4 * (i0 + u);
        const bool ok = cc < len;
        const int4 xa = ok ? sq[g * kTcStride + cc] : make_int4(0, 0, 0, 0);
        const int4 xb = ok ? sq[(g + 8) * kTcStride + cc] : make_int4(0, 0, 0, 0);
        int32_t (&acc)[4] = (u & 1) ? c1 : c;
        mma_s8_16x8x32(acc, xa.x, xb.x, xa.y, xb.y, wv[u].x, wv[u].y);
        mma_s8_16x8x32(acc, xa.z, xb.z, xa.w, xb.w, wv[u].z, wv[u].w);
      }
    }
  }
#pragma unroll
  for (int e = 0; e < 4; ++e) c[e] += c1[e];
  // C fragment: c0, c1 -> row g, columns 2t, 2t + 1; c2, c3 -> row g + 8.
  __shared__ int32_t sacc[kTcWarps * kSmallBatchRows * kTcCols];  // [warp][r][col]
  int32_t* mine = sacc + warp * kSmallBatchRows * kTcCols;
  mine[g * kTcCols + 2 * t] = c[0];
  mine[g * kTcCols + 2 * t + 1] = c[1];
  mine[(g + 8) * kTcCols + 2 * t] = c[2];
  mine[(g + 8) * kTcCols + 2 * t + 1] = c[3];
  __syncthreads();
  gemv_epilogue<T, kSmallBatchRows, kTcCols>(sacc, x, CB, SCB, row_scale, outlier_idx,
                                             outlier_count, bias_dtype, bias, M, N, K, out);
}

}  // namespace

bool tensor_core_gemv() {
  static const bool allowed = [] {
    const char* v = std::getenv("LT8_GEMV_TC");
    return v == nullptr || v[0] != '0';
  }();
  return allowed && current_device_cc_major() >= 8;
}

template <typename T>
Status launch_mma_gemv(cudaStream_t st, const int8_t* q, const T* x, const int8_t* CB,
                       const float* SCB, const LinearScratch& s, DType bias_dtype, const void* bias,
                       int64_t M, int64_t N, int64_t K, int exact_max_count, T* out) {
  const int m = static_cast<int>(M);
  const unsigned tc_blocks = static_cast<unsigned>(ceil_div(N, int64_t{kTcWarps} * kTcCols));
  linear_gemv_tc_kernel<T><<<tc_blocks, kTcWarps * 32, 0, st>>>(
      q, x, CB, SCB, s.row_scale, s.outlier_idx, s.outlier_count, bias_dtype, bias, m, N, K,
      exact_max_count, out);
  LT8_CHECK_LAUNCH("linear_gemv_tc_kernel");
  return Status::Ok();
}

#define LT8_INSTANTIATE(T)                                                                   \
  template Status launch_mma_gemv<T>(cudaStream_t, const int8_t*, const T*, const int8_t*,   \
                                     const float*, const LinearScratch&, DType, const void*, \
                                     int64_t, int64_t, int64_t, int, T*);
LT8_FOR_EACH_FLOAT_TYPE(LT8_INSTANTIATE)
#undef LT8_INSTANTIATE

}  // namespace gpu
}  // namespace lt8
