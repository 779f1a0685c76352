// CPU versions of the int8 kernels. Same contracts as the CUDA ones (see lt8.h); written for
// clarity and auto-vectorisation, threaded over rows when the work is large enough.
#include <algorithm>
#include <cstring>
#include <thread>
#include <vector>

#include "dtype_cpu.h"
#include "numerics.h"

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

namespace cpu {
namespace {

// Runs body(begin, end) over [0, n) on up to hardware_concurrency threads when `work` is big.
template <typename Body>
void parallel_rows(int64_t n, double work, Body&& body) {
  unsigned hw = std::max(1u, std::thread::hardware_concurrency());
  int64_t threads = std::min<int64_t>({static_cast<int64_t>(hw), n, 16});
  if (threads <= 1 || work < 4e6) {
    body(int64_t{0}, n);
    return;
  }
  std::vector<std::thread> pool;
  int64_t chunk = (n + threads - 1) / threads;
  for (int64_t t = 0; t < threads; ++t) {
    int64_t b = t * chunk, e = std::min(n, b + chunk);
    if (b < e) pool.emplace_back([&body, b, e] { body(b, e); });
  }
  for (auto& th : pool) th.join();
}

int32_t dot_i8(const int8_t* a, const int8_t* b, int64_t K) {
  int32_t acc = 0;
  for (int64_t k = 0; k < K; ++k) acc += static_cast<int32_t>(a[k]) * static_cast<int32_t>(b[k]);
  return acc;
}

template <typename T>
void quantize_impl(const T* x, int64_t M, int64_t K, float threshold, int8_t* q, float* row_scale,
                   uint8_t* mask) {
  std::fill(mask, mask + K, uint8_t{0});
  if (threshold > 0.0f) {
    for (int64_t m = 0; m < M; ++m)
      for (int64_t k = 0; k < K; ++k)
        if (is_outlier(load(x[m * K + k]), threshold)) mask[k] = 1;
  }
  for (int64_t m = 0; m < M; ++m) {
    const T* row = x + m * K;
    float amax = 0.0f;
    for (int64_t k = 0; k < K; ++k)
      if (!mask[k]) amax = absmax_step(amax, load(row[k]));
    row_scale[m] = amax;
    for (int64_t k = 0; k < K; ++k) q[m * K + k] = mask[k] ? 0 : quantize_value(load(row[k]), amax);
  }
}

template <typename T>
void linear_impl(const T* x, const int8_t* CB, const float* SCB, DType bias_dtype, const void* bias,
                 int64_t M, int64_t N, int64_t K, float threshold, T* out, const LinearScratch& s) {
  quantize_impl(x, M, K, threshold, s.q, s.row_scale, s.mask);
  int32_t count = 0;
  for (int64_t k = 0; k < K; ++k)
    if (s.mask[k]) s.outlier_idx[count++] = static_cast<int32_t>(k);
  *s.outlier_count = count;

  parallel_rows(M, double(M) * N * K, [&](int64_t m0, int64_t m1) {
    for (int64_t m = m0; m < m1; ++m) {
      const int8_t* qa = s.q + m * K;
      const T* xrow = x + m * K;
      for (int64_t n = 0; n < N; ++n) {
        const int8_t* wrow = CB + n * K;
        float v = dequant(dot_i8(qa, wrow, K), s.row_scale[m], SCB[n]);
        for (int32_t j = 0; j < count; ++j) {
          int32_t k = s.outlier_idx[j];
          v += load(xrow[k]) * weight_value(wrow[k], SCB[n]);
        }
        if (bias != nullptr) v += load_any(bias_dtype, bias, n);
        out[m * N + n] = store<T>(v);
      }
    }
  });
}

template <typename T>
void weight_linear_impl(const T* x, const int8_t* CB, const float* SCB, DType bias_dtype,
                        const void* bias, int64_t M, int64_t N, int64_t K, T* out) {
  parallel_rows(M, double(M) * N * K, [&](int64_t m0, int64_t m1) {
    std::vector<float> xf(static_cast<size_t>(K));
    for (int64_t m = m0; m < m1; ++m) {
      for (int64_t k = 0; k < K; ++k) xf[k] = load(x[m * K + k]);
      for (int64_t n = 0; n < N; ++n) {
        const int8_t* wrow = CB + n * K;
        // Dequantized weight inside the sum: partial sums stay at the result's scale (scaling
        // afterwards would overflow for huge activations and tiny weights).
        const float scale = SCB[n];
        float acc = 0.0f;
        for (int64_t k = 0; k < K; ++k) acc += xf[k] * weight_value(wrow[k], scale);
        float v = acc;
        if (bias != nullptr) v += load_any(bias_dtype, bias, n);
        out[m * N + n] = store<T>(v);
      }
    }
  });
}

template <typename T>
void grad_input_impl(const T* g, const int8_t* CB, const float* SCB, int64_t M, int64_t N,
                     int64_t K, T* grad_x) {
  parallel_rows(M, double(M) * N * K, [&](int64_t m0, int64_t m1) {
    std::vector<float> acc(static_cast<size_t>(K));
    for (int64_t m = m0; m < m1; ++m) {
      std::fill(acc.begin(), acc.end(), 0.0f);
      for (int64_t n = 0; n < N; ++n) {
        float gs = load(g[m * N + n]) * (SCB[n] * kInv127);
        const int8_t* wrow = CB + n * K;
        for (int64_t k = 0; k < K; ++k) acc[k] += gs * static_cast<float>(wrow[k]);
      }
      for (int64_t k = 0; k < K; ++k) grad_x[m * K + k] = store<T>(acc[k]);
    }
  });
}

}  // namespace

Status quantize_rows(DType x_dtype, const void* x, int64_t M, int64_t K, float threshold, int8_t* q,
                     float* row_scale, uint8_t* outlier_mask) {
  return dispatch_float(x_dtype, [&](auto tag) {
    using T = decltype(tag);
    quantize_impl(static_cast<const T*>(x), M, K, threshold, q, row_scale, outlier_mask);
    return Status::Ok();
  });
}

Status dequantize_rows(const int8_t* q, const float* row_scale, int64_t M, int64_t K,
                       DType out_dtype, void* out) {
  return dispatch_float(out_dtype, [&](auto tag) {
    using T = decltype(tag);
    T* o = static_cast<T*>(out);
    for (int64_t m = 0; m < M; ++m) {
      float s = row_scale[m] * kInv127;
      for (int64_t k = 0; k < K; ++k) o[m * K + k] = store<T>(static_cast<float>(q[m * K + k]) * s);
    }
    return Status::Ok();
  });
}

Status int8_gemm(const int8_t* A, const int8_t* B, int64_t M, int64_t N, int64_t K, int32_t* C) {
  parallel_rows(M, double(M) * N * K, [&](int64_t m0, int64_t m1) {
    for (int64_t m = m0; m < m1; ++m)
      for (int64_t n = 0; n < N; ++n) C[m * N + n] = dot_i8(A + m * K, B + n * K, K);
  });
  return Status::Ok();
}

Status dequant_epilogue(const int32_t* C, const float* row_scale, const float* col_scale,
                        DType bias_dtype, const void* bias, int64_t M, int64_t N, DType out_dtype,
                        void* out) {
  return dispatch_float(out_dtype, [&](auto tag) {
    using T = decltype(tag);
    T* o = static_cast<T*>(out);
    for (int64_t m = 0; m < M; ++m)
      for (int64_t n = 0; n < N; ++n) {
        float v = dequant(C[m * N + n], row_scale[m], col_scale[n]);
        if (bias != nullptr) v += load_any(bias_dtype, bias, n);
        o[m * N + n] = store<T>(v);
      }
    return Status::Ok();
  });
}

Status int8_linear(DType x_dtype, const void* x, const int8_t* CB, const float* SCB,
                   DType bias_dtype, const void* bias, int64_t M, int64_t N, int64_t K,
                   float threshold, void* out, const LinearScratch& s) {
  return dispatch_float(x_dtype, [&](auto tag) {
    using T = decltype(tag);
    linear_impl(static_cast<const T*>(x), CB, SCB, bias_dtype, bias, M, N, K, threshold,
                static_cast<T*>(out), s);
    return Status::Ok();
  });
}

Status int8_weight_linear(DType x_dtype, const void* x, const int8_t* CB, const float* SCB,
                          DType bias_dtype, const void* bias, int64_t M, int64_t N, int64_t K,
                          void* out) {
  return dispatch_float(x_dtype, [&](auto tag) {
    using T = decltype(tag);
    weight_linear_impl(static_cast<const T*>(x), CB, SCB, bias_dtype, bias, M, N, K,
                       static_cast<T*>(out));
    return Status::Ok();
  });
}

Status int8_linear_grad_input(DType g_dtype, const void* grad_out, const int8_t* CB,
                              const float* SCB, int64_t M, int64_t N, int64_t K, void* grad_x) {
  return dispatch_float(g_dtype, [&](auto tag) {
    using T = decltype(tag);
    grad_input_impl(static_cast<const T*>(grad_out), CB, SCB, M, N, K, static_cast<T*>(grad_x));
    return Status::Ok();
  });
}

}  // namespace cpu
}  // namespace lt8
