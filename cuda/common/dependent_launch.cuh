// Programmatic dependent launch (sm_90+): a kernel may start while the kernel before it in the
// stream still runs, do work that does not read that kernel's results (address set-up, L2
// prefetches of its constant operands), then wait for it. The decode path uses it to hide its
// preparation kernel (a block per row, a few us at decode sizes, with the GPU otherwise idle)
// behind the start of the GEMV's weight stream, and the dense-outlier GEMV's launch behind the
// GEMV (benchmarks/NOTES.md, v9, v10). Without the launch attribute
// (older GPUs, LT8_PDL=0) the wait returns at once and the launch is an ordinary one.
// Header-only; include from .cu files only.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <cstdlib>
#include <utility>

#include "common/device_caps.cuh"

namespace lt8 {
namespace gpu {

// In the dependent kernel: returns once the kernel before it has finished and its writes are
// visible. Nothing that kernel writes may be read before this.
__device__ __forceinline__ void wait_for_prior_kernel() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

// In the kernel before it: lets the dependent kernel start now (it still waits for this one's
// completion before reading what it writes).
__device__ __forceinline__ void release_dependent_kernel() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;" :::);
#endif
}

// Asks the memory system to bring [p, p + bytes) into L2 without a register destination (p and
// bytes multiples of 16). A hint: a no-op before sm_90.
__device__ __forceinline__ void prefetch_l2(const void* p, uint32_t bytes) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("cp.async.bulk.prefetch.L2.global [%0], %1;" ::"l"(p), "r"(bytes) : "memory");
#endif
}

// Asks L2 for the 128-byte line holding p (prefetch.global.L2): a hint, any arch. The GEMVs
// use it at their start for the per-column scales and the bias that their epilogue reads last,
// so that the epilogue does not wait a DRAM round trip after the weight stream.
__device__ __forceinline__ void prefetch_l2_line(const void* p) {
  asm volatile("prefetch.global.L2 [%0];" ::"l"(p));
}

// How much of each weight row a GEMV block brings in before it waits (into registers in the stream
// and mma GEMVs, the mma one also asking L2 for the next 2 KiB; into L2 in the chunked one):
// 2 KiB x 8192 rows is 16 MiB, what the H200's HBM delivers in the preparation's few microseconds.
constexpr int64_t kPrefetchRowBytes = 2048;

// True when dependent launches run: a device of sm_90+ and LT8_PDL not "0" (for comparisons).
inline bool dependent_launch_enabled() {
  static const bool env_on = [] {
    const char* v = std::getenv("LT8_PDL");
    return v == nullptr || v[0] != '0';
  }();
  return env_on && current_device_cc_major() >= 9;
}

// kernel<<<grid, block, smem, st>>>(args...), as a dependent launch of the kernel before it in
// the stream when `dependent` and dependent_launch_enabled().
template <typename... Params, typename... Args>
cudaError_t launch_maybe_dependent(bool dependent, void (*kernel)(Params...), dim3 grid, dim3 block,
                                   size_t smem, cudaStream_t st, Args&&... args) {
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attr[0].val.programmaticStreamSerializationAllowed = 1;
  cudaLaunchConfig_t cfg{};
  cfg.gridDim = grid;
  cfg.blockDim = block;
  cfg.dynamicSmemBytes = smem;
  cfg.stream = st;
  cfg.attrs = attr;
  cfg.numAttrs = dependent && dependent_launch_enabled() ? 1 : 0;
  return cudaLaunchKernelEx(&cfg, kernel, std::forward<Args>(args)...);
}

}  // namespace gpu
}  // namespace lt8
