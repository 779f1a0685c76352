// Tensor-core GEMV of the decode path (sm_80+): mma.sync m16n8k32 on int8, exact int32 sums, then
// the GEMV epilogue shared with dp4a_gemv.cu.
//
// Memory-bound: speed is the number of weight bytes in flight per SM. A block of kTcWarps warps
// owns TILES groups of 8 output columns (the mma's n) and all 16 (zero-padded) rows; its warps
// split K between them (warp w takes every kTcWarps-th chunk of 4 * STEPS 16-byte words), so even
// a 1024-column layer gives every SM several blocks. The warps' int32 partial sums meet in shared
// memory (integer sums: any order gives the same bits), then the epilogue runs once per block.
//
// Fragment trick: the integer sum over k does not depend on the order of k, so each lane
// (g = lane / 4, t = lane % 4) feeds the mma 16 contiguous bytes of one weight row and of the two
// activation rows it holds (g, g + 8) instead of the architectural k order: one 16-byte load of
// the weight per lane, tile and step, two mmas. The activation words come straight from global
// memory (L1/L2: q is at most 16 * K bytes and every block reads it), loaded once per step and
// used for all TILES weight tiles.
#include <cstdint>
#include <cstdlib>

#include "common/cuda_check.cuh"
#include "common/dependent_launch.cuh"
#include "common/device_caps.cuh"
#include "common/device_types.cuh"
#include "common/launch_shape.cuh"
#include "common/numerics.h"
#include "gemv/gemv.cuh"
#include "gemv/gemv_epilogue.cuh"

