// AVX2 variants of the int8 GEMM (see int8_gemm.h), register tiles of rows of A x rows of B:
//   * block_avx2_sign, when no A element is -128 (always so for lt8's quantized activations,
//     which saturate to +-127): int8 operands, vpmaddubsw on |B| (unsigned) and A with B's sign
//     (vpsignb), then vpmaddwd by ones to int32. Exact: each product |b| * (+-a) equals a * b,
//     and a pair sum is at most 2 * 128 * 127 = 32512 < 2^15, so vpmaddubsw never saturates
//     (|a| <= 127 is what makes that true, and what keeps vpsignb's negation of a from wrapping).
//     Twice the int8 products per instruction of the int16 variant: on the benchmark VM's Zen 4
//     (no VNNI exposed) about 1.9x the int16 variant's rate; ~50 GMAC/s per core against a
//     float32 FMA peak of 42.5 and this instruction mix's own peak of 60 (benchmarks/NOTES.md,
//     "CPU: the vpsignb/vpmaddubsw GEMM" and "CPU: the demo's bound").
//     3x2 tiles (see kMRSign) for tasks of few rows; from 32 rows on, the same products as
//     outer products on B packed in 8-column panels (run_panels), which needs no horizontal
//     sums.
//   * block_avx2: int16 operands, vpmaddwd, 3x4 tiles; exact for every int8 value, the fallback
//     when A holds a -128.
#include "cpu_simd/cpu_isa.h"
#ifdef LT8_X86_SIMD
#include <immintrin.h>
#endif

#include <algorithm>
#include <cstdlib>
#include <cstring>

#include "cpu_simd/int8_gemm.h"
#include "cpu_simd/scratch.h"

#ifdef LT8_X86_SIMD
#pragma GCC push_options
#pragma GCC target("avx2")

namespace lt8::cpu::gemm_detail {
namespace {

constexpr int kMR = 3, kNR = 4;
constexpr int64_t kKC = 2048;  // K block: a 3-row int16 A tile (12 KiB) stays in L1

inline __m256i load_b(const int8_t* p) {
  return _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
}

// Horizontal sums of four vectors -> one lane each.
inline __m128i hsum4(__m256i a, __m256i b, __m256i c, __m256i d) {
  __m256i abcd = _mm256_hadd_epi32(_mm256_hadd_epi32(a, b), _mm256_hadd_epi32(c, d));
  return _mm_add_epi32(_mm256_castsi256_si128(abcd), _mm256_extracti128_si256(abcd, 1));
}

// C[0:R, 0:S] (+)= A[0:R, 0:klen] . B[0:S, 0:klen]; A is zero-padded past K, B is not (its K tail
// is copied into a zeroed vector so no byte past a row is read).
template <int R, int S>
void tile(const int16_t* a, int64_t lda, const int8_t* b, int64_t ldb, int64_t klen, int32_t* c,
          int64_t ldc, bool accumulate) {
  __m256i acc[R][kNR];
  for (int r = 0; r < R; ++r)
    for (int s = 0; s < kNR; ++s) acc[r][s] = _mm256_setzero_si256();
  int64_t k = 0;
  for (; k + 16 <= klen; k += 16) {
    __m256i av[R];
    for (int r = 0; r < R; ++r)
      av[r] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a + r * lda + k));
    for (int s = 0; s < S; ++s) {
      const __m256i bv = load_b(b + s * ldb + k);
      for (int r = 0; r < R; ++r)
        acc[r][s] = _mm256_add_epi32(acc[r][s], _mm256_madd_epi16(av[r], bv));
    }
  }
  if (k < klen) {
    for (int s = 0; s < S; ++s) {
      alignas(16) int8_t tail[16] = {};
      std::memcpy(tail, b + s * ldb + k, static_cast<size_t>(klen - k));
      const __m256i bv = load_b(tail);
      for (int r = 0; r < R; ++r) {
        const __m256i av = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a + r * lda + k));
        acc[r][s] = _mm256_add_epi32(acc[r][s], _mm256_madd_epi16(av, bv));
      }
    }
  }
  for (int r = 0; r < R; ++r) {
    alignas(16) uint32_t sums[4];
    _mm_store_si128(reinterpret_cast<__m128i*>(sums),
                    hsum4(acc[r][0], acc[r][1], acc[r][2], acc[r][3]));
    uint32_t* out = reinterpret_cast<uint32_t*>(c + r * ldc);
    for (int s = 0; s < S; ++s) out[s] = accumulate ? out[s] + sums[s] : sums[s];
  }
}

