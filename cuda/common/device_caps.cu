#include "common/device_caps.cuh"

#include <cuda_runtime.h>

#include <atomic>

namespace lt8 {
namespace gpu {
namespace {

// 0 = not read yet. Concurrent first calls store the same value.
constexpr int kMaxCachedDevices = 64;
std::atomic<int> g_cc_major[kMaxCachedDevices];
std::atomic<int> g_sm_count[kMaxCachedDevices];
std::atomic<int> g_cc_minor_plus_1[kMaxCachedDevices];

int cached_attribute(std::atomic<int>* cache, cudaDeviceAttr attr) {
  int dev = 0;
  if (cudaGetDevice(&dev) != cudaSuccess) return 0;
  const bool cacheable = dev >= 0 && dev < kMaxCachedDevices;
  int value = cacheable ? cache[dev].load(std::memory_order_relaxed) : 0;
  if (value == 0) {
    if (cudaDeviceGetAttribute(&value, attr, dev) != cudaSuccess) return 0;
    if (cacheable) cache[dev].store(value, std::memory_order_relaxed);
  }
  return value;
}

}  // namespace

int current_device_cc_major() {
  return cached_attribute(g_cc_major, cudaDevAttrComputeCapabilityMajor);
}

int current_device_cc() {
  const int major = current_device_cc_major();
  // Minor versions are cached plus one: 0 means "not read yet" in the cache.
  int dev = 0;
  if (major == 0 || cudaGetDevice(&dev) != cudaSuccess) return 0;
  const bool cacheable = dev >= 0 && dev < kMaxCachedDevices;
  int minor1 = cacheable ? g_cc_minor_plus_1[dev].load(std::memory_order_relaxed) : 0;
  if (minor1 == 0) {
    int minor = 0;
    if (cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, dev) != cudaSuccess)
      return 0;
    minor1 = minor + 1;
    if (cacheable) g_cc_minor_plus_1[dev].store(minor1, std::memory_order_relaxed);
  }
  return major * 10 + (minor1 - 1);
}

int current_device_sm_count() {
  return cached_attribute(g_sm_count, cudaDevAttrMultiProcessorCount);
}

}  // namespace gpu
}  // namespace lt8
