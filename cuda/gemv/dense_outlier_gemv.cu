// The decode path with many outlier columns (more than kGemvExactMaxOutliers): one pass over the
// weight computes both the int8 products (dp4a on the quantized rows, outlier columns zeroed)
// and the outlier columns' float products (the activations masked to those columns, staged as
// float32 in shared memory), so each weight byte is read once whatever the count. The exact
// GEMV epilogue (gemv_epilogue.cuh) instead adds the outlier terms one column at a time in the
// CPU's order, which costs a serial loop of dependent gathers per 64 columns: 2.6 ms for a
// 14336->4096 layer at M=16 with every column flagged (fp16: 38 us).
//
// Numerics: the float products are summed per lane and then across lanes (float32, another
// order than the CPU's ascending k), scaled by SCB / 127 once and added to the dequantized int8
// part, then the bias: the rule of the tensor-core outlier path (docs/NUMERICS.md). The kernel
// reads the count first and returns at once when it is <= kGemvExactMaxOutliers; the exact GEMV
// then runs instead (it returns at once in the opposite case).
#include <cstdint>

#include "common/cuda_check.cuh"
#include "common/dependent_launch.cuh"
#include "common/device_types.cuh"
#include "common/launch_shape.cuh"
#include "common/numerics.h"
#include "gemv/gemv.cuh"

