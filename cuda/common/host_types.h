// Storage types of the CPU kernels: one load/store per storage type so that the kernels can be
// written once as templates over float / fp16 / bf16 (the CPU twin of device_types.cuh).
#pragma once

#include <cmath>
#include <cstdint>
#include <type_traits>

#include "internal.h"

namespace lt8::cpu {

struct f16 {
  uint16_t bits;
};
struct bf16 {
  uint16_t bits;
};

inline float load(float v) {
  return v;
}
inline float load(f16 v) {
  return half_bits_to_float(v.bits);
}
inline float load(bf16 v) {
  return bf16_bits_to_float(v.bits);
}

template <typename T>
inline T store(float v);
template <>
inline float store<float>(float v) {
  return v;
}
template <>
inline f16 store<f16>(float v) {
  return f16{float_to_half_bits(v)};
}
template <>
inline bf16 store<bf16>(float v) {
  return bf16{float_to_bf16_bits(v)};
}

// Calls fn(T{}) with T the storage type of a float dtype. Caller has validated the dtype.
template <typename Fn>
inline Status dispatch_float(DType t, Fn&& fn) {
  switch (t) {
    case DType::kF32:
      return fn(float{});
    case DType::kF16:
      return fn(f16{});
    case DType::kBF16:
      return fn(bf16{});
    default:
      return Status::Invalid(std::string("unsupported floating dtype ") + dtype_name(t));
  }
}

// Reads element i of a float array of runtime dtype t (slow path for small vectors like bias).
inline float load_any(DType t, const void* p, int64_t i) {
  switch (t) {
    case DType::kF32:
      return static_cast<const float*>(p)[i];
    case DType::kF16:
      return half_bits_to_float(static_cast<const uint16_t*>(p)[i]);
    case DType::kBF16:
      return bf16_bits_to_float(static_cast<const uint16_t*>(p)[i]);
    default:
      return NAN;
  }
}

}  // namespace lt8::cpu
