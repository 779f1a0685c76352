// The arithmetic of LLM.int8(), written once for host and device so that the CPU and CUDA
// kernels round identically (up to the compiler's FMA contraction on the device).
#pragma once

#include <cstdint>

#ifdef __CUDACC__
#define LT8_HD __host__ __device__ __forceinline__
#else
#define LT8_HD inline
#endif

namespace lt8 {

constexpr float kInv127 = 1.0f / 127.0f;
constexpr float kInv127Sq = 1.0f / (127.0f * 127.0f);

// Running absmax that lets NaN win, so a NaN anywhere in a row makes that row's scale NaN and
// the NaN reaches exactly that output row instead of vanishing in the int8 rounding.
LT8_HD float absmax_step(float acc, float v) {
  float a = v < 0.0f ? -v : v;
  return (a > acc || a != a) ? a : acc;
}

// True when a row with this absmax quantizes normally; all-zero rows (and rows whose absmax is
// inf or NaN) quantize to exact zeros instead of dividing by zero.
LT8_HD bool quantizable(float absmax) {
  return absmax > 0.0f && absmax <= 3.4028235e38f;
}

// q = rint(x * 127 / absmax), round half to even, saturated to [-127, 127]. x * 127 is exact for
// fp16/bf16 inputs and the division rounds once, so q equals the exactly rounded quotient except
// within one float32 ulp of a tie (a per-element factor 127/absmax would round twice and flip
// exact ties, which coarse fp16/bf16 inputs hit often).
LT8_HD int8_t quantize_value(float x, float absmax) {
  if (!quantizable(absmax)) return 0;
  // x * 127 overflows float32 for |x| > FLT_MAX / 127 (float32/bfloat16 inputs): scaling x and
  // absmax by 2^-8 is exact there and leaves the quotient, so the result is unchanged.
  if (absmax > 0x1p120f) {
    x *= 0x1p-8f;
    absmax *= 0x1p-8f;
  }
  float v = (x * 127.0f) / absmax;
  if (!(v == v)) return 0;
  v = v > 127.0f ? 127.0f : (v < -127.0f ? -127.0f : v);
#ifdef __CUDA_ARCH__
  return static_cast<int8_t>(__float2int_rn(v));
#else
  return static_cast<int8_t>(__builtin_rintf(v));
#endif
}

LT8_HD bool is_outlier(float x, float threshold) {
  float a = x < 0.0f ? -x : x;
  return threshold > 0.0f && a >= threshold;
}

// int32 accumulator -> float with both scales; the one place the 1/127^2 appears.
LT8_HD float dequant(int32_t acc, float row_scale, float col_scale) {
  return static_cast<float>(acc) * (row_scale * col_scale * kInv127Sq);
}

// One element of the dequantized weight W[n, k] = CB[n, k] * SCB[n] / 127.
LT8_HD float weight_value(int8_t cb, float scb) {
  return static_cast<float>(cb) * (scb * kInv127);
}

}  // namespace lt8
