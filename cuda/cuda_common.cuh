// Small helpers shared by the CUDA sources of lt8 (kernels.cu, layout.cu): device selection,
// CUDA error -> Status, and float <-> storage-type conversions for float / __half /
// __nv_bfloat16. Header-only; include from .cu files only.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

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

// ---------------------------------------------------------------------------------------------
// Storage type <-> float. Conversions to 16-bit types round to nearest even.

__host__ __device__ __forceinline__ float to_float(float v) {
  return v;
}
__host__ __device__ __forceinline__ float to_float(__half v) {
  return __half2float(v);
}
__host__ __device__ __forceinline__ float to_float(__nv_bfloat16 v) {
  return __bfloat162float(v);
}

template <typename T>
__host__ __device__ __forceinline__ T from_float(float v);
template <>
__host__ __device__ __forceinline__ float from_float<float>(float v) {
  return v;
}
template <>
__host__ __device__ __forceinline__ __half from_float<__half>(float v) {
  return __float2half_rn(v);
}
template <>
__host__ __device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float v) {
  return __float2bfloat16_rn(v);
}

// Element i of a float array whose dtype is only known at run time (bias vectors etc.).
// Non-float dtypes read as NaN (callers validate dtypes on the host).
__device__ __forceinline__ float load_float_any(DType t, const void* p, int64_t i) {
  switch (t) {
    case DType::kF32:
      return static_cast<const float*>(p)[i];
    case DType::kF16:
      return __half2float(static_cast<const __half*>(p)[i]);
    case DType::kBF16:
      return __bfloat162float(static_cast<const __nv_bfloat16*>(p)[i]);
    default:
      return __int_as_float(0x7fc00000);
  }
}

// Calls fn(T{}) with T = float / __half / __nv_bfloat16 for a float dtype; Invalid otherwise.
template <typename Fn>
inline Status dispatch_float(DType t, Fn&& fn) {
  switch (t) {
    case DType::kF32:
      return fn(float{});
    case DType::kF16:
      return fn(__half{});
    case DType::kBF16:
      return fn(__nv_bfloat16{});
    default:
      return Status::Invalid(std::string("unsupported floating dtype ") + dtype_name(t));
  }
}

}  // namespace gpu
}  // namespace lt8