using TileFn = void (*)(const int16_t*, int64_t, const int8_t*, int64_t, int64_t, int32_t*, int64_t,
                        bool);
template <int R>
constexpr TileFn kRow[kNR] = {tile<R, 1>, tile<R, 2>, tile<R, 3>, tile<R, 4>};
constexpr const TileFn* kTiles[kMR] = {kRow<1>, kRow<2>, kRow<3>};

// --- int8 operands, vpsignb + vpmaddubsw ---------------------------------------------------

// C[0:R, 0:S] (+)= A[0:R, 0:klen] . B[0:S, 0:klen]; A int8 with no -128, zero-padded past K to a
// multiple of 32; B's K tail is copied into a zeroed vector.
// Register tile kMRSign x kNRSign: 6 accumulators, 3 rows of A, 2 of B, one |B| and the products
// fit the 16 ymm registers with no traffic through the stack (a 2 x 4 tile left GCC two
// accumulators half on the stack in the K loop: benchmarks/NOTES.md, "CPU: the demo's bound").
constexpr int kMRSign = 3, kNRSign = 2;

// Horizontal sums of two vectors -> lanes 0 and 1.
inline __m128i hsum2(__m256i a, __m256i b) {
  const __m256i ab = _mm256_hadd_epi32(a, b);   // per 128-bit half: a01 a23 b01 b23
  const __m256i h = _mm256_hadd_epi32(ab, ab);  // a0123 b0123 a0123 b0123
  return _mm_add_epi32(_mm256_castsi256_si128(h), _mm256_extracti128_si256(h, 1));
}

template <int R, int S>
void tile_sign(const int8_t* a, int64_t lda, const int8_t* b, int64_t ldb, int64_t klen, int32_t* c,
               int64_t ldc, bool accumulate) {
  const __m256i ones = _mm256_set1_epi16(1);
  __m256i acc[R][kNRSign];
  for (int r = 0; r < R; ++r)
    for (int s = 0; s < kNRSign; ++s) acc[r][s] = _mm256_setzero_si256();
  // acc[r][s] += A row r . B row s over the 32 bytes at k (bv[s]: B row s's bytes there).
  auto step = [&](const __m256i(&bv)[S], int64_t k) {
    __m256i av[R];
    for (int r = 0; r < R; ++r)
      av[r] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a + r * lda + k));
    for (int s = 0; s < S; ++s) {
      const __m256i ub = _mm256_abs_epi8(bv[s]);  // |b| as unsigned: 128 for -128, exactly
      for (int r = 0; r < R; ++r) {
        const __m256i pairs = _mm256_maddubs_epi16(ub, _mm256_sign_epi8(av[r], bv[s]));
        acc[r][s] = _mm256_add_epi32(acc[r][s], _mm256_madd_epi16(pairs, ones));
      }
    }
  };
  int64_t k = 0;
  for (; k + 32 <= klen; k += 32) {
    __m256i bv[S];
    for (int s = 0; s < S; ++s)
      bv[s] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b + s * ldb + k));
    step(bv, k);
  }
  if (k < klen) {  // A is zero past K, so the tail's padding bytes of B contribute nothing
    __m256i bv[S];
    for (int s = 0; s < S; ++s) {
      alignas(32) int8_t tail[32] = {};
      std::memcpy(tail, b + s * ldb + k, static_cast<size_t>(klen - k));
      bv[s] = _mm256_load_si256(reinterpret_cast<const __m256i*>(tail));
    }
    step(bv, k);
  }
  for (int r = 0; r < R; ++r) {
    alignas(16) uint32_t sums[4];
    _mm_store_si128(reinterpret_cast<__m128i*>(sums), hsum2(acc[r][0], acc[r][1]));
    uint32_t* out = reinterpret_cast<uint32_t*>(c + r * ldc);
    for (int s = 0; s < S; ++s) out[s] = accumulate ? out[s] + sums[s] : sums[s];
  }
}

