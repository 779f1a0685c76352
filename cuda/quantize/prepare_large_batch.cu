// The quantization stage of the fused linear op for batches past the GEMV (M >
// small_batch_rows()), 16-bit x, threshold > 0, in ONE cooperative launch: outlier mask,
// outlier compaction, row absmax over the non-outlier columns and int8 rounding. The path it
// replaces (launch_quantize + launch_compact_outliers) is a memset, a mask kernel, a row
// quantizer and a one-block compaction: x read twice from memory and three launch gaps, ~30 us
// per call at M = 2048, K = 4096 on an H200 (benchmarks/NOTES.md v11). Same values as that path:
// the mask is an OR and the absmax a max, so their order does not matter, and the rounding is
// quantize_value's.
//
// Phase 1 (all blocks): every thread tests one 8-column group of x in a strided set of rows and
// ORs its hits into a bit mask (zeroed before the launch); outliers are rare, and so are the
// atomics. A grid-wide barrier (cooperative launch) then makes the mask whole. Phase 2: each
// block copies the mask into shared memory; the last block also compacts it into
// outlier_idx / outlier_count; then teams of warps quantize rows, each lane keeping up to
// kChunksPerLane 16-byte pieces of its row in registers between the absmax and the rounding.
#include <cooperative_groups.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <cstdint>

#include "common/cuda_check.cuh"
#include "common/device_caps.cuh"
#include "common/device_types.cuh"
#include "common/launch_shape.cuh"
#include "common/numerics.h"
#include "quantize/outlier_compaction.cuh"
#include "quantize/quantize.cuh"

namespace lt8 {
namespace gpu {
namespace {

namespace cg = cooperative_groups;

constexpr int kPrepThreads = 512;
constexpr int kPrepWarps = kPrepThreads / 32;
constexpr int kChunksPerLane = 4;  // 16-byte pieces of a row per lane (16 registers)
constexpr int kMaskUnroll = 8;     // rows per step of the mask loop (loads in flight)
// Rows up to kPrepWarps teams of warps x 32 lanes x kChunksPerLane x 8 elements.
constexpr int64_t kPrepMaxK = int64_t{kPrepWarps} * 32 * kChunksPerLane * 8;

__device__ __forceinline__ bool bit8(uint32_t byte_bits, int e) {
  return (byte_bits >> e) & 1u;
}

// Named barrier 1 + team over the team's warps (teams <= 8 when a team has >= 2 warps).
__device__ __forceinline__ void team_barrier(int team, int team_warps) {
  asm volatile("bar.sync %0, %1;" ::"r"(1 + team), "r"(team_warps * 32) : "memory");
}

template <typename T>
__device__ __forceinline__ float elem(const uint4& raw, int e) {
  const uint32_t w[4] = {raw.x, raw.y, raw.z, raw.w};
  return to_float(from_bits16<T>(static_cast<unsigned short>(w[e / 2] >> (16 * (e % 2)))));
}

template <typename T>
__global__ void __launch_bounds__(kPrepThreads, 2)
    prepare_large_batch_kernel(const T* __restrict__ x, int64_t M, int64_t K, float threshold,
                               int team_warps, bool zero_when_all, uint32_t* __restrict__ maskbits,
                               int8_t* __restrict__ q, float* __restrict__ row_scale,
                               int32_t* __restrict__ idx, int32_t* __restrict__ count) {
  extern __shared__ uint32_t smask[];  // (K + 31) / 32 words
  __shared__ int warp_total[kPrepWarps];
  __shared__ float team_amax[kPrepWarps];
  const int64_t groups = K / 8;
  const int64_t words = (K + 31) / 32;
  const int64_t nthreads = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const int64_t gtid = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;

  // Phase 1: thread t < slots * groups tests group t % groups in rows t / groups + i * slots.
  const int64_t slots = nthreads / groups;  // >= 1 (launch_prepare_large_batch)
  if (gtid < slots * groups) {
    const int64_t g = gtid % groups;
    const T* col = x + g * 8;
    uint32_t hit = 0;  // bit e: column 8 g + e
    // Predicated, unrolled: kMaskUnroll independent loads in flight, no serial tail.
    for (int64_t m = gtid / groups; m < M; m += kMaskUnroll * slots) {
      uint4 raw[kMaskUnroll];
#pragma unroll
      for (int u = 0; u < kMaskUnroll; ++u)
        raw[u] = m + u * slots < M ? *reinterpret_cast<const uint4*>(col + (m + u * slots) * K)
                                   : make_uint4(0, 0, 0, 0);  // zeros are no outliers
#pragma unroll
      for (int u = 0; u < kMaskUnroll; ++u)
#pragma unroll
        for (int e = 0; e < 8; ++e) hit |= is_outlier(elem<T>(raw[u], e), threshold) ? 1u << e : 0u;
    }
    if (hit) atomicOr(maskbits + g / 4, hit << (8 * (g % 4)));
  }
  cg::this_grid().sync();

  // Phase 2: the whole mask in shared memory (from L2: the atomics wrote it there).
  int ones = 0;
  for (int64_t w = threadIdx.x; w < words; w += blockDim.x) {
    const uint32_t bits = __ldcg(maskbits + w);
    smask[w] = bits;
    ones += __popc(bits);
  }
  // The outlier count, for the all-outlier case (below).
  bool all = false;
  if (zero_when_all) {
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) ones += __shfl_xor_sync(0xffffffffu, ones, off);
    if (threadIdx.x % 32 == 0) warp_total[threadIdx.x / 32] = ones;
    __syncthreads();
    int total = 0;
    for (int w = 0; w < kPrepWarps; ++w) total += warp_total[w];
    all = total == K;
  }
  __syncthreads();  // smask complete; warp_total free for the compaction

