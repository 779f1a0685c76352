// dp4a GEMV of the decode path (any arch; the engine below sm_80 and for M <= 8): memory-bound,
// so every weight byte is read once with 16-byte streaming loads. Each warp owns kGemvCols output
// columns; per K chunk the block stages the M <= ROWS quantized activation rows in shared memory
// once, and every staged 16-byte activation word is multiplied against all kGemvCols weight
// columns (the activations are read from L2 once per block, not once per column). Epilogue:
// gemv_epilogue.cuh (same arithmetic and order as the CPU: dequant, outlier terms in ascending
// k, bias).
#include <atomic>
#include <cstdint>
#include <cstdlib>

#include "common/cuda_check.cuh"
#include "common/dependent_launch.cuh"
#include "common/device_types.cuh"
#include "common/launch_shape.cuh"
#include "common/numerics.h"
#include "gemv/gemv.cuh"
#include "gemv/gemv_epilogue.cuh"

namespace lt8 {
namespace gpu {
namespace {

constexpr int kGemvCols = 4;  // output columns per warp
constexpr int kGemvWordsPerLane = kGemvChunk / 32;

// The weight rows of the warp's kGemvCols output columns (row 0 stands in past N: those sums
// are never stored).
__device__ __forceinline__ void warp_weight_rows(const int8_t* CB, int64_t n0, int64_t N, int64_t K,
                                                 const int4* (&wrow)[kGemvCols]) {
#pragma unroll
  for (int c = 0; c < kGemvCols; ++c)
    wrow[c] = reinterpret_cast<const int4*>(CB + (n0 + c < N ? n0 + c : 0) * K);
}

// The first kPrefetchRowBytes of the warp's weight rows into L2 (one lane per row), then the
// wait (wait_then_release).
__device__ __forceinline__ void prefetch_then_wait(const int8_t* CB, int64_t n0, int64_t N,
                                                   int64_t K, int lane) {
  const int64_t n = n0 + lane;
  if (lane < kGemvCols && n < N)
    prefetch_l2(CB + n * K, static_cast<uint32_t>(K < kPrefetchRowBytes ? K : kPrefetchRowBytes));
  wait_then_release();
}

// acc[col] += the dot product of one 16-byte activation word with each column's weight word.
__device__ __forceinline__ void dp4a_word(int32_t (&acc)[kGemvCols], const int4 xv,
                                          const int4 (&wv)[kGemvCols]) {
#pragma unroll
  for (int col = 0; col < kGemvCols; ++col) {
    acc[col] = __dp4a(xv.x, wv[col].x, acc[col]);
    acc[col] = __dp4a(xv.y, wv[col].y, acc[col]);
    acc[col] = __dp4a(xv.z, wv[col].z, acc[col]);
    acc[col] = __dp4a(xv.w, wv[col].w, acc[col]);
  }
}

// Each warp's sums reduced over its lanes, then through shared memory to the common epilogue.
// With ksplit > 1 the block's warps are ksplit parts of K times warps / ksplit column groups
// (warp = part * groups + group), whose partial sums are added here (integer sums: exact).
template <typename T, int ROWS>
__device__ __forceinline__ void finish_gemv(int32_t (&acc)[ROWS][kGemvCols], const T* x,
                                            const int8_t* CB, const float* SCB,
                                            const float* row_scale, const int32_t* outlier_idx,
                                            const int32_t* outlier_count, DType bias_dtype,
                                            const void* bias, int M, int64_t N, int64_t K,
                                            int warps, int ksplit, T* out) {
#pragma unroll
  for (int r = 0; r < ROWS; ++r)
#pragma unroll
    for (int c = 0; c < kGemvCols; ++c)
#pragma unroll
      for (int off = 16; off > 0; off >>= 1)
        acc[r][c] += __shfl_xor_sync(0xffffffffu, acc[r][c], off);

  __shared__ int32_t sacc[8 * ROWS * kGemvCols];  // [warp][r][col], blockDim.x <= 256
  const int warp = threadIdx.x >> 5;
  if ((threadIdx.x & 31) == 0) {
#pragma unroll
    for (int r = 0; r < ROWS; ++r)
#pragma unroll
      for (int c = 0; c < kGemvCols; ++c) sacc[(warp * ROWS + r) * kGemvCols + c] = acc[r][c];
  }
  __syncthreads();
  const int groups = warps / ksplit;
  if (ksplit > 1) {  // block-uniform
    const int part = groups * ROWS * kGemvCols;
    for (int e = threadIdx.x; e < part; e += blockDim.x)
      for (int p = 1; p < ksplit; ++p) sacc[e] += sacc[p * part + e];
    __syncthreads();
  }
  gemv_epilogue<T, ROWS, kGemvCols>(sacc, x, CB, SCB, row_scale, outlier_idx, outlier_count,
                                    bias_dtype, bias, M, N, K, groups, out);
}

template <typename T, int ROWS>
__global__ void __launch_bounds__(256, 2)
    linear_gemv_kernel(const int8_t* __restrict__ q, const T* __restrict__ x,
                       const int8_t* __restrict__ CB, const float* __restrict__ SCB,
                       const float* __restrict__ row_scale, const int32_t* __restrict__ outlier_idx,
                       const int32_t* __restrict__ outlier_count, DType bias_dtype,
                       const void* __restrict__ bias, int M, int64_t N, int64_t K,
                       int exact_max_count, T* __restrict__ out) {
  __shared__ int4 sq[ROWS * kGemvChunk];
  const int lane = threadIdx.x & 31;
  const int warps = blockDim.x >> 5;
  const int64_t n0 = (static_cast<int64_t>(blockIdx.x) * warps + (threadIdx.x >> 5)) * kGemvCols;
  const int64_t words = K / 16;
  const int4* wrow[kGemvCols];
  warp_weight_rows(CB, n0, N, K, wrow);
  prefetch_epilogue_operands(SCB, bias_dtype, bias, n0 - (threadIdx.x >> 5) * kGemvCols, N);
  prefetch_then_wait(CB, n0, N, K, lane);
  if (__ldcg(outlier_count) > exact_max_count) return;  // the dense-outlier GEMV writes out

  int32_t acc[ROWS][kGemvCols];
#pragma unroll
  for (int r = 0; r < ROWS; ++r)
#pragma unroll
    for (int c = 0; c < kGemvCols; ++c) acc[r][c] = 0;

  for (int64_t w0 = 0; w0 < words; w0 += kGemvChunk) {
    const int len = static_cast<int>(words - w0 < kGemvChunk ? words - w0 : kGemvChunk);
    __syncthreads();  // the previous chunk's readers are done
    for (int e = threadIdx.x; e < M * kGemvChunk; e += blockDim.x) {
      const int r = e / kGemvChunk, c = e % kGemvChunk;
      if (c < len)
        sq[r * kGemvChunk + c] = __ldcg(reinterpret_cast<const int4*>(q + r * K) + w0 + c);
    }
    __syncthreads();
    // The lane's weight words, G at a time (G x kGemvCols independent 16-byte loads in flight;
    // G shrinks as ROWS grows so that the accumulators stay in registers), then the products.
    constexpr int G = ROWS <= 8 ? kGemvWordsPerLane : 2;
#pragma unroll
    for (int g = 0; g < kGemvWordsPerLane; g += G) {
      int4 wv[G][kGemvCols];
#pragma unroll
      for (int i = 0; i < G; ++i) {
        const int c = lane + 32 * (g + i);
#pragma unroll
        for (int col = 0; col < kGemvCols; ++col)
          wv[i][col] = c < len ? __ldcs(wrow[col] + w0 + c) : make_int4(0, 0, 0, 0);
      }
#pragma unroll
      for (int i = 0; i < G; ++i) {
        const int c = lane + 32 * (g + i);
#pragma unroll
        for (int r = 0; r < ROWS; ++r) {
          if (r < M && c < len) {
            dp4a_word(acc[r], sq[r * kGemvChunk + c], wv[i]);
          }
        }
      }
    }
  }
  finish_gemv<T, ROWS>(acc, x, CB, SCB, row_scale, outlier_idx, outlier_count, bias_dtype, bias, M,
                       N, K, warps, 1, out);
}

// The same GEMV for few rows whose whole quantized activation fits in shared memory (M * K <=
// kStreamSmemBytes): the block stages it once, then each warp streams its weight rows with no
// further barrier. Without the per-chunk __syncthreads of linear_gemv_kernel the warps of a block
// drift apart, so some are always loading while others multiply and the weight stream keeps the
// memory busy (the chunked kernel's warps all wait for their loads at the same time). Integer
// sums: the same results in any order.
// Dynamic shared memory on top of the epilogue's static 9-18 KiB: two blocks still fit an SM of
// sm_80+ (above 48 KiB the kernel opts in, allow_dynamic_smem).
constexpr int kStreamSmemBytes = 64 * 1024;
constexpr int kStreamWords = 4;  // 16-byte weight words per lane and column in flight

template <typename T, int ROWS>
__global__ void __launch_bounds__(256, 2)
    linear_gemv_stream_kernel(const int8_t* __restrict__ q, const T* __restrict__ x,
                              const int8_t* __restrict__ CB, const float* __restrict__ SCB,
                              const float* __restrict__ row_scale,
                              const int32_t* __restrict__ outlier_idx,
                              const int32_t* __restrict__ outlier_count, DType bias_dtype,
                              const void* __restrict__ bias, int M, int64_t N, int64_t K,
                              int ksplit, int exact_max_count, T* __restrict__ out) {
  extern __shared__ int4 sq_all[];  // [r][word], M rows of K / 16 words
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int warps = blockDim.x >> 5;
  // ksplit parts of K x `groups` column groups of kGemvCols (finish_gemv): narrow layers still
  // get enough warps streaming.
  const int groups = warps / ksplit, group = warp % groups, part = warp / groups;
  const int64_t block_n0 = static_cast<int64_t>(blockIdx.x) * groups * kGemvCols;
  const int64_t n0 = block_n0 + group * kGemvCols;
  const int64_t words = K / 16;
  // This warp's words [begin, end) of K, in whole 32-word steps of its lanes.
  const int64_t part_words = (words + 32 * ksplit - 1) / (32 * ksplit) * 32;
  const int64_t begin = part * part_words;
  const int64_t end = begin + part_words < words ? begin + part_words : words;
  const int4* wrow[kGemvCols];
  warp_weight_rows(CB, n0, N, K, wrow);

  // The lane's weight words, kStreamWords per column at a time. The first batch (the first
  // 2 KiB of each row) is loaded before the wait: under a dependent launch it streams while the
  // preparation kernel still runs (the weights do not depend on it).
  int4 wv[kStreamWords][kGemvCols];
  auto load_words = [&](int64_t c0) {
#pragma unroll
    for (int i = 0; i < kStreamWords; ++i) {
      const int64_t c = c0 + 32 * i;
#pragma unroll
      for (int col = 0; col < kGemvCols; ++col)
        wv[i][col] = c < end ? __ldcs(wrow[col] + c) : make_int4(0, 0, 0, 0);
    }
  };
  load_words(begin + lane);
  prefetch_epilogue_operands(SCB, bias_dtype, bias, block_n0, N);
  wait_then_release();
  if (__ldcg(outlier_count) > exact_max_count) return;  // the dense-outlier GEMV writes out

  const int4* q4 = reinterpret_cast<const int4*>(q);
  for (int64_t e = threadIdx.x; e < M * words; e += blockDim.x) sq_all[e] = __ldcg(q4 + e);
  __syncthreads();

  int32_t acc[ROWS][kGemvCols];
#pragma unroll
  for (int r = 0; r < ROWS; ++r)
#pragma unroll
    for (int c = 0; c < kGemvCols; ++c) acc[r][c] = 0;
  for (int64_t c0 = begin + lane;;) {
#pragma unroll
    for (int i = 0; i < kStreamWords; ++i) {
      const int64_t c = c0 + 32 * i;
      if (c >= end) continue;
#pragma unroll
      for (int r = 0; r < ROWS; ++r) {
        if (r >= M) continue;
        dp4a_word(acc[r], sq_all[r * words + c], wv[i]);
      }
    }
    c0 += 32 * kStreamWords;
    if (c0 >= end) break;
    load_words(c0);
  }
  finish_gemv<T, ROWS>(acc, x, CB, SCB, row_scale, outlier_idx, outlier_count, bias_dtype, bias, M,
                       N, K, warps, ksplit, out);
}

// LT8_GEMV_STREAM=0: the chunked kernel at every M (for comparison; same results).
bool stream_gemv_enabled() {
  static const bool on = [] {
    const char* v = std::getenv("LT8_GEMV_STREAM");
    return v == nullptr || v[0] != '0';
  }();
  return on;
}

template <typename T, int ROWS>
Status launch_gemv_rows(cudaStream_t st, bool after_prepare, const int8_t* q, const T* x,
                        const int8_t* CB, const float* SCB, const LinearScratch& s,
                        DType bias_dtype, const void* bias, int M, int64_t N, int64_t K,
                        int exact_max_count, T* out) {
  const int64_t col_warps = ceil_div(N, int64_t{kGemvCols});
  if constexpr (ROWS <= 4) {  // the stream kernel exists for up to 4 rows only
    if (stream_gemv_fits(M, K)) {
      const int64_t sms = gemv_sm_count();
      // 8 warps per block; narrow layers split K over 2-8 of them so that at least ~12 warps per
      // SM stream (4096 output columns alone give 8: 61% of the DRAM rate in ncu, v10).
      int ksplit = 1;
      while (ksplit < 8 && col_warps * ksplit < 12 * sms) ksplit *= 2;
      const int64_t groups = 8 / ksplit;
      const unsigned blocks = static_cast<unsigned>(ceil_div(col_warps, groups));
      const size_t smem = static_cast<size_t>(M) * static_cast<size_t>(K);
      // Past 32 KiB (beside up to ~16 KiB of static shared memory, the default 48 KiB per block
      // is spent) the kernel opts in once per device, for the most it takes; small layers never
      // make that call.
      static std::atomic<uint64_t> allowed{0};
      if (smem > 32 * 1024) {
        Status ok = allow_dynamic_smem(linear_gemv_stream_kernel<T, ROWS>, kStreamSmemBytes,
                                       allowed, "cudaFuncSetAttribute(linear_gemv_stream_kernel)");
        if (!ok.ok()) return ok;
      }
      // Launch errors are read by the caller (cudaGetLastError).
      (void)launch_maybe_dependent(after_prepare, linear_gemv_stream_kernel<T, ROWS>, dim3(blocks),
                                   dim3(256), smem, st, q, x, CB, SCB, s.row_scale, s.outlier_idx,
                                   s.outlier_count, bias_dtype, bias, M, N, K, ksplit,
                                   exact_max_count, out);
      return Status::Ok();
    }
  }
  // 8 warps per block when that still gives every SM of a large GPU a couple of blocks, else 4.
  const int warps = ceil_div(col_warps, int64_t{8}) >= 256 ? 8 : 4;
  const unsigned blocks = static_cast<unsigned>(ceil_div(col_warps, int64_t{warps}));
  (void)launch_maybe_dependent(after_prepare, linear_gemv_kernel<T, ROWS>, dim3(blocks),
                               dim3(warps * 32), 0, st, q, x, CB, SCB, s.row_scale, s.outlier_idx,
                               s.outlier_count, bias_dtype, bias, M, N, K, exact_max_count, out);
  return Status::Ok();
}

}  // namespace

bool stream_gemv_fits(int64_t M, int64_t K) {
  return M <= 4 && M * K <= kStreamSmemBytes && stream_gemv_enabled();
}

template <typename T>
Status launch_dp4a_gemv(cudaStream_t st, const int8_t* q, const T* x, const int8_t* CB,
                        const float* SCB, const LinearScratch& s, DType bias_dtype,
                        const void* bias, int64_t M, int64_t N, int64_t K, int exact_max_count,
                        bool after_prepare, T* out) {
  const int m = static_cast<int>(M);
  Status ok = Status::Ok();
  if (M == 1)
    ok = launch_gemv_rows<T, 1>(st, after_prepare, q, x, CB, SCB, s, bias_dtype, bias, m, N, K,
                                exact_max_count, out);
  else if (M <= 4)
    ok = launch_gemv_rows<T, 4>(st, after_prepare, q, x, CB, SCB, s, bias_dtype, bias, m, N, K,
                                exact_max_count, out);
  else if (M <= 8)
    ok = launch_gemv_rows<T, 8>(st, after_prepare, q, x, CB, SCB, s, bias_dtype, bias, m, N, K,
                                exact_max_count, out);
  else
    ok = launch_gemv_rows<T, kSmallBatchRows>(st, after_prepare, q, x, CB, SCB, s, bias_dtype, bias,
                                              m, N, K, exact_max_count, out);
  if (!ok.ok()) return ok;
  LT8_CHECK_LAUNCH("linear_gemv_kernel");
  return Status::Ok();
}

#define LT8_INSTANTIATE(T)                                                                    \
  template Status launch_dp4a_gemv<T>(cudaStream_t, const int8_t*, const T*, const int8_t*,   \
                                      const float*, const LinearScratch&, DType, const void*, \
                                      int64_t, int64_t, int64_t, int, bool, T*);
LT8_FOR_EACH_FLOAT_TYPE(LT8_INSTANTIATE)
#undef LT8_INSTANTIATE

}  // namespace gpu
}  // namespace lt8
