// Small-batch preparation in one launch (M <= kSmallBatchRows, K % 8 == 0, K <= kPrepMaxK):
// replaces the memset + mask + quantize + compaction launches of quantize.cu, whose launch
// overhead and gaps dominate at decode sizes. Block b quantizes row b. Every block first finds the
// outlier columns of the whole (small) batch itself (a few hundred KiB of L2 reads in all, no
// grid-wide sync); block 0 also writes them out compacted in ascending order. Same values as
// those kernels (max is order-independent, NaN winning either way).
//
// Latency is all that matters here (the GEMV after it waits for it): each thread keeps its
// ITERS x 8 columns of its block's row in registers from one read of x, so the absmax, the
// outlier flags and the quantization need no second pass, and the block meets once
// (__syncthreads) to combine the warps' absmax and outlier counts. The former kernel made three
// passes over x with five barriers and serial 32-entry loops over the warps' totals: 7 us at
// K = 8192 and 16-33 us at K = 28672 (ncu, benchmarks/NOTES.md v10).
#include <cstdint>

#include "common/cuda_check.cuh"
#include "common/dependent_launch.cuh"
#include "common/device_types.cuh"
#include "common/launch_shape.cuh"
#include "common/numerics.h"
#include "gemv/gemv.cuh"
#include "quantize/quantize.cuh"