namespace lt8 {
namespace gpu {
namespace {

constexpr int kDenseCols = 2;    // output columns per warp (two accumulator sets per row)
constexpr int kDenseWarps = 8;   // warps per block
constexpr int kDenseWords = 32;  // 16-byte weight words per lane step: 512 k per chunk
constexpr int kDenseChunkK = kDenseWords * 16;
// Staged activations of one row: k = 16 * lane + t lives at t * kSxStride + lane, so that the
// lanes of a warp read consecutive words for each t, and the +1 keeps the staging writes (16
// consecutive k of one lane) on distinct banks.
constexpr int kSxStride = kDenseWords + 1;
constexpr int kSxRow = 16 * kSxStride;

template <typename T, int ROWS>
__global__ void __launch_bounds__(kDenseWarps * 32)
    dense_outlier_gemv_kernel(const int8_t* __restrict__ q, const T* __restrict__ x,
                              const int8_t* __restrict__ CB, const float* __restrict__ SCB,
                              const float* __restrict__ row_scale,
                              const int32_t* __restrict__ outlier_idx,
                              const int32_t* __restrict__ outlier_count, DType bias_dtype,
                              const void* __restrict__ bias, int M, int64_t N, int64_t K,
                              T* __restrict__ out) {
  // A dependent launch of the GEMV before it (which lets it start once all of its blocks run:
  // gemv_epilogue.cuh, wait_then_release), so its blocks are resident before the wait returns;
  // then, at up to kGemvExactMaxOutliers columns, the early exit costs one L2 read instead of a
  // launch after the GEMV. The wait returns when the GEMV has finished (and so the preparation
  // the GEMV waited for). The scratch is read with __ldcg, one rule for every reader of it
  // (common/dependent_launch.cuh, benchmarks/NOTES.md v9).
  wait_for_prior_kernel();
  const int count = __ldcg(outlier_count);
  if (count <= kGemvExactMaxOutliers) return;

  extern __shared__ uint32_t smem_bits[];  // K bits: the outlier columns
  __shared__ float sx[ROWS][kSxRow];       // activations of one chunk, zero off the outliers
  __shared__ int4 sq[ROWS][kDenseWords];   // quantized activations of one chunk

  const int words_k = static_cast<int>((K + 31) / 32);
  for (int i = threadIdx.x; i < words_k; i += blockDim.x) smem_bits[i] = 0u;
  __syncthreads();
  for (int j = threadIdx.x; j < count; j += blockDim.x) {
    const int k = __ldcg(outlier_idx + j);
    atomicOr(&smem_bits[k >> 5], 1u << (k & 31));
  }

  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int64_t n0 = (static_cast<int64_t>(blockIdx.x) * kDenseWarps + warp) * kDenseCols;
  const int4* wrow[kDenseCols];
#pragma unroll
  for (int c = 0; c < kDenseCols; ++c)
    wrow[c] = reinterpret_cast<const int4*>(CB + (n0 + c < N ? n0 + c : 0) * K);

  int32_t acc[ROWS][kDenseCols];
  float facc[ROWS][kDenseCols];
#pragma unroll
  for (int r = 0; r < ROWS; ++r)
#pragma unroll
    for (int c = 0; c < kDenseCols; ++c) {
      acc[r][c] = 0;
      facc[r][c] = 0.0f;
    }

  const int64_t words = K / 16;  // the GEMV path requires K % 16 == 0
  for (int64_t w0 = 0; w0 < words; w0 += kDenseWords) {
    const int len = static_cast<int>(words - w0 < kDenseWords ? words - w0 : kDenseWords);
    const int64_t k0 = w0 * 16;
    __syncthreads();  // the bitmask is complete; the previous chunk's readers are done
    for (int e = threadIdx.x; e < M * kDenseChunkK; e += blockDim.x) {
      const int r = e / kDenseChunkK, kk = e % kDenseChunkK;
      const int64_t k = k0 + kk;
      float v = 0.0f;
      if (kk < len * 16 && ((smem_bits[k >> 5] >> (k & 31)) & 1u)) v = to_float(x[r * K + k]);
      sx[r][(kk % 16) * kSxStride + kk / 16] = v;
    }
    for (int e = threadIdx.x; e < M * kDenseWords; e += blockDim.x) {
      const int r = e / kDenseWords, c = e % kDenseWords;
      if (c < len) sq[r][c] = __ldcg(reinterpret_cast<const int4*>(q + r * K) + w0 + c);
    }
    __syncthreads();
    if (lane >= len) continue;
    int4 wv[kDenseCols];
#pragma unroll
    for (int c = 0; c < kDenseCols; ++c) wv[c] = __ldcs(wrow[c] + w0 + lane);
    float wf[kDenseCols][16];
#pragma unroll
    for (int c = 0; c < kDenseCols; ++c) {
      const int32_t parts[4] = {wv[c].x, wv[c].y, wv[c].z, wv[c].w};
#pragma unroll
      for (int t = 0; t < 16; ++t)
        wf[c][t] = static_cast<float>(static_cast<int8_t>(parts[t / 4] >> (8 * (t % 4))));
    }
#pragma unroll
    for (int r = 0; r < ROWS; ++r) {
      if (r < M) {
        const int4 xv = sq[r][lane];
#pragma unroll
        for (int c = 0; c < kDenseCols; ++c) {
          acc[r][c] = __dp4a(xv.x, wv[c].x, acc[r][c]);
          acc[r][c] = __dp4a(xv.y, wv[c].y, acc[r][c]);
          acc[r][c] = __dp4a(xv.z, wv[c].z, acc[r][c]);
          acc[r][c] = __dp4a(xv.w, wv[c].w, acc[r][c]);
        }
#pragma unroll
        for (int t = 0; t < 16; ++t) {
          const float xf = sx[r][t * kSxStride + lane];
#pragma unroll
          for (int c = 0; c < kDenseCols; ++c) facc[r][c] = fmaf(xf, wf[c][t], facc[r][c]);
        }
      }
    }
  }

#pragma unroll
  for (int r = 0; r < ROWS; ++r)
#pragma unroll
    for (int c = 0; c < kDenseCols; ++c)
#pragma unroll
      for (int off = 16; off > 0; off >>= 1) {
        acc[r][c] += __shfl_xor_sync(0xffffffffu, acc[r][c], off);
        facc[r][c] += __shfl_xor_sync(0xffffffffu, facc[r][c], off);
      }

  // Every lane holds every sum now; lane l writes output l of the warp's ROWS x kDenseCols.
#pragma unroll
  for (int r = 0; r < ROWS; ++r)
#pragma unroll
    for (int c = 0; c < kDenseCols; ++c) {
      const int64_t n = n0 + c;
      if (lane == (r * kDenseCols + c) % 32 && r < M && n < N) {
        const float cs = SCB[n];
        float v = dequant(acc[r][c], __ldcg(row_scale + r), cs);
        v = __fadd_rn(v, __fmul_rn(facc[r][c], cs * kInv127));
        if (bias != nullptr) v = __fadd_rn(v, load_float_any(bias_dtype, bias, n));
        out[static_cast<int64_t>(r) * N + n] = from_float<T>(v);
      }
    }
}

template <typename T, int ROWS>
Status launch_rows(cudaStream_t st, const int8_t* q, const T* x, const int8_t* CB, const float* SCB,
                   const LinearScratch& s, DType bias_dtype, const void* bias, int M, int64_t N,
                   int64_t K, T* out) {
  const unsigned blocks = static_cast<unsigned>(ceil_div(N, int64_t{kDenseWarps} * kDenseCols));
  const size_t bits_bytes = static_cast<size_t>((K + 31) / 32) * 4;
  // Launch errors are read by LT8_CHECK_LAUNCH (cudaGetLastError).
  (void)launch_maybe_dependent(true, dense_outlier_gemv_kernel<T, ROWS>, dim3(blocks),
                               dim3(kDenseWarps * 32), bits_bytes, st, q, x, CB, SCB, s.row_scale,
                               s.outlier_idx, s.outlier_count, bias_dtype, bias, M, N, K, out);
  LT8_CHECK_LAUNCH("dense_outlier_gemv_kernel");
  return Status::Ok();
}

}  // namespace

bool dense_outlier_gemv_fits(int64_t K) {
  return K <= kPrepMaxK;  // its K-bit mask (4 KiB at most) beside 40 KiB of staged rows
}

template <typename T>
Status launch_dense_outlier_gemv(cudaStream_t st, const int8_t* q, const T* x, const int8_t* CB,
                                 const float* SCB, const LinearScratch& s, DType bias_dtype,
                                 const void* bias, int64_t M, int64_t N, int64_t K, T* out) {
  const int m = static_cast<int>(M);
  if (M <= 4) return launch_rows<T, 4>(st, q, x, CB, SCB, s, bias_dtype, bias, m, N, K, out);
  if (M <= 8) return launch_rows<T, 8>(st, q, x, CB, SCB, s, bias_dtype, bias, m, N, K, out);
  return launch_rows<T, kSmallBatchRows>(st, q, x, CB, SCB, s, bias_dtype, bias, m, N, K, out);
}

#define LT8_INSTANTIATE(T)                                                                        \
  template Status launch_dense_outlier_gemv<T>(cudaStream_t, const int8_t*, const T*,             \
                                               const int8_t*, const float*, const LinearScratch&, \
                                               DType, const void*, int64_t, int64_t, int64_t, T*);
LT8_FOR_EACH_FLOAT_TYPE(LT8_INSTANTIATE)
#undef LT8_INSTANTIATE

}  // namespace gpu
}  // namespace lt8
