// Host-side float <-> fp16 / bf16 conversions (declared in internal.h), rounding to nearest
// even like torch, numpy and the CUDA intrinsics, so that the CPU kernels store the same bits.
#include <cstring>

#include "internal.h"

namespace lt8 {

float half_bits_to_float(uint16_t h) {
  uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  uint32_t exp = (h >> 10) & 0x1fu;
  uint32_t mant = h & 0x3ffu;
  uint32_t bits;
  if (exp == 0x1f) {
    bits = sign | 0x7f800000u | (mant << 13);
  } else if (exp == 0) {
    float f = static_cast<float>(mant) * (1.0f / 16777216.0f);  // subnormal: mant * 2^-24
    std::memcpy(&bits, &f, 4);
    bits |= sign;
  } else {
    bits = sign | ((exp + 112u) << 23) | (mant << 13);
  }
  float out;
  std::memcpy(&out, &bits, 4);
  return out;
}

uint16_t float_to_half_bits(float value) {
  uint32_t u;
  std::memcpy(&u, &value, 4);
  const uint32_t sign = u & 0x80000000u;
  u ^= sign;
  uint16_t out;
  if (u >= 0x47800000u) {  // >= 65536 (already rounds to inf), inf or NaN
    out = u > 0x7f800000u ? 0x7e00 : 0x7c00;
  } else if (u < 0x38800000u) {  // below the smallest normal half: let the FPU round for us
    const uint32_t magic_bits = 0x3f000000u;  // 0.5: aligns the half subnormal ulp to float's
    float f, magic;
    std::memcpy(&f, &u, 4);
    std::memcpy(&magic, &magic_bits, 4);
    f += magic;
    uint32_t r;
    std::memcpy(&r, &f, 4);
    out = static_cast<uint16_t>(r - magic_bits);
  } else {
    uint32_t odd = (u >> 13) & 1u;
    u += 0xc8000fffu + odd;  // rebias exponent (-112 << 23) and round half to even
    out = static_cast<uint16_t>(u >> 13);
  }
  return static_cast<uint16_t>(out | (sign >> 16));
}

uint16_t float_to_bf16_bits(float value) {
  uint32_t u;
  std::memcpy(&u, &value, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x40u);
  u += 0x7fffu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(u >> 16);
}

}  // namespace lt8
