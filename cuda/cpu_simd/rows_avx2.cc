// AVX2 + F16C row kernels (see rows_simd.h). Every float operation mirrors common/numerics.h.
#include "cpu_simd/cpu_isa.h"
#ifdef LT8_X86_SIMD
#include <immintrin.h>
#endif

#include <cstdlib>
#include <cstring>

#include "cpu_simd/rows_simd.h"

#ifdef LT8_X86_SIMD
#pragma GCC push_options
// No "fma": the scalar kernels round after every multiply and add, and so must these.
#pragma GCC target("avx2,f16c")

namespace lt8::cpu::simd {
namespace {

// 8 consecutive elements as float32 (exact for every input type).
inline __m256 load8(DType t, const void* p, int64_t i) {
  switch (t) {
    case DType::kF16:
      return _mm256_cvtph_ps(
          _mm_loadu_si128(reinterpret_cast<const __m128i*>(static_cast<const uint16_t*>(p) + i)));
    case DType::kBF16:
      return _mm256_castsi256_ps(_mm256_slli_epi32(
          _mm256_cvtepu16_epi32(_mm_loadu_si128(
              reinterpret_cast<const __m128i*>(static_cast<const uint16_t*>(p) + i))),
          16));
    default:
      return _mm256_loadu_ps(static_cast<const float*>(p) + i);
  }
}

// Up to 8 elements (the K tail), the rest zero.
inline __m256 load_tail(DType t, const void* p, int64_t i, int64_t n) {
  alignas(32) unsigned char buf[32] = {};
  const size_t es = t == DType::kF32 ? 4 : 2;
  std::memcpy(buf, static_cast<const unsigned char*>(p) + i * es, static_cast<size_t>(n) * es);
  return load8(t, buf, 0);
}

// Lanes whose outlier-mask byte is 0, as all-ones 32-bit masks (lanes past a K tail count as
// regular: they hold zeros, which change neither the absmax nor the stored bytes).
// (Full groups load their 8 bytes straight into a vector register; only a K tail goes through
// a zeroed buffer.)
inline __m256 regular_lanes(const uint8_t* mask, int64_t k, int64_t n) {
  __m128i bytes;
  if (n == 8) {
    bytes = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(mask + k));
  } else {
    alignas(8) uint8_t part[8] = {};
    std::memcpy(part, mask + k, static_cast<size_t>(n));
    bytes = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(part));
  }
  const __m256i m = _mm256_cvtepu8_epi32(bytes);
  return _mm256_castsi256_ps(_mm256_cmpeq_epi32(m, _mm256_setzero_si256()));
}

inline __m256 abs_ps(__m256 v) {
  return _mm256_andnot_ps(_mm256_set1_ps(-0.0f), v);
}

// rint(x * 127 / amax) saturated to [-127, 127] (quantize_value for a quantizable amax; NaN
// lanes, only possible in outlier columns, give 0), as int32.
inline __m256i quantize8(__m256 x, __m256 amax) {
  __m256 v = _mm256_div_ps(_mm256_mul_ps(x, _mm256_set1_ps(127.0f)), amax);
  const __m256 ordered = _mm256_cmp_ps(v, v, _CMP_ORD_Q);
  v = _mm256_min_ps(_mm256_max_ps(v, _mm256_set1_ps(-127.0f)), _mm256_set1_ps(127.0f));
  v = _mm256_and_ps(_mm256_round_ps(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC), ordered);
  return _mm256_cvttps_epi32(v);
}

// The 8 int8 values are joined in a register and stored with one 8-byte store: two 4-byte
// stores read back as one 8-byte word (the earlier form) cannot be store-forwarded and stalled
// every group (~30% of a row's quantization time: benchmarks/NOTES.md, "CPU: store forwarding").
inline void store_q8(int8_t* q, __m256i v, int64_t n) {
  const __m256i w = _mm256_packs_epi16(_mm256_packs_epi32(v, v), _mm256_setzero_si256());
  const __m128i packed =
      _mm_unpacklo_epi32(_mm256_castsi256_si128(w), _mm256_extracti128_si256(w, 1));
  if (n == 8) {
    _mm_storel_epi64(reinterpret_cast<__m128i*>(q), packed);
  } else {
    alignas(8) int8_t bytes[8];
    _mm_storel_epi64(reinterpret_cast<__m128i*>(bytes), packed);
    std::memcpy(q, bytes, static_cast<size_t>(n));
  }
}

