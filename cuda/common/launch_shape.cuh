// Launch-shape helpers shared by the CUDA kernels: block and grid limits, ceil_div, pointer
// alignment checks, and the macro that instantiates a stage's launcher for every storage type.
// Header-only; include from .cu files only.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>

namespace lt8 {
namespace gpu {

// Block size of the elementwise, quantization and staging kernels.
constexpr int kThreads = 256;
constexpr int64_t kMaxGridX = (int64_t{1} << 31) - 1;
constexpr int64_t kMaxGridYZ = 65535;
// Cap for the grid of grid-stride elementwise kernels.
constexpr int64_t kMaxElementwiseBlocks = int64_t{1} << 20;

inline int64_t ceil_div(int64_t a, int64_t b) {
  return (a + b - 1) / b;
}
inline bool is_aligned(const void* p, size_t a) {
  return reinterpret_cast<uintptr_t>(p) % a == 0;
}
inline unsigned elementwise_blocks(int64_t items) {
  return static_cast<unsigned>(std::min(ceil_div(items, kThreads), kMaxElementwiseBlocks));
}

}  // namespace gpu
}  // namespace lt8

// X(T) for every storage type of the float kernels: stages whose launchers are templates over T
// define them in their own .cu and instantiate them there with this, so that the other stages
// only need the declaration.
#define LT8_FOR_EACH_FLOAT_TYPE(X) X(float) X(__half) X(__nv_bfloat16)