using TileSignFn = void (*)(const int8_t*, int64_t, const int8_t*, int64_t, int64_t, int32_t*,
                            int64_t, bool);
template <int R>
constexpr TileSignFn kSignRow[kNRSign] = {tile_sign<R, 1>, tile_sign<R, 2>};
constexpr const TileSignFn* kSignTiles[kMRSign] = {kSignRow<1>, kSignRow<2>, kSignRow<3>};
constexpr int64_t kKCSign = 4096;  // K block: a 3-row int8 A tile (12 KiB) stays in L1

// C[m0:m1, n0:n1] in K blocks of KC and register tiles of up to MR x NR: tiles[rows - 1][cols
// - 1] takes the A rows of type TA (the variant's prepared copy) and B's rows in place.
template <int MR, int NR, int64_t KC, typename TA, typename Tile>
void run_tiles(const Problem& p, const Tile* const (&tiles)[MR], int64_t m0, int64_t m1, int64_t n0,
               int64_t n1) {
  const TA* A = static_cast<const TA*>(p.a);
  for (int64_t kb = 0; kb < p.K; kb += KC) {
    const int64_t klen = std::min(KC, p.K - kb);
    for (int64_t m = m0; m < m1; m += MR) {
      const int rows = static_cast<int>(std::min<int64_t>(MR, m1 - m));
      for (int64_t n = n0; n < n1; n += NR) {
        const int cols = static_cast<int>(std::min<int64_t>(NR, n1 - n));
        tiles[rows - 1][cols - 1](A + m * p.lda + kb, p.lda, p.B + n * p.K + kb, p.K, klen,
                                  p.C + m * p.N + n, p.N, kb > 0);
      }
    }
  }
}

// --- int8 operands, B in 8-column panels: outer products, vpsignb + vpmaddubsw -------------
// The same products and pair sums as tile_sign, arranged so that an accumulator holds 8 columns
// of C in its int32 lanes: per group of 4 k, A's 4 bytes of a row are broadcast and multiplied
// with a panel vector holding those 4 k of 8 columns of B. No horizontal sums, so short K (the
// 384-wide layers of small models) loses nothing per tile; the price is packing each task's
// columns of B (and |B|) once per K block.
constexpr int kPanel = 8;    // columns of B per panel (int32 lanes of a ymm)
constexpr int kMRPanel = 3;  // rows of A per register tile (4 x 2 spilled accumulators in GCC 12)
constexpr int kNRPanel = 2;  // panels per register tile (16 columns)
constexpr int64_t kKCPanel = 2048;     // K block: a task's 32 columns of B and |B| take 128 KiB
constexpr int64_t kPanelMinRows = 32;  // fewer rows in a task: the dot-product tiles