// float -> bf16 bits as torch/float_to_bf16_bits: NaN keeps its top bits and is made quiet,
// everything else rounds to nearest even. Result in the low 16 bits of each 32-bit lane.
inline __m256i bf16_bits(__m256 v) {
  const __m256i u = _mm256_castps_si256(v);
  const __m256i rounded = _mm256_srli_epi32(
      _mm256_add_epi32(_mm256_add_epi32(u, _mm256_set1_epi32(0x7fff)),
                       _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1))),
      16);
  const __m256i nan_bits = _mm256_or_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(0x40));
  const __m256 is_nan = _mm256_cmp_ps(v, v, _CMP_UNORD_Q);
  return _mm256_blendv_epi8(rounded, nan_bits, _mm256_castps_si256(is_nan));
}

// float -> fp16 bits as float_to_half_bits: F16C rounds to nearest even like it; a NaN becomes
// the canonical quiet NaN with the input's sign (F16C would keep payload bits).
inline __m128i f16_bits(__m256 v) {
  const __m128i h = _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const __m256i u = _mm256_castps_si256(v);
  const __m256i nan_bits =
      _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(0x8000)),
                      _mm256_set1_epi32(0x7e00));
  const __m256i is_nan = _mm256_castps_si256(_mm256_cmp_ps(v, v, _CMP_UNORD_Q));
  const __m128i nan16 =
      _mm_packus_epi32(_mm256_castsi256_si128(nan_bits), _mm256_extracti128_si256(nan_bits, 1));
  const __m128i mask16 =
      _mm_packs_epi32(_mm256_castsi256_si128(is_nan), _mm256_extracti128_si256(is_nan, 1));
  return _mm_blendv_epi8(h, nan16, mask16);
}

inline void store8(DType t, void* out, int64_t i, __m256 v, int64_t n) {
  if (n == 8) {  // a full group: straight to memory
    switch (t) {
      case DType::kF16:
        _mm_storeu_si128(reinterpret_cast<__m128i*>(static_cast<uint16_t*>(out) + i), f16_bits(v));
        return;
      case DType::kBF16: {
        const __m256i b = bf16_bits(v);
        _mm_storeu_si128(
            reinterpret_cast<__m128i*>(static_cast<uint16_t*>(out) + i),
            _mm_packus_epi32(_mm256_castsi256_si128(b), _mm256_extracti128_si256(b, 1)));
        return;
      }
      default:
        _mm256_storeu_ps(static_cast<float*>(out) + i, v);
        return;
    }
  }
  alignas(32) unsigned char buf[32];
  size_t es = 4;
  switch (t) {
    case DType::kF16:
      es = 2;
      _mm_store_si128(reinterpret_cast<__m128i*>(buf), f16_bits(v));
      break;
    case DType::kBF16: {
      es = 2;
      const __m256i b = bf16_bits(v);
      _mm_store_si128(reinterpret_cast<__m128i*>(buf),
                      _mm_packus_epi32(_mm256_castsi256_si128(b), _mm256_extracti128_si256(b, 1)));
      break;
    }
    default:
      _mm256_store_ps(reinterpret_cast<float*>(buf), v);
  }
  std::memcpy(static_cast<unsigned char*>(out) + i * es, buf, static_cast<size_t>(n) * es);
}

}  // namespace

void outlier_mask_avx2(DType t, const void* x, int64_t M, int64_t K, float threshold,
                       uint8_t* mask) {
  const __m256 thr = _mm256_set1_ps(threshold);
  for (int64_t m = 0; m < M; ++m) {
    const int64_t off = m * K;
    for (int64_t k = 0; k < K; k += 8) {
      const int64_t n = K - k < 8 ? K - k : 8;
      const __m256 v = n == 8 ? load8(t, x, off + k) : load_tail(t, x, off + k, n);
      // |x| >= threshold is false for NaN, as in is_outlier.
      int bits = _mm256_movemask_ps(_mm256_cmp_ps(abs_ps(v), thr, _CMP_GE_OQ));
      while (bits != 0) {
        mask[k + __builtin_ctz(bits)] = 1;
        bits &= bits - 1;
      }
    }
  }
}