namespace lt8 {
namespace gpu {
namespace {

constexpr int kPrepMaxThreads = 1024;
constexpr int kPrepVec = 8;  // consecutive columns per thread and step
constexpr int kPrepMaxIters = static_cast<int>(kPrepMaxK / (kPrepMaxThreads * kPrepVec));

// The exclusive prefix sums of the warps' outlier counts, `entries` = ITERS x warps of them in
// ascending column order (step-major), computed by every warp from shared memory: lane l sums
// entries 4l .. 4l + 3, a warp scan gives the lanes' offsets. Returns entry `e`'s offset; *total
// receives the sum of all entries.
__device__ __forceinline__ int entry_offset(const int* wtot, int entries, int e, int* total) {
  const int lane = threadIdx.x & 31;
  int v[4], s = 0;
#pragma unroll
  for (int j = 0; j < 4; ++j) {
    const int i = 4 * lane + j;
    v[j] = s;  // exclusive within the lane
    s += i < entries ? wtot[i] : 0;
  }
  int incl = s;
#pragma unroll
  for (int off = 1; off < 32; off <<= 1) {
    const int y = __shfl_up_sync(0xffffffffu, incl, off);
    if (lane >= off) incl += y;
  }
  *total = __shfl_sync(0xffffffffu, incl, 31);
  const int lane_base = incl - s;
  const int src = e >> 2, j = e & 3;
  const int base = __shfl_sync(0xffffffffu, lane_base, src);
  const int w0 = __shfl_sync(0xffffffffu, v[0], src), w1 = __shfl_sync(0xffffffffu, v[1], src);
  const int w2 = __shfl_sync(0xffffffffu, v[2], src), w3 = __shfl_sync(0xffffffffu, v[3], src);
  return base + (j == 0 ? w0 : j == 1 ? w1 : j == 2 ? w2 : w3);
}

template <typename T, int ITERS>
__global__ void __launch_bounds__(kPrepMaxThreads, 1)
    prepare_small_batch_kernel(const T* __restrict__ x, int M, int64_t K, float threshold,
                               int32_t* __restrict__ idx, int32_t* __restrict__ count,
                               int8_t* __restrict__ q, float* __restrict__ row_scale) {
  __shared__ float partial[kPrepMaxThreads / 32];
  __shared__ int wtot[kPrepMaxIters * (kPrepMaxThreads / 32)];  // [step][warp] outlier counts
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  const int m = blockIdx.x;
  const bool writer = blockIdx.x == 0;
  // The GEMV after this kernel may start now: it prefetches its weights, then waits for this
  // kernel to finish (common/dependent_launch.cuh).
  release_dependent_kernel();

  // This thread's columns of row m (step it: k0 = (it * blockDim.x + threadIdx.x) * 8), and
  // which of them are outlier columns of the batch (bit e of flags[it]).
  float own[ITERS][kPrepVec];
  uint32_t flags[ITERS];
  const T* row = x + static_cast<int64_t>(m) * K;
#pragma unroll
  for (int it = 0; it < ITERS; ++it) {
    const int64_t k0 = (static_cast<int64_t>(it) * blockDim.x + threadIdx.x) * kPrepVec;
    flags[it] = 0;
    if (k0 < K) {
      load8(row + k0, own[it]);
    } else {
#pragma unroll
      for (int e = 0; e < kPrepVec; ++e) own[it][e] = 0.0f;
    }
  }
  if (threshold > 0.0f) {
#pragma unroll
    for (int it = 0; it < ITERS; ++it) {
      const int64_t k0 = (static_cast<int64_t>(it) * blockDim.x + threadIdx.x) * kPrepVec;
      if (k0 >= K) continue;
#pragma unroll
      for (int e = 0; e < kPrepVec; ++e)
        if (is_outlier(own[it][e], threshold)) flags[it] |= 1u << e;
#pragma unroll 4
      for (int r = 0; r < M; ++r) {
        if (r == m) continue;
        float f[kPrepVec];
        load8(x + static_cast<int64_t>(r) * K + k0, f);
#pragma unroll
        for (int e = 0; e < kPrepVec; ++e)
          if (is_outlier(f[e], threshold)) flags[it] |= 1u << e;
      }
    }
  }

  // The warp's absmax over the non-outlier columns, and (block 0) its outlier counts per step.
  float amax = 0.0f;
  int below[ITERS];  // outlier columns of this step in the warp's lower lanes
#pragma unroll
  for (int it = 0; it < ITERS; ++it) {
#pragma unroll
    for (int e = 0; e < kPrepVec; ++e)
      if (!((flags[it] >> e) & 1u)) amax = absmax_step(amax, own[it][e]);
    below[it] = 0;
    if (writer) {
      const int mine = __popc(flags[it]);
      int incl = mine;
#pragma unroll
      for (int off = 1; off < 32; off <<= 1) {
        const int y = __shfl_up_sync(0xffffffffu, incl, off);
        if (lane >= off) incl += y;
      }
      below[it] = incl - mine;
      if (lane == 31) wtot[it * warps + warp] = incl;
    }
  }
#pragma unroll
  for (int off = 16; off > 0; off >>= 1)
    amax = absmax_combine(amax, __shfl_xor_sync(0xffffffffu, amax, off));
  if (lane == 0) partial[warp] = amax;
  __syncthreads();
  amax = lane < warps ? partial[lane] : 0.0f;
#pragma unroll
  for (int off = 16; off > 0; off >>= 1)
    amax = absmax_combine(amax, __shfl_xor_sync(0xffffffffu, amax, off));

  if (writer) {  // block-uniform: the outlier columns, ascending
    int total = 0;
#pragma unroll
    for (int it = 0; it < ITERS; ++it) {
      int pos = entry_offset(wtot, ITERS * warps, it * warps + warp, &total) + below[it];
      const int64_t k0 = (static_cast<int64_t>(it) * blockDim.x + threadIdx.x) * kPrepVec;
      uint32_t f = flags[it];
      while (f) {
        const int p = __ffs(f) - 1;
        f &= f - 1;
        idx[pos++] = static_cast<int32_t>(k0 + p);
      }
    }
    if (threadIdx.x == 0) *count = total;
  }

  if (threadIdx.x == 0) row_scale[m] = amax;
  int8_t* qrow = q + static_cast<int64_t>(m) * K;
#pragma unroll
  for (int it = 0; it < ITERS; ++it) {
    const int64_t k0 = (static_cast<int64_t>(it) * blockDim.x + threadIdx.x) * kPrepVec;
    if (k0 >= K) continue;
    uint2 packed = make_uint2(0, 0);
#pragma unroll
    for (int e = 0; e < kPrepVec; ++e) {
      const int8_t qe = (flags[it] >> e) & 1u ? int8_t{0} : quantize_value(own[it][e], amax);
      const uint32_t b = static_cast<uint32_t>(static_cast<uint8_t>(qe)) << (8 * (e & 3));
      if (e < 4)
        packed.x |= b;
      else
        packed.y |= b;
    }
    *reinterpret_cast<uint2*>(qrow + k0) = packed;
  }
}

template <typename T, int ITERS>
void launch_iters(cudaStream_t st, const T* x, int M, int64_t K, float threshold, int threads,
                  const LinearScratch& s) {
  prepare_small_batch_kernel<T, ITERS><<<static_cast<unsigned>(M), threads, 0, st>>>(
      x, M, K, threshold, s.outlier_idx, s.outlier_count, s.q, s.row_scale);
}

}  // namespace

template <typename T>
Status launch_prepare_small_batch(cudaStream_t st, const T* x, int64_t M, int64_t K,
                                  float threshold, const LinearScratch& s) {
  // One step of up to 1024 threads x 8 columns up to K = 8192, then up to 4 steps.
  const int64_t groups = K / kPrepVec;
  const int iters = static_cast<int>(ceil_div(groups, int64_t{kPrepMaxThreads}));
  const int threads =
      iters == 1 ? static_cast<int>(ceil_div(groups, int64_t{32}) * 32) : kPrepMaxThreads;
  const int m = static_cast<int>(M);
  switch (iters) {
    case 1:
      launch_iters<T, 1>(st, x, m, K, threshold, threads, s);
      break;
    case 2:
      launch_iters<T, 2>(st, x, m, K, threshold, threads, s);
      break;
    case 3:
      launch_iters<T, 3>(st, x, m, K, threshold, threads, s);
      break;
    default:
      launch_iters<T, kPrepMaxIters>(st, x, m, K, threshold, threads, s);
      break;
  }
  LT8_CHECK_LAUNCH("prepare_small_batch_kernel");
  return Status::Ok();
}

#define LT8_INSTANTIATE(T)                                                                       \
  template Status launch_prepare_small_batch<T>(cudaStream_t, const T*, int64_t, int64_t, float, \
                                                const LinearScratch&);
LT8_FOR_EACH_FLOAT_TYPE(LT8_INSTANTIATE)
#undef LT8_INSTANTIATE

}  // namespace gpu
}  // namespace lt8