// Panels of B rows [n0, n1) over k [kb, kb + klen): panel j,
// quad q holds B[n0 + 8 j + c][kb + 4 q + i] at byte 32 q + 4 c + i (undefined past n1 and past K),
// panel j starting at j * quads * 32; `babs` gets |B| in the same layout.
void pack_panels(const Problem& p, int64_t n0, int64_t n1, int64_t kb, int64_t klen, int64_t quads,
                 int8_t* bp, int8_t* babs) {
  const int64_t panels = (n1 - n0 + kPanel - 1) / kPanel;
  const int64_t full = klen / 4;
  for (int64_t j = 0; j < panels; ++j) {
    const int64_t nj = n0 + j * kPanel, cols = std::min<int64_t>(kPanel, n1 - nj);
    int8_t* panel = bp + j * quads * 32;
    // Bytes no B lands on (a partial panel's missing columns, the K tail) stay as they are:
    // the K tail meets A's zero padding, and missing columns' lanes are never stored.
    int64_t q0 = 0;  // quads done by the vector transposes
    if (cols == kPanel) {
      // 8 columns x 32 bytes of k at a time: an 8 x 8 transpose of 4-byte groups.
      const int8_t* src = p.B + nj * p.K + kb;
      for (; q0 + 8 <= full; q0 += 8) {
        __m256i r[8];
        for (int c = 0; c < 8; ++c)
          r[c] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(src + c * p.K + 4 * q0));
        __m256i t[8], u[8];
        for (int c = 0; c < 8; c += 2) {
          t[c] = _mm256_unpacklo_epi32(r[c], r[c + 1]);
          t[c + 1] = _mm256_unpackhi_epi32(r[c], r[c + 1]);
        }
        for (int h = 0; h < 8; h += 4) {
          u[h] = _mm256_unpacklo_epi64(t[h], t[h + 2]);
          u[h + 1] = _mm256_unpackhi_epi64(t[h], t[h + 2]);
          u[h + 2] = _mm256_unpacklo_epi64(t[h + 1], t[h + 3]);
          u[h + 3] = _mm256_unpackhi_epi64(t[h + 1], t[h + 3]);
        }
        // u[i] (rows 0-3) and u[4 + i] (rows 4-7) hold quads i and 4 + i in their halves.
        for (int i = 0; i < 4; ++i) {
          _mm256_store_si256(reinterpret_cast<__m256i*>(panel + 32 * (q0 + i)),
                             _mm256_permute2x128_si256(u[i], u[4 + i], 0x20));
          _mm256_store_si256(reinterpret_cast<__m256i*>(panel + 32 * (q0 + 4 + i)),
                             _mm256_permute2x128_si256(u[i], u[4 + i], 0x31));
        }
      }
    }
    for (int64_t c = 0; c < cols; ++c) {
      const int8_t* src = p.B + (nj + c) * p.K + kb;
      int8_t* dst = panel + 4 * c;
      for (int64_t q = q0; q < full; ++q) std::memcpy(dst + 32 * q, src + 4 * q, 4);
      if (full < quads)
        std::memcpy(dst + 32 * full, src + 4 * full, static_cast<size_t>(klen - 4 * full));
    }
  }
  for (int64_t i = 0; i < panels * quads * 32; i += 32) {
    const __m256i v = _mm256_load_si256(reinterpret_cast<const __m256i*>(bp + i));
    _mm256_store_si256(reinterpret_cast<__m256i*>(babs + i), _mm256_abs_epi8(v));
  }
}

// C[0:R, 0:cols] (+)= A[0:R, 0:4 quads] . panels; cols <= 8 S. A has no -128 and is zero past K.
template <int R, int S>
void tile_panels(const int8_t* a, int64_t lda, const int8_t* bp, const int8_t* babs, int64_t quads,
                 int32_t* c, int64_t ldc, int cols, bool accumulate) {
  const __m256i ones = _mm256_set1_epi16(1);
  __m256i acc[R][S];
  for (int r = 0; r < R; ++r)
    for (int s = 0; s < S; ++s) acc[r][s] = _mm256_setzero_si256();
  const int64_t stride = quads * 32;  // bytes from one panel to the next
  for (int64_t q = 0; q < quads; ++q) {
    __m256i ub[S];
    for (int s = 0; s < S; ++s)
      ub[s] = _mm256_load_si256(reinterpret_cast<const __m256i*>(babs + s * stride + 32 * q));
    for (int r = 0; r < R; ++r) {
      int32_t quad;
      std::memcpy(&quad, a + r * lda + 4 * q, 4);
      const __m256i av = _mm256_set1_epi32(quad);
      for (int s = 0; s < S; ++s) {
        const __m256i bv =
            _mm256_load_si256(reinterpret_cast<const __m256i*>(bp + s * stride + 32 * q));
        const __m256i pairs = _mm256_maddubs_epi16(ub[s], _mm256_sign_epi8(av, bv));
        acc[r][s] = _mm256_add_epi32(acc[r][s], _mm256_madd_epi16(pairs, ones));
      }
    }
  }
  for (int r = 0; r < R; ++r) {
    for (int s = 0; s < S; ++s) {
      int32_t* out = c + r * ldc + s * kPanel;
      const int n = std::min(kPanel, cols - s * kPanel);
      if (n <= 0) break;
      __m256i v = acc[r][s];
      if (n == kPanel) {
        if (accumulate)
          v = _mm256_add_epi32(v, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(out)));
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(out), v);
      } else {
        alignas(32) uint32_t lanes[kPanel];
        _mm256_store_si256(reinterpret_cast<__m256i*>(lanes), v);
        uint32_t* o = reinterpret_cast<uint32_t*>(out);
        for (int i = 0; i < n; ++i) o[i] = accumulate ? o[i] + lanes[i] : lanes[i];
      }
    }
  }
}

