#include "common/device_caps.cuh"

#include <cuda_runtime.h>

#include <atomic>

namespace lt8 {
namespace gpu {
namespace {

// 0 = not read yet. Concurrent first calls store the same value.
constexpr int kMaxCachedDevices = 64;
std::atomic<int> g_cc_major[kMaxCachedDevices];

}  // namespace

int current_device_cc_major() {
  int dev = 0;
  if (cudaGetDevice(&dev) != cudaSuccess) return 0;
  const bool cacheable = dev >= 0 && dev < kMaxCachedDevices;
  int major = cacheable ? g_cc_major[dev].load(std::memory_order_relaxed) : 0;
  if (major == 0) {
    if (cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev) != cudaSuccess)
      return 0;
    if (cacheable) g_cc_major[dev].store(major, std::memory_order_relaxed);
  }
  return major;
}

}  // namespace gpu
}  // namespace lt8
