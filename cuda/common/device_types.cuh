// Storage types of the CUDA kernels (float / __half / __nv_bfloat16): conversions to and from
// float, 4- and 8-element vector access, and the run-time dtype -> template type switch.
// Header-only; include from .cu files only.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <string>
#include <type_traits>

#include "lt8.h"

namespace lt8 {
namespace gpu {

// The DType code of a storage type (the inverse of dispatch_float below).
template <typename T>
constexpr DType dtype_of() {
  if constexpr (std::is_same_v<T, float>) return DType::kF32;
  if constexpr (std::is_same_v<T, __half>) return DType::kF16;
  return DType::kBF16;
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

// ---------------------------------------------------------------------------------------------
// Four consecutive elements of T <-> float[4]. The pointer must be 4 * sizeof(T) aligned.

template <typename T>
__device__ __forceinline__ T from_bits16(unsigned short b);
template <>
__device__ __forceinline__ __half from_bits16<__half>(unsigned short b) {
  return __ushort_as_half(b);
}
template <>
__device__ __forceinline__ __nv_bfloat16 from_bits16<__nv_bfloat16>(unsigned short b) {
  return __ushort_as_bfloat16(b);
}
__device__ __forceinline__ unsigned short to_bits16(__half h) {
  return __half_as_ushort(h);
}
__device__ __forceinline__ unsigned short to_bits16(__nv_bfloat16 h) {
  return __bfloat16_as_ushort(h);
}

template <typename T>
__device__ __forceinline__ void load4(const T* p, float (&f)[4]) {
  if constexpr (std::is_same_v<T, float>) {
    float4 v = *reinterpret_cast<const float4*>(p);
    f[0] = v.x;
    f[1] = v.y;
    f[2] = v.z;
    f[3] = v.w;
  } else {
    uint2 u = *reinterpret_cast<const uint2*>(p);
    f[0] = to_float(from_bits16<T>(static_cast<unsigned short>(u.x & 0xffffu)));
    f[1] = to_float(from_bits16<T>(static_cast<unsigned short>(u.x >> 16)));
    f[2] = to_float(from_bits16<T>(static_cast<unsigned short>(u.y & 0xffffu)));
    f[3] = to_float(from_bits16<T>(static_cast<unsigned short>(u.y >> 16)));
  }
}

template <typename T>
__device__ __forceinline__ void store4(T* p, const float (&f)[4]) {
  if constexpr (std::is_same_v<T, float>) {
    *reinterpret_cast<float4*>(p) = make_float4(f[0], f[1], f[2], f[3]);
  } else {
    uint2 u;
    u.x = static_cast<uint32_t>(to_bits16(from_float<T>(f[0]))) |
          (static_cast<uint32_t>(to_bits16(from_float<T>(f[1]))) << 16);
    u.y = static_cast<uint32_t>(to_bits16(from_float<T>(f[2]))) |
          (static_cast<uint32_t>(to_bits16(from_float<T>(f[3]))) << 16);
    *reinterpret_cast<uint2*>(p) = u;
  }
}

__device__ __forceinline__ int8_t byte_of(uint32_t w, int i) {
  return static_cast<int8_t>(static_cast<uint8_t>(w >> (8 * i)));
}

// Eight consecutive elements as two load4: the pointer must be 4 * sizeof(T) aligned.
template <typename T>
__device__ __forceinline__ void load8(const T* p, float (&f)[8]) {
  float a[4], b[4];
  load4(p, a);
  load4(p + 4, b);
#pragma unroll
  for (int e = 0; e < 4; ++e) {
    f[e] = a[e];
    f[4 + e] = b[e];
  }
}

}  // namespace gpu
}  // namespace lt8