using TilePanelFn = void (*)(const int8_t*, int64_t, const int8_t*, const int8_t*, int64_t,
                             int32_t*, int64_t, int, bool);
template <int R>
constexpr TilePanelFn kPanelRow[kNRPanel] = {tile_panels<R, 1>, tile_panels<R, 2>};
constexpr const TilePanelFn* kPanelTiles[kMRPanel] = {kPanelRow<1>, kPanelRow<2>, kPanelRow<3>};

void run_panels(const Problem& p, int64_t m0, int64_t m1, int64_t n0, int64_t n1) {
  const int8_t* A = static_cast<const int8_t*>(p.a);
  const int64_t kc = std::min(kKCPanel, p.K);
  const int64_t max_quads = (kc + 3) / 4, panels = (n1 - n0 + kPanel - 1) / kPanel;
  const size_t bytes = static_cast<size_t>(panels * max_quads * 32);
  Scratch buf(Scratch::kGemmBPanels, 2 * bytes);
  int8_t* bp = static_cast<int8_t*>(buf.get());
  if (bp == nullptr) {  // no memory for the panels: the dot-product tiles need none
    run_tiles<kMRSign, kNRSign, kKCSign, int8_t>(p, kSignTiles, m0, m1, n0, n1);
    return;
  }
  int8_t* babs = bp + bytes;
  for (int64_t kb = 0; kb < p.K; kb += kc) {
    const int64_t klen = std::min(kc, p.K - kb), quads = (klen + 3) / 4;
    pack_panels(p, n0, n1, kb, klen, quads, bp, babs);
    for (int64_t m = m0; m < m1; m += kMRPanel) {
      const int rows = static_cast<int>(std::min<int64_t>(kMRPanel, m1 - m));
      for (int64_t n = n0; n < n1; n += kNRPanel * kPanel) {
        const int cols = static_cast<int>(std::min<int64_t>(kNRPanel * kPanel, n1 - n));
        const int64_t j = (n - n0) / kPanel;
        kPanelTiles[rows - 1][(cols + kPanel - 1) / kPanel - 1](
            A + m * p.lda + kb, p.lda, bp + j * quads * 32, babs + j * quads * 32, quads,
            p.C + m * p.N + n, p.N, cols, kb > 0);
      }
    }
  }
}

}  // namespace

void block_avx2_sign(const Problem& p, int64_t m0, int64_t m1, int64_t n0, int64_t n1) {
  // Packing a task's columns of B pays for itself from ~32 rows on (benchmarks/NOTES.md, "CPU:
  // B in panels"); LT8_AVX2_PANELS=0 keeps the dot-product tiles everywhere (tests, A/B runs).
  if (p.avx2_panels && m1 - m0 >= kPanelMinRows) {
    run_panels(p, m0, m1, n0, n1);
    return;
  }
  run_tiles<kMRSign, kNRSign, kKCSign, int8_t>(p, kSignTiles, m0, m1, n0, n1);
}

void block_avx2(const Problem& p, int64_t m0, int64_t m1, int64_t n0, int64_t n1) {
  run_tiles<kMR, kNR, kKC, int16_t>(p, kTiles, m0, m1, n0, n1);
}

}  // namespace lt8::cpu::gemm_detail

#pragma GCC pop_options
#else
// Not x86: active_cpu_isa() is always kScalar, so this is never called.
void lt8::cpu::gemm_detail::block_avx2(const Problem&, int64_t, int64_t, int64_t, int64_t) {
  std::abort();
}
void lt8::cpu::gemm_detail::block_avx2_sign(const Problem&, int64_t, int64_t, int64_t, int64_t) {
  std::abort();
}
#endif