bool quantize_row_avx2(DType t, const void* row, int64_t K, const uint8_t* mask, int8_t* q,
                       float* row_scale) {
  // absmax over the regular columns. Without NaN the running "a > acc ? a : acc" is the plain
  // maximum whatever the order (|-0| never beats the initial +0 either way).
  __m256 acc = _mm256_setzero_ps();
  __m256 nan = _mm256_setzero_ps();
  for (int64_t k = 0; k < K; k += 8) {
    const int64_t n = K - k < 8 ? K - k : 8;
    const __m256 v = n == 8 ? load8(t, row, k) : load_tail(t, row, k, n);
    const __m256 keep = regular_lanes(mask, k, n);
    const __m256 a = _mm256_and_ps(abs_ps(v), keep);
    nan = _mm256_or_ps(nan, _mm256_cmp_ps(a, a, _CMP_UNORD_Q));
    acc = _mm256_blendv_ps(acc, a, _mm256_cmp_ps(a, acc, _CMP_GT_OQ));
  }
  if (_mm256_movemask_ps(nan) != 0) return false;
  alignas(32) float lanes[8];
  _mm256_store_ps(lanes, acc);
  float amax = 0.0f;
  for (float l : lanes) amax = l > amax ? l : amax;
  *row_scale = amax;
  // quantize_value: rows whose absmax is 0 or inf are all zeros.
  if (!(amax > 0.0f && amax <= 3.4028235e38f)) {
    std::memset(q, 0, static_cast<size_t>(K));
    return true;
  }
  // Huge absmax: x and absmax scaled by 2^-8 (exact there), as quantize_value does.
  const bool scale_down = amax > 0x1p120f;
  const __m256 down = _mm256_set1_ps(0x1p-8f);
  const __m256 amax_v = _mm256_set1_ps(scale_down ? amax * 0x1p-8f : amax);
  for (int64_t k = 0; k < K; k += 8) {
    const int64_t n = K - k < 8 ? K - k : 8;
    __m256 v = n == 8 ? load8(t, row, k) : load_tail(t, row, k, n);
    if (scale_down) v = _mm256_mul_ps(v, down);
    const __m256i qi =
        _mm256_and_si256(quantize8(v, amax_v), _mm256_castps_si256(regular_lanes(mask, k, n)));
    store_q8(q + k, qi, n);
  }
  return true;
}

void epilogue_avx2(const EpilogueArgs& e, int64_t m0, int64_t m1, int64_t n0, int64_t n1) {
  const __m256 inv127sq = _mm256_set1_ps(1.0f / (127.0f * 127.0f));
  for (int64_t m = m0; m < m1; ++m) {
    const __m256 rs = _mm256_set1_ps(e.row_scale[m]);
    const int32_t* c = e.C + m * e.N;
    for (int64_t n = n0; n < n1; n += 8) {
      const int64_t w = n1 - n < 8 ? n1 - n : 8;
      __m256i acc;
      __m256 cs;
      if (w == 8) {
        acc = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(c + n));
        cs = _mm256_loadu_ps(e.col_scale + n);
      } else {
        alignas(32) int32_t ab[8] = {};
        alignas(32) float cb[8] = {};
        std::memcpy(ab, c + n, static_cast<size_t>(w) * 4);
        std::memcpy(cb, e.col_scale + n, static_cast<size_t>(w) * 4);
        acc = _mm256_load_si256(reinterpret_cast<const __m256i*>(ab));
        cs = _mm256_load_ps(cb);
      }
      // dequant(): acc * (row_scale * col_scale * (1/127^2)), left to right.
      __m256 v =
          _mm256_mul_ps(_mm256_cvtepi32_ps(acc), _mm256_mul_ps(_mm256_mul_ps(rs, cs), inv127sq));
      for (int32_t j = 0; j < e.count; ++j) {
        const __m256 xv = _mm256_set1_ps(e.outlier_x[m * e.count + j]);
        const float* wr = e.outlier_w + j * e.w_ld + (n - e.w_n0);
        __m256 wv;
        if (w == 8) {
          wv = _mm256_loadu_ps(wr);
        } else {
          alignas(32) float wb[8] = {};
          std::memcpy(wb, wr, static_cast<size_t>(w) * 4);
          wv = _mm256_load_ps(wb);
        }
        v = _mm256_add_ps(v, _mm256_mul_ps(xv, wv));
      }
      if (e.bias != nullptr && w == 8) {
        v = _mm256_add_ps(v, _mm256_loadu_ps(e.bias + n));
      } else if (e.bias != nullptr) {
        alignas(32) float bb[8] = {};
        std::memcpy(bb, e.bias + n, static_cast<size_t>(w) * 4);
        v = _mm256_add_ps(v, _mm256_load_ps(bb));
      }
      store8(e.out_dtype, e.out, m * e.N + n, v, w);
    }
  }
}

}  // namespace lt8::cpu::simd

#pragma GCC pop_options
#else
// Not x86: active_cpu_isa() is always kScalar, so these are never called.
namespace lt8::cpu::simd {
void outlier_mask_avx2(DType, const void*, int64_t, int64_t, float, uint8_t*) {
  std::abort();
}
bool quantize_row_avx2(DType, const void*, int64_t, const uint8_t*, int8_t*, float*) {
  std::abort();
}
void epilogue_avx2(const EpilogueArgs&, int64_t, int64_t, int64_t, int64_t) {
  std::abort();
}
}  // namespace lt8::cpu::simd
#endif