namespace lt8 {
namespace gpu {
namespace {

constexpr int kTcWarps = 8;
constexpr int kTcCols = 8;  // output columns per tile (the mma's n)
// 4-word steps per chunk. Up to 8 rows (HI false): 16 weight loads of 16 bytes in flight per
// lane (the dp4a GEMV's depth), 8 for one tile, whose activation words would cost too many
// registers. 9-16 rows: 8 (their two activation words per step would spill at 16). Measured on
// the H200 (benchmarks/NOTES.md, v5).
template <int TILES, bool HI>
constexpr int kTcSteps = HI || TILES == 1 ? 8 / TILES : 16 / TILES;

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

// TILES: 8-column tiles per block; HI: rows 8..15 exist (M > 8), else their loads are skipped.
template <typename T, int TILES, bool HI>
__global__ void __launch_bounds__(kTcWarps * 32)
    linear_gemv_tc_kernel(const int8_t* __restrict__ q, const T* __restrict__ x,
                          const int8_t* __restrict__ CB, const float* __restrict__ SCB,
                          const float* __restrict__ row_scale,
                          const int32_t* __restrict__ outlier_idx,
                          const int32_t* __restrict__ outlier_count, DType bias_dtype,
                          const void* __restrict__ bias, int M, int64_t N, int64_t K,
                          int exact_max_count, T* __restrict__ out) {
  constexpr int STEPS = kTcSteps<TILES, HI>;
  constexpr int kChunkWords = 4 * STEPS;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int g = lane >> 2, t = lane & 3;
  const int64_t n_base = static_cast<int64_t>(blockIdx.x) * TILES * kTcCols + g;
  const int4* wrow[TILES];
  bool n_ok[TILES];
#pragma unroll
  for (int i = 0; i < TILES; ++i) {
    const int64_t n = n_base + i * kTcCols;
    n_ok[i] = n < N;
    wrow[i] = reinterpret_cast<const int4*>(CB + (n_ok[i] ? n : 0) * K);
  }
  const int64_t words = K / 16;
  const int4 zero = make_int4(0, 0, 0, 0);
  // The weight words of one chunk (mma.sync needs the whole warp, so words past K read as zeros
  // instead of branching).
  int4 wv[STEPS][TILES];
  auto load_weights = [&](int64_t w0) {
#pragma unroll
    for (int u = 0; u < STEPS; ++u) {
      const int64_t cc = w0 + t + 4 * u;
      const bool ok = cc < words;
#pragma unroll
      for (int i = 0; i < TILES; ++i) wv[u][i] = ok && n_ok[i] ? __ldcs(wrow[i] + cc) : zero;
    }
  };
  // The first chunk's weights are loaded before the wait for the kernel that wrote q (the
  // preparation, under a dependent launch: gemv_epilogue.cuh, wait_then_release), beside the
  // next kPrefetchRowBytes of the block's rows into L2 (one lane of the block per row). What the
  // preparation wrote is read with __ldcg from here on.
  int64_t w0 = static_cast<int64_t>(warp) * kChunkWords;
  load_weights(w0);
  const int64_t block_n0 = static_cast<int64_t>(blockIdx.x) * TILES * kTcCols;
  const int64_t pf_n = block_n0 + threadIdx.x;
  if (threadIdx.x < TILES * kTcCols && pf_n < N && K > kPrefetchRowBytes)
    prefetch_l2(CB + pf_n * K + kPrefetchRowBytes,
                static_cast<uint32_t>(K < 2 * kPrefetchRowBytes ? K - kPrefetchRowBytes
                                                                : kPrefetchRowBytes));
  prefetch_epilogue_operands(SCB, bias_dtype, bias, block_n0, N);
  wait_then_release();
  if (__ldcg(outlier_count) > exact_max_count) return;  // the dense-outlier GEMV writes out
  const bool lo_ok = g < M, hi_ok = HI && g + 8 < M;
  const int4* qlo = reinterpret_cast<const int4*>(q + (lo_ok ? g : 0) * K);
  const int4* qhi = reinterpret_cast<const int4*>(q + (hi_ok ? g + 8 : 0) * K);

  int32_t c[TILES][4];
#pragma unroll
  for (int i = 0; i < TILES; ++i) c[i][0] = c[i][1] = c[i][2] = c[i][3] = 0;

  while (w0 < words) {
    // The chunk's activation words (their loads in flight with the weights' already issued),
    // then its mmas, then the next chunk's weights.
    int4 xa[STEPS], xb[STEPS];
#pragma unroll
    for (int u = 0; u < STEPS; ++u) {
      const int64_t cc = w0 + t + 4 * u;
      const bool ok = cc < words;
      xa[u] = ok && lo_ok ? __ldcg(qlo + cc) : zero;
      xb[u] = ok && hi_ok ? __ldcg(qhi + cc) : zero;
    }
#pragma unroll
    for (int u = 0; u < STEPS; ++u)
#pragma unroll
      for (int i = 0; i < TILES; ++i) {
        mma_s8_16x8x32(c[i], xa[u].x, xb[u].x, xa[u].y, xb[u].y, wv[u][i].x, wv[u][i].y);
        mma_s8_16x8x32(c[i], xa[u].z, xb[u].z, xa[u].w, xb[u].w, wv[u][i].z, wv[u][i].w);
      }
    w0 += int64_t{kTcWarps} * kChunkWords;
    if (w0 < words) load_weights(w0);
  }

  // C fragment: c0, c1 -> row g, columns 2t, 2t + 1; c2, c3 -> row g + 8. The warps' partial
  // sums go to shared memory as [warp][tile][r][col], then every thread sums some outputs over
  // the warps into sacc = [tile][r][col], the epilogue's layout.
  constexpr int kTileOut = kSmallBatchRows * kTcCols;
  __shared__ int32_t part[kTcWarps][TILES * kTileOut];
  __shared__ int32_t sacc[TILES * kTileOut];
#pragma unroll
  for (int i = 0; i < TILES; ++i) {
    int32_t* mine = part[warp] + i * kTileOut;
    mine[g * kTcCols + 2 * t] = c[i][0];
    mine[g * kTcCols + 2 * t + 1] = c[i][1];
    mine[(g + 8) * kTcCols + 2 * t] = c[i][2];
    mine[(g + 8) * kTcCols + 2 * t + 1] = c[i][3];
  }
  __syncthreads();
  for (int e = threadIdx.x; e < TILES * kTileOut; e += blockDim.x) {
    int32_t s = 0;
#pragma unroll
    for (int w = 0; w < kTcWarps; ++w) s += part[w][e];
    sacc[e] = s;
  }
  __syncthreads();
  gemv_epilogue<T, kSmallBatchRows, kTcCols>(sacc, x, CB, SCB, row_scale, outlier_idx,
                                             outlier_count, bias_dtype, bias, M, N, K, TILES, out);
}

template <typename T, int TILES>
void launch_tiles(cudaStream_t st, bool after_prepare, const int8_t* q, const T* x,
                  const int8_t* CB, const float* SCB, const LinearScratch& s, DType bias_dtype,
                  const void* bias, int M, int64_t N, int64_t K, int exact_max_count, T* out) {
  const unsigned blocks = static_cast<unsigned>(ceil_div(N, int64_t{TILES} * kTcCols));
  // Launch errors are read by the caller (cudaGetLastError).
  (void)launch_maybe_dependent(
      after_prepare,
      M > 8 ? linear_gemv_tc_kernel<T, TILES, true> : linear_gemv_tc_kernel<T, TILES, false>,
      dim3(blocks), dim3(kTcWarps * 32), 0, st, q, x, CB, SCB, s.row_scale, s.outlier_idx,
      s.outlier_count, bias_dtype, bias, M, N, K, exact_max_count, out);
}

}  // namespace

bool tensor_core_gemv(int64_t M, int64_t N, int64_t K) {
  // LT8_GEMV_TC: "0" = the dp4a GEMV at every M, "1" = the tensor-core one at every M (for
  // measurements); unset = the measured rule (gemv.cuh).
  static const int mode = [] {
    const char* v = std::getenv("LT8_GEMV_TC");
    return v == nullptr || v[0] == '\0' ? -1 : (v[0] == '0' ? 0 : 1);
  }();
  if (mode == 0 || current_device_cc_major() < 8) return false;
  if (mode == 1) return true;
  const int64_t sms = gemv_sm_count();
  if (M == kGemvTcMinRows && N >= 96 * sms && stream_gemv_fits(M, K)) return false;
  return M >= kGemvTcMinRows;
}

template <typename T>
Status launch_mma_gemv(cudaStream_t st, const int8_t* q, const T* x, const int8_t* CB,
                       const float* SCB, const LinearScratch& s, DType bias_dtype, const void* bias,
                       int64_t M, int64_t N, int64_t K, int exact_max_count, bool after_prepare,
                       T* out) {
  const int m = static_cast<int>(M);
  // Tiles per block, measured on the H200 with weights out of L2 (benchmarks/NOTES.md, v10):
  // 4 (fewer activation reads per weight byte) from N = 48 x the SM count on, else 2 (more
  // blocks), at every M. LT8_GEMV_TILES (1, 2, 4) overrides, for measurements.
  static const int forced = [] {
    const char* v = std::getenv("LT8_GEMV_TILES");
    return v == nullptr ? 0 : std::atoi(v);
  }();
  const int64_t sms = gemv_sm_count();
  int tiles = N >= 48 * sms ? 4 : 2;
  if (forced == 1 || forced == 2 || forced == 4) tiles = forced;
  if (tiles == 4)
    launch_tiles<T, 4>(st, after_prepare, q, x, CB, SCB, s, bias_dtype, bias, m, N, K,
                       exact_max_count, out);
  else if (tiles == 2)
    launch_tiles<T, 2>(st, after_prepare, q, x, CB, SCB, s, bias_dtype, bias, m, N, K,
                       exact_max_count, out);
  else
    launch_tiles<T, 1>(st, after_prepare, q, x, CB, SCB, s, bias_dtype, bias, m, N, K,
                       exact_max_count, out);
  LT8_CHECK_LAUNCH("linear_gemv_tc_kernel");
  return Status::Ok();
}

#define LT8_INSTANTIATE(T)                                                                   \
  template Status launch_mma_gemv<T>(cudaStream_t, const int8_t*, const T*, const int8_t*,   \
                                     const float*, const LinearScratch&, DType, const void*, \
                                     int64_t, int64_t, int64_t, int, bool, T*);
LT8_FOR_EACH_FLOAT_TYPE(LT8_INSTANTIATE)
#undef LT8_INSTANTIATE

}  // namespace gpu
}  // namespace lt8
