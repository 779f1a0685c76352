// Small-batch preparation in one launch (M <= kSmallBatchRows, K % 8 == 0, K <= kPrepMaxK):
// replaces the memset + mask + quantize + compaction launches of quantize.cu, whose launch
// overhead and gaps dominate at decode sizes. Block b quantizes row b. Every block first finds the
// outlier columns of the whole (small) batch itself, into shared memory (a few hundred KiB of L2
// reads in all, no grid-wide sync); block 0 also writes them out compacted in ascending order.
// Same values as those kernels (max is order-independent).
#include <cstdint>

#include "common/cuda_check.cuh"
#include "common/dependent_launch.cuh"
#include "common/device_types.cuh"
#include "common/launch_shape.cuh"
#include "common/numerics.h"
#include "gemv/gemv.cuh"
#include "quantize/outlier_compaction.cuh"
#include "quantize/quantize.cuh"

namespace lt8 {
namespace gpu {
namespace {

constexpr int kPrepThreads = 1024;
constexpr int kPrepVec = 8;  // consecutive columns per thread and step

__device__ __forceinline__ bool mask_bit(const uint2& mk, int e) {
  return ((e < 4 ? mk.x : mk.y) >> (8 * (e & 3))) & 0xffu;
}

template <typename T>
__global__ void __launch_bounds__(kPrepThreads)
    prepare_small_batch_kernel(const T* __restrict__ x, int M, int64_t K, float threshold,
                               int32_t* __restrict__ idx, int32_t* __restrict__ count,
                               int8_t* __restrict__ q, float* __restrict__ row_scale) {
  extern __shared__ uint2 smask[];  // K bytes: 1 for outlier columns
  __shared__ int warp_total[kPrepThreads / 32];
  __shared__ float partial[kPrepThreads / 32];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const bool writer = blockIdx.x == 0;
  // The GEMV after this kernel may start now: it prefetches its weights, then waits for this
  // kernel to finish (common/dependent_launch.cuh).
  release_dependent_kernel();

  // (1) Outlier columns of the batch.
  int64_t carry = 0;
  for (int64_t base = 0; base < K; base += int64_t{kPrepThreads} * kPrepVec) {
    const int64_t k0 = base + static_cast<int64_t>(threadIdx.x) * kPrepVec;
    uint32_t flags = 0;  // bit e: column k0 + e is an outlier column
    if (threshold > 0.0f && k0 < K) {
#pragma unroll 4
      for (int m = 0; m < M; ++m) {
        float f[8];
        load8(x + m * K + k0, f);
#pragma unroll
        for (int e = 0; e < kPrepVec; ++e)
          if (is_outlier(f[e], threshold)) flags |= 1u << e;
      }
    }
    if (k0 < K) {
      uint2 bytes = make_uint2(0, 0);
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        bytes.x |= ((flags >> e) & 1u) << (8 * e);
        bytes.y |= ((flags >> (4 + e)) & 1u) << (8 * e);
      }
      smask[k0 / kPrepVec] = bytes;
    }
    if (writer)  // block-uniform branch: compaction in ascending k
      carry += compact_step<kPrepThreads>(flags, k0, carry, warp_total, idx);
  }
  if (writer && threadIdx.x == 0) *count = static_cast<int32_t>(carry);
  __syncthreads();  // smask complete

  // (2) Row blockIdx.x: absmax over the non-outlier columns, then quantize.
  const int m = blockIdx.x;
  const T* row = x + static_cast<int64_t>(m) * K;
  float amax = 0.0f;
#pragma unroll 2
  for (int64_t k0 = int64_t{threadIdx.x} * kPrepVec; k0 < K;
       k0 += int64_t{kPrepThreads} * kPrepVec) {
    float f[8];
    load8(row + k0, f);
    const uint2 mk = smask[k0 / kPrepVec];
#pragma unroll
    for (int e = 0; e < kPrepVec; ++e)
      if (!mask_bit(mk, e)) amax = absmax_step(amax, f[e]);
  }
#pragma unroll
  for (int off = 16; off > 0; off >>= 1)
    amax = absmax_combine(amax, __shfl_xor_sync(0xffffffffu, amax, off));
  if (lane == 0) partial[warp] = amax;
  __syncthreads();
  amax = partial[0];
  for (int w = 1; w < kPrepThreads / 32; ++w) amax = absmax_combine(amax, partial[w]);
  if (threadIdx.x == 0) row_scale[m] = amax;
  int8_t* qrow = q + static_cast<int64_t>(m) * K;
#pragma unroll 2
  for (int64_t k0 = int64_t{threadIdx.x} * kPrepVec; k0 < K;
       k0 += int64_t{kPrepThreads} * kPrepVec) {
    float f[8];
    load8(row + k0, f);
    const uint2 mk = smask[k0 / kPrepVec];
    uint2 packed = make_uint2(0, 0);
#pragma unroll
    for (int e = 0; e < kPrepVec; ++e) {
      const int8_t qe = mask_bit(mk, e) ? int8_t{0} : quantize_value(f[e], amax);
      const uint32_t b = static_cast<uint32_t>(static_cast<uint8_t>(qe)) << (8 * (e & 3));
      if (e < 4)
        packed.x |= b;
      else
        packed.y |= b;
    }
    *reinterpret_cast<uint2*>(qrow + k0) = packed;
  }
}

}  // namespace

template <typename T>
Status launch_prepare_small_batch(cudaStream_t st, const T* x, int64_t M, int64_t K,
                                  float threshold, const LinearScratch& s) {
  prepare_small_batch_kernel<T><<<static_cast<unsigned>(M), kPrepThreads, K, st>>>(
      x, static_cast<int>(M), K, threshold, s.outlier_idx, s.outlier_count, s.q, s.row_scale);
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