  if (blockIdx.x == gridDim.x - 1) {  // ascending k, as launch_compact_outliers
    int64_t carry = 0;
    for (int64_t base = 0; base < words; base += kPrepThreads) {
      const int64_t w = base + threadIdx.x;
      carry += compact_step<kPrepThreads>(w < words ? smask[w] : 0u, w * 32, carry, warp_total,
                                          idx);
    }
    if (threadIdx.x == 0) *count = static_cast<int32_t>(carry);
  }

  if (all) {
    // Every column is an outlier column: the int8 operand is all zeros and the caller's int8
    // GEMM stands aside (zero_when_all), so only the scales are written (absmax over no
    // column: 0).
    for (int64_t m = gtid; m < M; m += nthreads) row_scale[m] = 0.0f;
    return;
  }

  // Rows: teams of team_warps warps, kPrepWarps / team_warps teams per block; every thread runs
  // the same number of steps (the team's partial absmax meets in shared memory).
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int teams = kPrepWarps / team_warps;
  const int team = warp / team_warps, member = warp % team_warps;
  const int64_t team_threads = int64_t{team_warps} * 32;
  const int64_t rows_per_step = static_cast<int64_t>(gridDim.x) * teams;
  const int64_t steps = (M + rows_per_step - 1) / rows_per_step;
  for (int64_t s = 0; s < steps; ++s) {
    const int64_t m = s * rows_per_step + static_cast<int64_t>(blockIdx.x) * teams + team;
    const bool live = team < teams && m < M;
    const T* row = x + (live ? m : 0) * K;
    uint4 raw[kChunksPerLane];
    uint32_t mk[kChunksPerLane];
#pragma unroll
    for (int c = 0; c < kChunksPerLane; ++c) {
      const int64_t j = (c * team_threads) + member * 32 + lane;  // 8-column group
      const bool in = live && j < groups;
      raw[c] = in ? *reinterpret_cast<const uint4*>(row + 8 * j) : make_uint4(0, 0, 0, 0);
      mk[c] = in ? (smask[j / 4] >> (8 * (j % 4))) & 0xffu : 0xffu;
    }
    float amax = 0.0f;
#pragma unroll
    for (int c = 0; c < kChunksPerLane; ++c)
#pragma unroll
      for (int e = 0; e < 8; ++e)
        if (!bit8(mk[c], e)) amax = absmax_step(amax, elem<T>(raw[c], e));
#pragma unroll
    for (int off = 16; off > 0; off >>= 1)
      amax = absmax_combine(amax, __shfl_xor_sync(0xffffffffu, amax, off));
    if (team_warps > 1 && team < teams) {
      // The team's warps meet at their own named barrier (1 + team; 0 is __syncthreads'), so
      // that teams of one block do not wait for each other.
      if (lane == 0) team_amax[warp] = amax;
      team_barrier(team, team_warps);
      amax = team_amax[team * team_warps];
      for (int w = 1; w < team_warps; ++w)
        amax = absmax_combine(amax, team_amax[team * team_warps + w]);
      team_barrier(team, team_warps);  // team_amax is rewritten by the next step
    }
    if (!live) continue;
    if (member == 0 && lane == 0) row_scale[m] = amax;
#pragma unroll
    for (int c = 0; c < kChunksPerLane; ++c) {
      const int64_t j = (c * team_threads) + member * 32 + lane;
      if (j >= groups) continue;
      uint32_t packed[2] = {0, 0};
#pragma unroll
      for (int e = 0; e < 8; ++e) {
        const int8_t qe = bit8(mk[c], e) ? int8_t{0} : quantize_value(elem<T>(raw[c], e), amax);
        packed[e / 4] |= static_cast<uint32_t>(static_cast<uint8_t>(qe)) << (8 * (e % 4));
      }
      *reinterpret_cast<uint2*>(q + m * K + 8 * j) = make_uint2(packed[0], packed[1]);
    }
  }
}

// Blocks of the cooperative grid per SM for this kernel (0: cannot launch), per device.
template <typename T>
int blocks_per_sm() {
  constexpr int kDevices = 64;
  static int cached[kDevices] = {};  // 0: not read yet; -1: read, none fit
  int dev = 0;
  if (cudaGetDevice(&dev) != cudaSuccess || dev < 0 || dev >= kDevices) return 0;
  if (cached[dev] == 0) {
    int n = 0;
    const size_t smem = static_cast<size_t>((kPrepMaxK + 31) / 32) * 4;
    if (cudaOccupancyMaxActiveBlocksPerMultiprocessor(&n, prepare_large_batch_kernel<T>,
                                                      kPrepThreads, smem) != cudaSuccess)
      n = 0;
    cached[dev] = n > 0 ? n : -1;
  }
  return cached[dev] > 0 ? cached[dev] : 0;
}

}  // namespace

template <typename T>
bool launch_prepare_large_batch(cudaStream_t st, const T* x, int64_t M, int64_t K,
                                float threshold, bool zero_when_all, const LinearScratch& s,
                                Status* err) {
  if constexpr (sizeof(T) != 2) {
    return false;
  } else {
    if (!(threshold > 0.0f) || M <= 0 || K <= 0 || K % 8 != 0 || K > kPrepMaxK ||
        !is_aligned(x, 16) || !is_aligned(s.q, 8) || !is_aligned(s.mask, 4))
      return false;
    const int per_sm = blocks_per_sm<T>();
    const int sms = current_device_sm_count();
    if (per_sm == 0 || sms == 0) return false;
    const int64_t groups = K / 8;
    const int64_t blocks = int64_t{per_sm} * sms;
    if (blocks * kPrepThreads < groups) return false;  // phase 1 needs a thread per group
    // A team covers the row with at most kChunksPerLane pieces per lane.
    const int team_warps =
        static_cast<int>((groups + int64_t{32} * kChunksPerLane - 1) / (int64_t{32} * kChunksPerLane));
    auto* maskbits = reinterpret_cast<uint32_t*>(s.mask);  // K bytes hold the K bits
    const size_t words = static_cast<size_t>((K + 31) / 32);
    if (cudaError_t e = cudaMemsetAsync(maskbits, 0, words * 4, st); e != cudaSuccess) {
      *err = cuda_error(e, "cudaMemsetAsync(outlier mask bits)");
      return false;
    }
    cudaLaunchAttribute attr[1];
    attr[0].id = cudaLaunchAttributeCooperative;
    attr[0].val.cooperative = 1;
    cudaLaunchConfig_t cfg{};
    cfg.gridDim = dim3(static_cast<unsigned>(blocks));
    cfg.blockDim = dim3(kPrepThreads);
    cfg.dynamicSmemBytes = words * 4;
    cfg.stream = st;
    cfg.attrs = attr;
    cfg.numAttrs = 1;
    if (cudaError_t e = cudaLaunchKernelEx(&cfg, prepare_large_batch_kernel<T>, x, M, K, threshold,
                                           team_warps, zero_when_all, maskbits, s.q, s.row_scale,
                                           s.outlier_idx, s.outlier_count);
        e != cudaSuccess) {
      *err = cuda_error(e, "prepare_large_batch_kernel");
      return false;
    }
    return true;
  }
}

#define LT8_INSTANTIATE(T)                                                                        \
  template bool launch_prepare_large_batch<T>(cudaStream_t, const T*, int64_t, int64_t, float, \
                                              bool, const LinearScratch&, Status*);
LT8_FOR_EACH_FLOAT_TYPE(LT8_INSTANTIATE)
#undef LT8_INSTANTIATE

}  // namespace gpu
}  // namespace lt8
