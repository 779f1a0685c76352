// CUDA error -> Status and device selection, shared by every CUDA source of the kernel library.
// Header-only; include from .cu files only.
#pragma once

#include <cuda_runtime.h>

#include <atomic>
#include <cstdint>
#include <string>

#include "lt8.h"

namespace lt8 {
namespace gpu {

// ---------------------------------------------------------------------------------------------
// Errors.

// A CUDA error as a Status::Internal naming the operation (kernel or runtime call).
inline Status cuda_error(cudaError_t err, const char* what) {
  return Status::Internal(std::string("CUDA error in ") + what + ": " + cudaGetErrorName(err) +
                          " (" + cudaGetErrorString(err) + ")");
}

inline Status check_cuda(cudaError_t err, const char* what) {
  return err == cudaSuccess ? Status::Ok() : cuda_error(err, what);
}

// Returns a Status::Internal from the enclosing function when `expr` (a cudaError_t) fails.
#define LT8_CUDA_RETURN_IF_ERROR(expr, what)                                                \
  do {                                                                                      \
    cudaError_t lt8_cuda_err_ = (expr);                                                     \
    if (lt8_cuda_err_ != cudaSuccess) return ::lt8::gpu::cuda_error(lt8_cuda_err_, (what)); \
  } while (0)

// Use right after a <<<...>>> launch: reports launch-configuration errors.
#define LT8_CHECK_LAUNCH(kernel_name) LT8_CUDA_RETURN_IF_ERROR(cudaGetLastError(), (kernel_name))

// Lets `kernel` launch with `bytes` of dynamic shared memory on the current device: above the
// 48 KiB a launch may take by default a kernel must opt in (cudaFuncSetAttribute), once per
// device; `allowed` (one static per kernel) remembers the devices done (bit d for device d < 64).
template <typename Kernel>
Status allow_dynamic_smem(Kernel kernel, size_t bytes, std::atomic<uint64_t>& allowed,
                          const char* what) {
  if (bytes <= 48 * 1024) return Status::Ok();
  int dev = 0;
  LT8_CUDA_RETURN_IF_ERROR(cudaGetDevice(&dev), "cudaGetDevice");
  const uint64_t bit = dev < 64 ? uint64_t{1} << dev : 0;
  if (bit != 0 && (allowed.load(std::memory_order_relaxed) & bit)) return Status::Ok();
  LT8_CUDA_RETURN_IF_ERROR(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                                static_cast<int>(bytes)),
                           what);
  allowed.fetch_or(bit, std::memory_order_relaxed);
  return Status::Ok();
}

// ---------------------------------------------------------------------------------------------
// Device selection: when device_index >= 0, makes it current for the guard's lifetime and then
// restores the caller's device. No-op for device_index < 0. Check ok() before launching.
class DeviceGuard {
 public:
  explicit DeviceGuard(int device_index) {
    if (device_index < 0) return;
    cudaError_t err = cudaGetDevice(&prev_);
    if (err != cudaSuccess) {
      status_ = cuda_error(err, "cudaGetDevice");
      return;
    }
    if (prev_ == device_index) return;
    err = cudaSetDevice(device_index);
    if (err != cudaSuccess) {
      status_ = cuda_error(err, "cudaSetDevice");
      return;
    }
    switched_ = true;
  }
  explicit DeviceGuard(const Exec& ex) : DeviceGuard(ex.device_index) {}
  ~DeviceGuard() {
    if (switched_) cudaSetDevice(prev_);
  }
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;

  bool ok() const { return status_.ok(); }
  const Status& status() const { return status_; }

 private:
  int prev_ = -1;
  bool switched_ = false;
  Status status_;
};

inline cudaStream_t stream_of(const Exec& ex) {
  return static_cast<cudaStream_t>(ex.stream);
}

}  // namespace gpu
}  // namespace lt8
