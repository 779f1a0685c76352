// Ordered block-wide compaction of outlier columns, shared by the outlier compaction kernel
// (quantize.cu) and the small-batch preparation kernel (gemv/prepare_small_batch.cu).
// Header-only; include from .cu files only.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace lt8 {
namespace gpu {

// One step of an ordered block-wide compaction. Bit p of each thread's `flags` marks column
// k0 + p; the marked columns are appended to idx in ascending order after the `carry` entries
// already there (threads own ascending column ranges). Returns the block's count for this step.
// Every thread of the block must call it; warp_total holds THREADS / 32 ints.
template <int THREADS>
__device__ __forceinline__ int compact_step(uint32_t flags, int64_t k0, int64_t carry,
                                            int* warp_total, int32_t* __restrict__ idx) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int mine = __popc(flags);
  int incl = mine;  // inclusive warp scan
#pragma unroll
  for (int off = 1; off < 32; off <<= 1) {
    const int y = __shfl_up_sync(0xffffffffu, incl, off);
    if (lane >= off) incl += y;
  }
  if (lane == 31) warp_total[warp] = incl;
  __syncthreads();
  int warp_offset = 0, block_total = 0;
  for (int w = 0; w < THREADS / 32; ++w) {
    const int t = warp_total[w];
    if (w < warp) warp_offset += t;
    block_total += t;
  }
  int64_t pos = carry + warp_offset + (incl - mine);
  while (flags) {
    const int p = __ffs(flags) - 1;
    flags &= flags - 1;
    idx[pos++] = static_cast<int32_t>(k0 + p);
  }
  __syncthreads();  // warp_total is rewritten by the next step
  return block_total;
}

}  // namespace gpu
}  // namespace lt8
