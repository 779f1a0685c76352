// CUDA versions of the int8 kernels (everything in lt8::gpu except transform_layout, which lives
// in layout.cu). Same contracts and arithmetic as kernels_cpu.cc; see lt8.h.
//
// Rules followed throughout: every launch goes on ex.stream, no host synchronisation, no
// allocation (graph-capture safe), sizes may be 0, tails of any length are handled, products
// that can exceed 2^31 are computed in int64, and M never lands in gridDim.y/z unguarded.
//
// Float rounding: the float epilogues and the input-gradient GEMM use explicit __fmul_rn /
// __fadd_rn (no FMA contraction), in the same order as the CPU reference, so that the results
// match an x86 build of kernels_cpu.cc bit for bit (see kExactCpuRounding).
#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <type_traits>

#include "cublaslt_gemm.h"
#include "cuda_common.cuh"
#include "internal.h"
#include "numerics.h"

namespace lt8 {
namespace gpu {
namespace {

// true: a += b * c as separate IEEE mul and add (matches the CPU reference exactly).
// false: fused multiply-add (faster input-gradient GEMM, differs by rounding only).
constexpr bool kExactCpuRounding = true;

__device__ __forceinline__ float mul_add(float acc, float a, float b) {
  if constexpr (kExactCpuRounding) {
    return __fadd_rn(acc, __fmul_rn(a, b));
  } else {
    return fmaf(a, b, acc);
  }
}

constexpr int kThreads = 256;
constexpr int64_t kMaxGridX = (int64_t{1} << 31) - 1;
constexpr int64_t kMaxGridYZ = 65535;
// Cap for the grid of grid-stride elementwise kernels.
constexpr int64_t kMaxElementwiseBlocks = int64_t{1} << 20;

inline int64_t ceil_div(int64_t a, int64_t b) {
  return (a + b - 1) / b;
}
inline bool is_aligned(const void* p, size_t a) {
  return reinterpret_cast<uintptr_t>(p) % a == 0;
}
inline unsigned elementwise_blocks(int64_t items) {
  return static_cast<unsigned>(std::min(ceil_div(items, kThreads), kMaxElementwiseBlocks));
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

// =============================================================================================
// 1. quantize_rows
// =============================================================================================

constexpr int kMaskRowsPerChunk = 32;

// mask[k] = 1 when any |x[m, k]| >= threshold. mask was zeroed before. Thread = column,
// blockIdx.y (grid-stride) = chunk of kMaskRowsPerChunk rows. Same-value races are benign.
template <typename T>
__global__ void __launch_bounds__(kThreads)
    outlier_mask_kernel(const T* __restrict__ x, int64_t M, int64_t K, float threshold,
                        uint8_t* __restrict__ mask) {
  const int64_t k = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (k >= K) return;
  const int64_t chunks = (M + kMaskRowsPerChunk - 1) / kMaskRowsPerChunk;
  for (int64_t c = blockIdx.y; c < chunks; c += gridDim.y) {
    const int64_t m0 = c * kMaskRowsPerChunk;
    const int64_t m1 = m0 + kMaskRowsPerChunk < M ? m0 + kMaskRowsPerChunk : M;
    for (int64_t m = m0; m < m1; m += 8) {
      float v[8];
#pragma unroll
      for (int i = 0; i < 8; ++i) v[i] = m + i < m1 ? to_float(x[(m + i) * K + k]) : 0.0f;
      bool hit = false;
#pragma unroll
      for (int i = 0; i < 8; ++i) hit |= is_outlier(v[i], threshold);
      if (hit) {
        mask[k] = 1;
        return;
      }
    }
  }
}

// NaN-winning absmax of two partial results (both >= 0 or NaN).
__device__ __forceinline__ float absmax_combine(float a, float b) {
  return absmax_step(a, b);
}

// One group of TPR threads per row (TPR = 32: a warp per row, TPR = 256: a block per row),
// grid-stride over rows. VEC: K % 4 == 0 and x / q / mask aligned for 4-element accesses.
template <typename T, int TPR, bool VEC>
__global__ void __launch_bounds__(kThreads)
    quantize_rows_kernel(const T* __restrict__ x, int64_t M, int64_t K,
                         const uint8_t* __restrict__ mask, int8_t* __restrict__ q,
                         float* __restrict__ row_scale) {
  static_assert(TPR == 32 || TPR == kThreads, "TPR must be a warp or the block");
  constexpr int kRowsPerBlock = kThreads / TPR;
  __shared__ float warp_amax[kThreads / 32];
  const int lane = threadIdx.x % TPR;
  const int64_t K4 = K / 4;

  for (int64_t base = static_cast<int64_t>(blockIdx.x) * kRowsPerBlock; base < M;
       base += static_cast<int64_t>(gridDim.x) * kRowsPerBlock) {
    const int64_t m = base + threadIdx.x / TPR;
    const bool valid = m < M;  // uniform over each TPR group
    const T* row = x + (valid ? m : 0) * K;
    int8_t* qrow = q + (valid ? m : 0) * K;

    // Pass 1: absmax over the non-outlier columns.
    float amax = 0.0f;
    if (valid) {
      if constexpr (VEC) {
        for (int64_t j = lane; j < K4; j += TPR) {
          float f[4];
          load4(row + 4 * j, f);
          const uint32_t mk = *reinterpret_cast<const uint32_t*>(mask + 4 * j);
#pragma unroll
          for (int e = 0; e < 4; ++e)
            if (!((mk >> (8 * e)) & 0xffu)) amax = absmax_step(amax, f[e]);
        }
      } else {
        for (int64_t k = lane; k < K; k += TPR)
          if (!mask[k]) amax = absmax_step(amax, to_float(row[k]));
      }
    }
#pragma unroll
    for (int off = 16; off > 0; off >>= 1)
      amax = absmax_combine(amax, __shfl_xor_sync(0xffffffffu, amax, off));
    if constexpr (TPR == kThreads) {
      if (threadIdx.x % 32 == 0) warp_amax[threadIdx.x / 32] = amax;
      __syncthreads();
      amax = warp_amax[0];
#pragma unroll
      for (int w = 1; w < kThreads / 32; ++w) amax = absmax_combine(amax, warp_amax[w]);
      __syncthreads();  // warp_amax is reused by the next row
    }

    // Pass 2: quantize (the row is re-read, mostly from L1/L2).
    if (valid) {
      if (lane == 0) row_scale[m] = amax;
      if constexpr (VEC) {
        for (int64_t j = lane; j < K4; j += TPR) {
          float v[4];
          load4(row + 4 * j, v);
          const uint32_t mk = *reinterpret_cast<const uint32_t*>(mask + 4 * j);
          uint32_t packed = 0;
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            const int8_t qe = ((mk >> (8 * e)) & 0xffu) ? int8_t{0} : quantize_value(v[e], amax);
            packed |= static_cast<uint32_t>(static_cast<uint8_t>(qe)) << (8 * e);
          }
          *reinterpret_cast<uint32_t*>(qrow + 4 * j) = packed;
        }
      } else {
        for (int64_t k = lane; k < K; k += TPR)
          qrow[k] = mask[k] ? int8_t{0} : quantize_value(to_float(row[k]), amax);
      }
    }
  }
}

template <typename T>
Status launch_quantize(cudaStream_t st, const T* x, int64_t M, int64_t K, float threshold,
                       int8_t* q, float* row_scale, uint8_t* mask) {
  if (K > 0) {
    LT8_CUDA_RETURN_IF_ERROR(cudaMemsetAsync(mask, 0, static_cast<size_t>(K), st),
                             "cudaMemsetAsync(outlier_mask)");
    if (threshold > 0.0f && M > 0) {
      const int64_t chunks = ceil_div(M, kMaskRowsPerChunk);
      dim3 grid(static_cast<unsigned>(ceil_div(K, kThreads)),
                static_cast<unsigned>(std::min(chunks, kMaxGridYZ)));
      outlier_mask_kernel<T><<<grid, kThreads, 0, st>>>(x, M, K, threshold, mask);
      LT8_CHECK_LAUNCH("outlier_mask_kernel");
    }
  }
  if (M == 0) return Status::Ok();
  const bool vec =
      K % 4 == 0 && is_aligned(x, 4 * sizeof(T)) && is_aligned(q, 4) && is_aligned(mask, 4);
  const bool warp_per_row = K <= 1024;
  const int64_t rows_per_block = warp_per_row ? kThreads / 32 : 1;
  const unsigned blocks =
      static_cast<unsigned>(std::min(ceil_div(M, rows_per_block), int64_t{1} << 24));
  if (warp_per_row) {
    if (vec)
      quantize_rows_kernel<T, 32, true><<<blocks, kThreads, 0, st>>>(x, M, K, mask, q, row_scale);
    else
      quantize_rows_kernel<T, 32, false><<<blocks, kThreads, 0, st>>>(x, M, K, mask, q, row_scale);
  } else {
    if (vec)
      quantize_rows_kernel<T, kThreads, true>
          <<<blocks, kThreads, 0, st>>>(x, M, K, mask, q, row_scale);
    else
      quantize_rows_kernel<T, kThreads, false>
          <<<blocks, kThreads, 0, st>>>(x, M, K, mask, q, row_scale);
  }
  LT8_CHECK_LAUNCH("quantize_rows_kernel");
  return Status::Ok();
}

// =============================================================================================
// 2. dequantize_rows / dequant_epilogue (elementwise, grid-stride, 4 elements per step when
//    the row length is a multiple of 4 and the pointers are aligned)
// =============================================================================================

template <typename T, bool VEC>
__global__ void __launch_bounds__(kThreads)
    dequantize_rows_kernel(const int8_t* __restrict__ q, const float* __restrict__ row_scale,
                           int64_t M, int64_t K, T* __restrict__ out) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const int64_t start = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if constexpr (VEC) {
    const int64_t groups = M * K / 4;
    for (int64_t g = start; g < groups; g += stride) {
      const int64_t i = 4 * g;
      const int64_t m = i / K;
      const float s = row_scale[m] * kInv127;
      const uint32_t w = *reinterpret_cast<const uint32_t*>(q + i);
      float f[4];
#pragma unroll
      for (int e = 0; e < 4; ++e) f[e] = static_cast<float>(byte_of(w, e)) * s;
      store4(out + i, f);
    }
  } else {
    const int64_t total = M * K;
    for (int64_t i = start; i < total; i += stride) {
      const int64_t m = i / K;
      const float s = row_scale[m] * kInv127;
      out[i] = from_float<T>(static_cast<float>(q[i]) * s);
    }
  }
}

template <typename T, bool VEC>
__global__ void __launch_bounds__(kThreads)
    dequant_epilogue_kernel(const int32_t* __restrict__ C, const float* __restrict__ row_scale,
                            const float* __restrict__ col_scale, DType bias_dtype,
                            const void* __restrict__ bias, int64_t M, int64_t N,
                            T* __restrict__ out) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const int64_t start = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if constexpr (VEC) {
    const int64_t groups = M * N / 4;
    for (int64_t g = start; g < groups; g += stride) {
      const int64_t i = 4 * g;
      const int64_t m = i / N;
      const int64_t n = i - m * N;
      const int4 c = *reinterpret_cast<const int4*>(C + i);
      const int32_t cv[4] = {c.x, c.y, c.z, c.w};
      const float rs = row_scale[m];
      float f[4];
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        float v = dequant(cv[e], rs, col_scale[n + e]);
        if (bias != nullptr) v = __fadd_rn(v, load_float_any(bias_dtype, bias, n + e));
        f[e] = v;
      }
      store4(out + i, f);
    }
  } else {
    const int64_t total = M * N;
    for (int64_t i = start; i < total; i += stride) {
      const int64_t m = i / N;
      const int64_t n = i - m * N;
      float v = dequant(C[i], row_scale[m], col_scale[n]);
      if (bias != nullptr) v = __fadd_rn(v, load_float_any(bias_dtype, bias, n));
      out[i] = from_float<T>(v);
    }
  }
}

// out[m, n] = 0 (+ bias[n]): the fused linear op with K == 0.
template <typename T>
__global__ void __launch_bounds__(kThreads)
    bias_fill_kernel(DType bias_dtype, const void* __restrict__ bias, int64_t M, int64_t N,
                     T* __restrict__ out) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const int64_t total = M * N;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total;
       i += stride) {
    float v = 0.0f;
    if (bias != nullptr) v = __fadd_rn(v, load_float_any(bias_dtype, bias, i % N));
    out[i] = from_float<T>(v);
  }
}

// =============================================================================================
// 3. Outlier column compaction: idx[0..count) = ascending k with mask[k] != 0. One block.
// =============================================================================================

// One step of an ordered block-wide compaction. Bit p of each thread's `flags` marks column
// k0 + p; the marked columns are appended to idx in ascending order after the `carry` entries
// already there (threads own ascending column ranges). Returns the block's count for this step.
// Every thread of the block must call it; warp_total holds THREADS / 32 ints.
template <int THREADS>
__device__ __forceinline__ int compact_step(uint32_t flags, int64_t k0, int64_t carry,
                                            int* warp_total, int32_t* __restrict__ idx) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int mine = __popc(flags);
  int incl = mine;  // inclusive warp scan
#pragma unroll
  for (int off = 1; off < 32; off <<= 1) {
    const int y = __shfl_up_sync(0xffffffffu, incl, off);
    if (lane >= off) incl += y;
  }
  if (lane == 31) warp_total[warp] = incl;
  __syncthreads();
  int warp_offset = 0, block_total = 0;
  for (int w = 0; w < THREADS / 32; ++w) {
    const int t = warp_total[w];
    if (w < warp) warp_offset += t;
    block_total += t;
  }
  int64_t pos = carry + warp_offset + (incl - mine);
  while (flags) {
    const int p = __ffs(flags) - 1;
    flags &= flags - 1;
    idx[pos++] = static_cast<int32_t>(k0 + p);
  }
  __syncthreads();  // warp_total is rewritten by the next step
  return block_total;
}

constexpr int kCompactThreads = 1024;
constexpr int kCompactPerThread = 16;

__global__ void __launch_bounds__(kCompactThreads)
    compact_outliers_kernel(const uint8_t* __restrict__ mask, int64_t K, int32_t* __restrict__ idx,
                            int32_t* __restrict__ count) {
  __shared__ int warp_total[kCompactThreads / 32];
  const bool mask_vec_ok = (reinterpret_cast<uintptr_t>(mask) % 16) == 0;
  int64_t carry = 0;
  for (int64_t base = 0; base < K; base += int64_t{kCompactThreads} * kCompactPerThread) {
    const int64_t k0 = base + static_cast<int64_t>(threadIdx.x) * kCompactPerThread;
    uint32_t flags = 0;  // bit p: mask[k0 + p] set
    if (mask_vec_ok && k0 + kCompactPerThread <= K) {
      const uint4 v = *reinterpret_cast<const uint4*>(mask + k0);
      const uint32_t words[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
      for (int p = 0; p < kCompactPerThread; ++p)
        if ((words[p / 4] >> (8 * (p % 4))) & 0xffu) flags |= 1u << p;
    } else {
#pragma unroll
      for (int p = 0; p < kCompactPerThread; ++p)
        if (k0 + p < K && mask[k0 + p]) flags |= 1u << p;
    }
    carry += compact_step<kCompactThreads>(flags, k0, carry, warp_total, idx);
  }
  if (threadIdx.x == 0) *count = static_cast<int32_t>(carry);
}

// =============================================================================================
// 4. int8 GEMM: C (M, N) = A (M, K) . B (N, K)^T, int32 accumulate with __dp4a.
//    Block tile 128 x 128, K step 64, 256 threads each owning an 8 x 8 sub-tile (rows
//    ty*4 + {0..3} and 64 + ty*4 + {0..3}, same for columns with tx). Shared memory holds the
//    tiles transposed as int8x4 words, [k4][row], double buffered, with register prefetch of
//    the next K step. Tails in M, N and K are zero-padded. The epilogue is a template
//    parameter: plain int32 store, or the fused LLM.int8() epilogue.
// =============================================================================================

constexpr int kBM = 128;
constexpr int kBN = 128;
constexpr int kBK = 64;
constexpr int kBK4 = kBK / 4;
constexpr int kGemmThreads = 256;
constexpr int kGemmSmemBytes = 2 /*buffers*/ * (kBM + kBN) * kBK4 * 4;  // 32 KiB
constexpr int64_t kGroupM = 8;  // tile rasterisation: groups of 8 M-tiles share B in L2

static_assert(kBM == kBN, "loaders assume square tiles");
static_assert(kBM * kBK == kGemmThreads * 32, "each thread loads 32 bytes of A and of B");

// Row (or column) of a thread's i-th output inside the tile: two groups of 4, 64 apart.
__device__ __forceinline__ int tile_row(int i, int ty) {
  return (i < 4 ? 0 : 64) + ty * 4 + (i & 3);
}

// 32 consecutive bytes p[0 .. 32) into 8 little-endian words; byte b is read only when
// b < lim (lim <= 0: all zero). VEC = 16: p 16-byte aligned and lim % 16 == 0; VEC = 4: p
// 4-byte aligned and lim % 4 == 0; VEC = 1: anything.
template <int VEC>
__device__ __forceinline__ void gemm_load(const int8_t* __restrict__ p, int lim, uint32_t (&w)[8]) {
#pragma unroll
  for (int i = 0; i < 8; ++i) w[i] = 0;
  if constexpr (VEC == 16) {
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      if (16 * h < lim) {
        const uint4 v = __ldg(reinterpret_cast<const uint4*>(p + 16 * h));
        w[4 * h + 0] = v.x;
        w[4 * h + 1] = v.y;
        w[4 * h + 2] = v.z;
        w[4 * h + 3] = v.w;
      }
    }
  } else if constexpr (VEC == 4) {
#pragma unroll
    for (int i = 0; i < 8; ++i)
      if (4 * i < lim) w[i] = __ldg(reinterpret_cast<const unsigned int*>(p + 4 * i));
  } else {
#pragma unroll
    for (int b = 0; b < 32; ++b)
      if (b < lim)
        w[b / 4] |= static_cast<uint32_t>(static_cast<uint8_t>(__ldg(p + b))) << (8 * (b % 4));
  }
}

// Maps a linear tile index onto (tile_m, tile_n), grouping kGroupM M-tiles for L2 reuse.
__device__ __forceinline__ void tile_coords(int64_t t, int64_t tiles_m, int64_t tiles_n,
                                            int64_t* tm, int64_t* tn) {
  const int64_t in_group = kGroupM * tiles_n;
  const int64_t group = t / in_group;
  const int64_t first_m = group * kGroupM;
  const int64_t group_size = tiles_m - first_m < kGroupM ? tiles_m - first_m : kGroupM;
  const int64_t r = t - group * in_group;
  *tm = first_m + r % group_size;
  *tn = r / group_size;
}

template <int VEC, typename Epi>
__global__ void __launch_bounds__(kGemmThreads, 2)
    int8_gemm_kernel(const int8_t* __restrict__ A, const int8_t* __restrict__ B, int64_t M,
                     int64_t N, int64_t K, int64_t tiles_m, int64_t tiles_n, Epi epi) {
  constexpr int kSmem = kGemmSmemBytes > Epi::kSmemBytes ? kGemmSmemBytes : Epi::kSmemBytes;
  __shared__ __align__(16) unsigned char smem[kSmem];
  uint32_t* As = reinterpret_cast<uint32_t*>(smem);  // [2][kBK4][kBM]
  uint32_t* Bs = As + 2 * kBK4 * kBM;                // [2][kBK4][kBN]

  const int tid = threadIdx.x;
  const int ty = tid / 16, tx = tid % 16;    // compute mapping
  const int lr = tid % kBM, lc = tid / kBM;  // load mapping: row lr, bytes lc*32 .. +32
  const int num_k = static_cast<int>((K + kBK - 1) / kBK);  // K < 2^31

  {  // one output tile per block (the host guarantees tiles <= max gridDim.x)
    int64_t tm, tn;
    tile_coords(blockIdx.x, tiles_m, tiles_n, &tm, &tn);
    const int64_t m0 = tm * kBM, n0 = tn * kBN;

    int32_t acc[8][8];
#pragma unroll
    for (int i = 0; i < 8; ++i)
#pragma unroll
      for (int j = 0; j < 8; ++j) acc[i][j] = 0;

    if (num_k > 0) {
      // Loader state: this thread's 32-byte slice of row lr of each tile, and how many of
      // its bytes lie inside the matrix (<= 0: none; rows past the end read nothing).
      const bool a_row_ok = m0 + lr < M, b_row_ok = n0 + lr < N;
      const int8_t* pa = A + (a_row_ok ? (m0 + lr) * K + lc * 32 : 0);
      const int8_t* pb = B + (b_row_ok ? (n0 + lr) * K + lc * 32 : 0);
      int lim_a = a_row_ok ? static_cast<int>(K) - lc * 32 : 0;
      int lim_b = b_row_ok ? static_cast<int>(K) - lc * 32 : 0;

      uint32_t ra[8], rb[8];
      gemm_load<VEC>(pa, lim_a, ra);
      gemm_load<VEC>(pb, lim_b, rb);
#pragma unroll
      for (int w = 0; w < 8; ++w) {
        As[(lc * 8 + w) * kBM + lr] = ra[w];
        Bs[(lc * 8 + w) * kBN + lr] = rb[w];
      }
      __syncthreads();

      for (int kt = 0; kt < num_k; ++kt) {
        const int buf = kt & 1;
        const bool has_next = kt + 1 < num_k;
        if (has_next) {
          pa += kBK;
          lim_a -= kBK;
          pb += kBK;
          lim_b -= kBK;
          gemm_load<VEC>(pa, lim_a, ra);
          gemm_load<VEC>(pb, lim_b, rb);
        }
        const uint32_t* as = As + buf * kBK4 * kBM;
        const uint32_t* bs = Bs + buf * kBK4 * kBN;
#pragma unroll
        for (int k4 = 0; k4 < kBK4; ++k4) {
          const uint4 a0 = *reinterpret_cast<const uint4*>(as + k4 * kBM + ty * 4);
          const uint4 a1 = *reinterpret_cast<const uint4*>(as + k4 * kBM + 64 + ty * 4);
          const uint4 b0 = *reinterpret_cast<const uint4*>(bs + k4 * kBN + tx * 4);
          const uint4 b1 = *reinterpret_cast<const uint4*>(bs + k4 * kBN + 64 + tx * 4);
          const int a[8] = {static_cast<int>(a0.x), static_cast<int>(a0.y), static_cast<int>(a0.z),
                            static_cast<int>(a0.w), static_cast<int>(a1.x), static_cast<int>(a1.y),
                            static_cast<int>(a1.z), static_cast<int>(a1.w)};
          const int b[8] = {static_cast<int>(b0.x), static_cast<int>(b0.y), static_cast<int>(b0.z),
                            static_cast<int>(b0.w), static_cast<int>(b1.x), static_cast<int>(b1.y),
                            static_cast<int>(b1.z), static_cast<int>(b1.w)};
#pragma unroll
          for (int i = 0; i < 8; ++i)
#pragma unroll
            for (int j = 0; j < 8; ++j) acc[i][j] = __dp4a(a[i], b[j], acc[i][j]);
        }
        if (has_next) {
          uint32_t* as_next = As + (buf ^ 1) * kBK4 * kBM;
          uint32_t* bs_next = Bs + (buf ^ 1) * kBK4 * kBN;
#pragma unroll
          for (int w = 0; w < 8; ++w) {
            as_next[(lc * 8 + w) * kBM + lr] = ra[w];
            bs_next[(lc * 8 + w) * kBN + lr] = rb[w];
          }
        }
        __syncthreads();
      }
    }

    epi(acc, m0, n0, tid, ty, tx, smem);
  }
}

// Plain int32 store.
struct StoreI32Epilogue {
  static constexpr int kSmemBytes = 0;
  int32_t* C;
  int64_t M, N;
  bool vec;  // N % 4 == 0 and C 16-byte aligned

  __device__ __forceinline__ void operator()(const int32_t (&acc)[8][8], int64_t m0, int64_t n0,
                                             int /*tid*/, int ty, int tx,
                                             unsigned char* /*smem*/) const {
#pragma unroll
    for (int i = 0; i < 8; ++i) {
      const int64_t m = m0 + tile_row(i, ty);
      if (m >= M) continue;
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const int64_t n = n0 + h * 64 + tx * 4;
        if (n >= N) continue;
        int32_t* p = C + m * N + n;
        if (vec) {
          *reinterpret_cast<int4*>(p) =
              make_int4(acc[i][4 * h], acc[i][4 * h + 1], acc[i][4 * h + 2], acc[i][4 * h + 3]);
        } else {
#pragma unroll
          for (int e = 0; e < 4; ++e)
            if (n + e < N) p[e] = acc[i][4 * h + e];
        }
      }
    }
  }
};

// Fused LLM.int8() epilogue, per output (m, n), in the CPU reference's order:
//   v = dequant(acc, row_scale[m], SCB[n]);
//   for j in [0, count): k = idx[j]; v += x[m, k] * weight_value(CB[n, k], SCB[n]);
//   v += bias[n]; out[m, n] = v (x's dtype).
// The outlier columns are staged through shared memory kOutChunk at a time:
// xs[j][r] = x[m0 + r, idx[j]] and ws[j][c] = W[n0 + c, idx[j]].
template <typename T>
struct LinearEpilogue {
  static constexpr int kOutChunk = 32;
  static constexpr int kStride = kBM + 4;  // keeps float4 reads aligned, spreads banks
  static constexpr int kSmemBytes = 2 * kOutChunk * kStride * 4;
  const T* x;
  const int8_t* CB;
  const float* SCB;
  const float* row_scale;
  const int32_t* outlier_idx;
  const int32_t* outlier_count;
  DType bias_dtype;
  const void* bias;
  T* out;
  int64_t M, N, K;
  bool vec;  // N % 4 == 0 and out 4 * sizeof(T) aligned

  __device__ __forceinline__ void operator()(const int32_t (&acc)[8][8], int64_t m0, int64_t n0,
                                             int tid, int ty, int tx, unsigned char* smem) const {
    float rs[8];
#pragma unroll
    for (int i = 0; i < 8; ++i) {
      const int64_t m = m0 + tile_row(i, ty);
      rs[i] = m < M ? row_scale[m] : 0.0f;
    }
    float v[8][8];
#pragma unroll
    for (int j = 0; j < 8; ++j) {
      const int64_t n = n0 + tile_row(j, tx);
      const float cs = n < N ? SCB[n] : 0.0f;
#pragma unroll
      for (int i = 0; i < 8; ++i) v[i][j] = dequant(acc[i][j], rs[i], cs);
    }

    const int count = *outlier_count;
    float* xs = reinterpret_cast<float*>(smem);
    float* ws = xs + kOutChunk * kStride;
    for (int base = 0; base < count; base += kOutChunk) {
      const int len = count - base < kOutChunk ? count - base : kOutChunk;
      for (int e = tid; e < kOutChunk * kBM; e += kGemmThreads) {
        const int jj = e % kOutChunk, r = e / kOutChunk;
        float xv = 0.0f, wv = 0.0f;
        if (jj < len) {
          const int64_t k = outlier_idx[base + jj];
          const int64_t m = m0 + r, n = n0 + r;
          if (m < M) xv = to_float(x[m * K + k]);
          if (n < N) wv = weight_value(CB[n * K + k], SCB[n]);
        }
        xs[jj * kStride + r] = xv;
        ws[jj * kStride + r] = wv;
      }
      __syncthreads();
      for (int jj = 0; jj < len; ++jj) {
        const float4 xa = *reinterpret_cast<const float4*>(xs + jj * kStride + ty * 4);
        const float4 xb = *reinterpret_cast<const float4*>(xs + jj * kStride + 64 + ty * 4);
        const float4 wa = *reinterpret_cast<const float4*>(ws + jj * kStride + tx * 4);
        const float4 wb = *reinterpret_cast<const float4*>(ws + jj * kStride + 64 + tx * 4);
        const float xr[8] = {xa.x, xa.y, xa.z, xa.w, xb.x, xb.y, xb.z, xb.w};
        const float wr[8] = {wa.x, wa.y, wa.z, wa.w, wb.x, wb.y, wb.z, wb.w};
#pragma unroll
        for (int i = 0; i < 8; ++i)
#pragma unroll
          for (int j = 0; j < 8; ++j) v[i][j] = __fadd_rn(v[i][j], __fmul_rn(xr[i], wr[j]));
      }
      __syncthreads();
    }

    if (bias != nullptr) {
      float bv[8];
#pragma unroll
      for (int j = 0; j < 8; ++j) {
        const int64_t n = n0 + tile_row(j, tx);
        bv[j] = n < N ? load_float_any(bias_dtype, bias, n) : 0.0f;
      }
#pragma unroll
      for (int i = 0; i < 8; ++i)
#pragma unroll
        for (int j = 0; j < 8; ++j) v[i][j] = __fadd_rn(v[i][j], bv[j]);
    }

#pragma unroll
    for (int i = 0; i < 8; ++i) {
      const int64_t m = m0 + tile_row(i, ty);
      if (m >= M) continue;
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const int64_t n = n0 + h * 64 + tx * 4;
        if (n >= N) continue;
        T* p = out + m * N + n;
        const float f[4] = {v[i][4 * h], v[i][4 * h + 1], v[i][4 * h + 2], v[i][4 * h + 3]};
        if (vec) {
          store4(p, f);
        } else {
#pragma unroll
          for (int e = 0; e < 4; ++e)
            if (n + e < N) p[e] = from_float<T>(f[e]);
        }
      }
    }
  }
};

// =============================================================================================
// 4a. Small-batch preparation in one launch (M <= kSmallBatchRows, K % 8 == 0, K <= kPrepMaxK):
//     replaces the memset + mask + quantize + compaction launches, whose launch overhead and
//     gaps dominate at decode sizes. Block b quantizes row b. Every block first finds the outlier
//     columns of the whole (small) batch itself, into shared memory (a few hundred KiB of L2
//     reads in all, no grid-wide sync); block 0 also writes them out compacted in ascending
//     order. Same values as those kernels (max is order-independent).
// =============================================================================================

constexpr int kPrepThreads = 1024;
constexpr int kPrepVec = 8;           // consecutive columns per thread and step
constexpr int64_t kPrepMaxK = 32768;  // the block's shared-memory copy of the mask

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

__device__ __forceinline__ bool mask_bit(const uint2& mk, int e) {
  return ((e < 4 ? mk.x : mk.y) >> (8 * (e & 3))) & 0xffu;
}

template <typename T>
__global__ void __launch_bounds__(kPrepThreads)
    prepare_small_batch_kernel(const T* __restrict__ x, int M, int64_t K, float threshold,
                               int32_t* __restrict__ idx, int32_t* __restrict__ count,
                               int8_t* __restrict__ q, float* __restrict__ row_scale) {
  extern __shared__ uint2 smask[];  // K bytes: 1 for outlier columns
  __shared__ int warp_total[kPrepThreads / 32];
  __shared__ float partial[kPrepThreads / 32];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const bool writer = blockIdx.x == 0;

  // (1) Outlier columns of the batch.
  int64_t carry = 0;
  for (int64_t base = 0; base < K; base += int64_t{kPrepThreads} * kPrepVec) {
    const int64_t k0 = base + static_cast<int64_t>(threadIdx.x) * kPrepVec;
    uint32_t flags = 0;  // bit e: column k0 + e is an outlier column
    if (threshold > 0.0f && k0 < K) {
#pragma unroll 4
      for (int m = 0; m < M; ++m) {
        float f[8];
        load8(x + m * K + k0, f);
#pragma unroll
        for (int e = 0; e < kPrepVec; ++e)
          if (is_outlier(f[e], threshold)) flags |= 1u << e;
      }
    }
    if (k0 < K) {
      uint2 bytes = make_uint2(0, 0);
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        bytes.x |= ((flags >> e) & 1u) << (8 * e);
        bytes.y |= ((flags >> (4 + e)) & 1u) << (8 * e);
      }
      smask[k0 / kPrepVec] = bytes;
    }
    if (writer)  // block-uniform branch: compaction in ascending k
      carry += compact_step<kPrepThreads>(flags, k0, carry, warp_total, idx);
  }
  if (writer && threadIdx.x == 0) *count = static_cast<int32_t>(carry);
  __syncthreads();  // smask complete

  // (2) Row blockIdx.x: absmax over the non-outlier columns, then quantize.
  const int m = blockIdx.x;
  const T* row = x + static_cast<int64_t>(m) * K;
  float amax = 0.0f;
#pragma unroll 2
  for (int64_t k0 = int64_t{threadIdx.x} * kPrepVec; k0 < K;
       k0 += int64_t{kPrepThreads} * kPrepVec) {
    float f[8];
    load8(row + k0, f);
    const uint2 mk = smask[k0 / kPrepVec];
#pragma unroll
    for (int e = 0; e < kPrepVec; ++e)
      if (!mask_bit(mk, e)) amax = absmax_step(amax, f[e]);
  }
#pragma unroll
  for (int off = 16; off > 0; off >>= 1)
    amax = absmax_combine(amax, __shfl_xor_sync(0xffffffffu, amax, off));
  if (lane == 0) partial[warp] = amax;
  __syncthreads();
  amax = partial[0];
  for (int w = 1; w < kPrepThreads / 32; ++w) amax = absmax_combine(amax, partial[w]);
  if (threadIdx.x == 0) row_scale[m] = amax;
  int8_t* qrow = q + static_cast<int64_t>(m) * K;
#pragma unroll 2
  for (int64_t k0 = int64_t{threadIdx.x} * kPrepVec; k0 < K;
       k0 += int64_t{kPrepThreads} * kPrepVec) {
    float f[8];
    load8(row + k0, f);
    const uint2 mk = smask[k0 / kPrepVec];
    uint2 packed = make_uint2(0, 0);
#pragma unroll
    for (int e = 0; e < kPrepVec; ++e) {
      const int8_t qe = mask_bit(mk, e) ? int8_t{0} : quantize_value(f[e], amax);
      const uint32_t b = static_cast<uint32_t>(static_cast<uint8_t>(qe)) << (8 * (e & 3));
      if (e < 4)
        packed.x |= b;
      else
        packed.y |= b;
    }
    *reinterpret_cast<uint2*>(qrow + k0) = packed;
  }
}

// =============================================================================================
// 4b. Small-M (decode) path of the fused op: memory-bound, so every weight byte is read once
//     with 16-byte streaming loads. Each warp owns kGemvCols output columns; per K chunk the
//     block stages the M <= ROWS quantized activation rows in shared memory once, and every
//     staged 16-byte activation word is multiplied against all kGemvCols weight columns (the
//     activations are read from L2 once per block, not once per column). Same epilogue
//     arithmetic and order as LinearEpilogue / the CPU: dequant, outlier terms in ascending k,
//     bias.
// =============================================================================================

constexpr int kGemvCols = 4;     // output columns per warp
constexpr int kGemvChunk = 128;  // 16-byte words of K per staged chunk (2 KiB per row)
constexpr int kGemvWordsPerLane = kGemvChunk / 32;
constexpr int kGemvOutChunk = 32;  // outlier columns staged per step of the epilogue

// Common epilogue of the GEMV kernels. sacc holds the block's int32 sums as [warp][r][col]
// (COLS output columns per warp, ROWS rows); the block's outputs are spread over its threads.
// Outlier terms: per chunk of kGemvOutChunk outlier columns, the block gathers the weights of
// its columns and the activations of its rows into shared memory in parallel (one load per
// thread, instead of a chain of dependent gathers per output). Order as the CPU: dequant,
// outlier terms in ascending k, bias.
template <typename T, int ROWS, int COLS>
__device__ __forceinline__ void gemv_epilogue(const int32_t* sacc, const T* __restrict__ x,
                                              const int8_t* __restrict__ CB,
                                              const float* __restrict__ SCB,
                                              const float* __restrict__ row_scale,
                                              const int32_t* __restrict__ outlier_idx,
                                              const int32_t* __restrict__ outlier_count,
                                              DType bias_dtype, const void* __restrict__ bias,
                                              int M, int64_t N, int64_t K, T* __restrict__ out) {
  constexpr int kPer = (ROWS * COLS + 31) / 32;  // outputs per thread
  constexpr int kMaxBlockCols = 32;
  __shared__ float s_w[kGemvOutChunk][kMaxBlockCols];
  __shared__ float s_x[kGemvOutChunk][ROWS];
  const int warps = blockDim.x >> 5;
  const int count = *outlier_count;
  const int block_cols = warps * COLS, outputs = warps * ROWS * COLS;
  const int64_t block_n0 = static_cast<int64_t>(blockIdx.x) * block_cols;
  float v[kPer];
#pragma unroll
  for (int i = 0; i < kPer; ++i) {
    const int e = threadIdx.x + i * blockDim.x;
    const int col = e % COLS, r = (e / COLS) % ROWS, w = e / (COLS * ROWS);
    const int64_t n = block_n0 + w * COLS + col;
    v[i] = (e < outputs && r < M && n < N) ? dequant(sacc[e], row_scale[r], SCB[n]) : 0.0f;
  }
  for (int j0 = 0; j0 < count; j0 += kGemvOutChunk) {
    const int len = count - j0 < kGemvOutChunk ? count - j0 : kGemvOutChunk;
    __syncthreads();
    for (int e = threadIdx.x; e < len * block_cols; e += blockDim.x) {
      const int j = e / block_cols, c = e % block_cols;
      const int64_t n = block_n0 + c;
      s_w[j][c] = n < N ? weight_value(CB[n * K + outlier_idx[j0 + j]], SCB[n]) : 0.0f;
    }
    for (int e = threadIdx.x; e < len * M; e += blockDim.x) {
      const int j = e / M, r = e % M;
      s_x[j][r] = to_float(x[static_cast<int64_t>(r) * K + outlier_idx[j0 + j]]);
    }
    __syncthreads();
#pragma unroll
    for (int i = 0; i < kPer; ++i) {
      const int e = threadIdx.x + i * blockDim.x;
      const int col = e % COLS, r = (e / COLS) % ROWS, w = e / (COLS * ROWS);
      if (e < outputs && r < M)
        for (int j = 0; j < len; ++j)
          v[i] = __fadd_rn(v[i], __fmul_rn(s_x[j][r], s_w[j][w * COLS + col]));
    }
  }
#pragma unroll
  for (int i = 0; i < kPer; ++i) {
    const int e = threadIdx.x + i * blockDim.x;
    const int col = e % COLS, r = (e / COLS) % ROWS, w = e / (COLS * ROWS);
    const int64_t n = block_n0 + w * COLS + col;
    if (e >= outputs || r >= M || n >= N) continue;
    float o = v[i];
    if (bias != nullptr) o = __fadd_rn(o, load_float_any(bias_dtype, bias, n));
    out[static_cast<int64_t>(r) * N + n] = from_float<T>(o);
  }
}

template <typename T, int ROWS>
__global__ void __launch_bounds__(256, 2)
    linear_gemv_kernel(const int8_t* __restrict__ q, const T* __restrict__ x,
                       const int8_t* __restrict__ CB, const float* __restrict__ SCB,
                       const float* __restrict__ row_scale, const int32_t* __restrict__ outlier_idx,
                       const int32_t* __restrict__ outlier_count, DType bias_dtype,
                       const void* __restrict__ bias, int M, int64_t N, int64_t K,
                       T* __restrict__ out) {
  __shared__ int4 sq[ROWS * kGemvChunk];
  const int lane = threadIdx.x & 31;
  const int warps = blockDim.x >> 5;
  const int64_t n0 = (static_cast<int64_t>(blockIdx.x) * warps + (threadIdx.x >> 5)) * kGemvCols;
  const int64_t words = K / 16;
  const int4* wrow[kGemvCols];
#pragma unroll
  for (int c = 0; c < kGemvCols; ++c)
    wrow[c] = reinterpret_cast<const int4*>(CB + (n0 + c < N ? n0 + c : 0) * K);

  int32_t acc[ROWS][kGemvCols];
#pragma unroll
  for (int r = 0; r < ROWS; ++r)
#pragma unroll
    for (int c = 0; c < kGemvCols; ++c) acc[r][c] = 0;

  for (int64_t w0 = 0; w0 < words; w0 += kGemvChunk) {
    const int len = static_cast<int>(words - w0 < kGemvChunk ? words - w0 : kGemvChunk);
    __syncthreads();  // the previous chunk's readers are done
    for (int e = threadIdx.x; e < M * kGemvChunk; e += blockDim.x) {
      const int r = e / kGemvChunk, c = e % kGemvChunk;
      if (c < len) sq[r * kGemvChunk + c] = reinterpret_cast<const int4*>(q + r * K)[w0 + c];
    }
    __syncthreads();
    // The lane's weight words, G at a time (G x kGemvCols independent 16-byte loads in flight;
    // G shrinks as ROWS grows so that the accumulators stay in registers), then the products.
    constexpr int G = ROWS <= 8 ? kGemvWordsPerLane : 2;
#pragma unroll
    for (int g = 0; g < kGemvWordsPerLane; g += G) {
      int4 wv[G][kGemvCols];
#pragma unroll
      for (int i = 0; i < G; ++i) {
        const int c = lane + 32 * (g + i);
#pragma unroll
        for (int col = 0; col < kGemvCols; ++col)
          wv[i][col] = c < len ? __ldcs(wrow[col] + w0 + c) : make_int4(0, 0, 0, 0);
      }
#pragma unroll
      for (int i = 0; i < G; ++i) {
        const int c = lane + 32 * (g + i);
#pragma unroll
        for (int r = 0; r < ROWS; ++r) {
          if (r < M && c < len) {
            const int4 xv = sq[r * kGemvChunk + c];
#pragma unroll
            for (int col = 0; col < kGemvCols; ++col) {
              acc[r][col] = __dp4a(xv.x, wv[i][col].x, acc[r][col]);
              acc[r][col] = __dp4a(xv.y, wv[i][col].y, acc[r][col]);
              acc[r][col] = __dp4a(xv.z, wv[i][col].z, acc[r][col]);
              acc[r][col] = __dp4a(xv.w, wv[i][col].w, acc[r][col]);
            }
          }
        }
      }
    }
  }
#pragma unroll
  for (int r = 0; r < ROWS; ++r)
#pragma unroll
    for (int c = 0; c < kGemvCols; ++c)
#pragma unroll
      for (int off = 16; off > 0; off >>= 1)
        acc[r][c] += __shfl_xor_sync(0xffffffffu, acc[r][c], off);

  // The warp sums go through shared memory to the common epilogue.
  __shared__ int32_t sacc[8 * ROWS * kGemvCols];  // [warp][r][col], blockDim.x <= 256
  const int warp = threadIdx.x >> 5;
  if (lane == 0) {
#pragma unroll
    for (int r = 0; r < ROWS; ++r)
#pragma unroll
      for (int c = 0; c < kGemvCols; ++c) sacc[(warp * ROWS + r) * kGemvCols + c] = acc[r][c];
  }
  __syncthreads();
  gemv_epilogue<T, ROWS, kGemvCols>(sacc, x, CB, SCB, row_scale, outlier_idx, outlier_count,
                                    bias_dtype, bias, M, N, K, out);
}

// Tensor-core GEMV (sm_80+): mma.sync m16n8k32 on int8, exact int32 sums. A warp owns kTcCols
// = 8 output columns (the mma's n) and all 16 (zero-padded) rows. The integer sum over k does not
// depend on the order of k, so each lane (g = lane / 4, t = lane % 4) feeds the mma 16
// contiguous bytes of one weight row and of the two activation rows it holds (g, g + 8) instead
// of the architectural k order: one 16-byte load of the weight per lane and step, two mmas.
constexpr int kTcWarps = 4;
constexpr int kTcCols = 8;
constexpr int kTcStride = kGemvChunk + 4;  // padded row stride in words: conflict-free reads
constexpr int kTcUnroll = 8;               // weight loads in flight per lane

__device__ __forceinline__ void mma_s8_16x8x32(int32_t (&c)[4], uint32_t a0, uint32_t a1,
                                               uint32_t a2, uint32_t a3, uint32_t b0, uint32_t b1) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile(
      "mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
      "{%8,%9}, {%0,%1,%2,%3};\n"
      : "+r"(c[0]), "+r"(c[1]), "+r"(c[2]), "+r"(c[3])
      : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
#else
  __trap();  // launched only on sm_80+ (see tensor_core_gemv)
#endif
}

template <typename T>
__global__ void __launch_bounds__(kTcWarps * 32)
    linear_gemv_tc_kernel(const int8_t* __restrict__ q, const T* __restrict__ x,
                          const int8_t* __restrict__ CB, const float* __restrict__ SCB,
                          const float* __restrict__ row_scale,
                          const int32_t* __restrict__ outlier_idx,
                          const int32_t* __restrict__ outlier_count, DType bias_dtype,
                          const void* __restrict__ bias, int M, int64_t N, int64_t K,
                          T* __restrict__ out) {
  __shared__ int4 sq[kSmallBatchRows * kTcStride];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int g = lane >> 2, t = lane & 3;
  const int64_t n = (static_cast<int64_t>(blockIdx.x) * kTcWarps + warp) * kTcCols + g;
  const int4* wrow = reinterpret_cast<const int4*>(CB + (n < N ? n : 0) * K);
  const int64_t words = K / 16;
  int32_t c[4] = {0, 0, 0, 0}, c1[4] = {0, 0, 0, 0};
  for (int64_t w0 = 0; w0 < words; w0 += kGemvChunk) {
    const int len = static_cast<int>(words - w0 < kGemvChunk ? words - w0 : kGemvChunk);
    __syncthreads();
    for (int e = threadIdx.x; e < kSmallBatchRows * kGemvChunk; e += blockDim.x) {
      const int r = e / kGemvChunk, cc = e % kGemvChunk;
      int4 v = make_int4(0, 0, 0, 0);
      if (r < M && cc < len) v = reinterpret_cast<const int4*>(q + r * K)[w0 + cc];
      sq[r * kTcStride + cc] = v;
    }
    __syncthreads();
    // Every lane runs the same number of steps (mma.sync needs the whole warp); words past the
    // chunk's end read as zeros. kTcUnroll weight loads are issued before their mmas, which
    // alternate between two accumulator sets (independent chains).
    for (int i0 = 0; 4 * i0 < len; i0 += kTcUnroll) {
      int4 wv[kTcUnroll];
#pragma unroll
      for (int u = 0; u < kTcUnroll; ++u) {
        const int cc = t + 4 * (i0 + u);
        wv[u] = cc < len && n < N ? __ldcs(wrow + w0 + cc) : make_int4(0, 0, 0, 0);
      }
#pragma unroll
      for (int u = 0; u < kTcUnroll; ++u) {
        const int cc = t + 4 * (i0 + u);
        const bool ok = cc < len;
        const int4 xa = ok ? sq[g * kTcStride + cc] : make_int4(0, 0, 0, 0);
        const int4 xb = ok ? sq[(g + 8) * kTcStride + cc] : make_int4(0, 0, 0, 0);
        int32_t (&acc)[4] = (u & 1) ? c1 : c;
        mma_s8_16x8x32(acc, xa.x, xb.x, xa.y, xb.y, wv[u].x, wv[u].y);
        mma_s8_16x8x32(acc, xa.z, xb.z, xa.w, xb.w, wv[u].z, wv[u].w);
      }
    }
  }
#pragma unroll
  for (int e = 0; e < 4; ++e) c[e] += c1[e];
  // C fragment: c0, c1 -> row g, columns 2t, 2t + 1; c2, c3 -> row g + 8.
  __shared__ int32_t sacc[kTcWarps * kSmallBatchRows * kTcCols];  // [warp][r][col]
  int32_t* mine = sacc + warp * kSmallBatchRows * kTcCols;
  mine[g * kTcCols + 2 * t] = c[0];
  mine[g * kTcCols + 2 * t + 1] = c[1];
  mine[(g + 8) * kTcCols + 2 * t] = c[2];
  mine[(g + 8) * kTcCols + 2 * t + 1] = c[3];
  __syncthreads();
  gemv_epilogue<T, kSmallBatchRows, kTcCols>(sacc, x, CB, SCB, row_scale, outlier_idx,
                                             outlier_count, bias_dtype, bias, M, N, K, out);
}

// True when the current device runs mma.sync int8 (sm_80+) and LT8_GEMV_TC is not "0".
bool tensor_core_gemv() {
  static const bool allowed = [] {
    const char* v = std::getenv("LT8_GEMV_TC");
    return v == nullptr || v[0] != '0';
  }();
  if (!allowed) return false;
  int dev = 0, major = 0;
  if (cudaGetDevice(&dev) != cudaSuccess ||
      cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev) != cudaSuccess)
    return false;
  return major >= 8;
}

template <typename T, int ROWS>
void launch_gemv_rows(cudaStream_t st, unsigned blocks, int threads, const int8_t* q, const T* x,
                      const int8_t* CB, const float* SCB, const LinearScratch& s, DType bias_dtype,
                      const void* bias, int M, int64_t N, int64_t K, T* out) {
  linear_gemv_kernel<T, ROWS><<<blocks, threads, 0, st>>>(
      q, x, CB, SCB, s.row_scale, s.outlier_idx, s.outlier_count, bias_dtype, bias, M, N, K, out);
}

template <typename T>
Status launch_linear_gemv(cudaStream_t st, const int8_t* q, const T* x, const int8_t* CB,
                          const float* SCB, const LinearScratch& s, DType bias_dtype,
                          const void* bias, int64_t M, int64_t N, int64_t K, T* out) {
  const int m = static_cast<int>(M);
  // The tensor-core GEMV always computes 16 rows: measured on the H100 it wins over the dp4a
  // GEMV from M = 9 on (M=16: -2% at 8192^2, -13% at 16384x4096, -22% at 4096^2) and loses below.
  if (M > 8 && tensor_core_gemv()) {
    const unsigned tc_blocks = static_cast<unsigned>(ceil_div(N, int64_t{kTcWarps} * kTcCols));
    linear_gemv_tc_kernel<T><<<tc_blocks, kTcWarps * 32, 0, st>>>(
        q, x, CB, SCB, s.row_scale, s.outlier_idx, s.outlier_count, bias_dtype, bias, m, N, K, out);
    LT8_CHECK_LAUNCH("linear_gemv_tc_kernel");
    return Status::Ok();
  }
  // 8 warps per block when that still gives every SM of a large GPU a couple of blocks, else 4.
  const int64_t cols8 = 8 * kGemvCols;
  const int warps = ceil_div(N, cols8) >= 256 ? 8 : 4;
  const unsigned blocks = static_cast<unsigned>(ceil_div(N, int64_t{warps} * kGemvCols));
  const int threads = warps * 32;
  if (M == 1)
    launch_gemv_rows<T, 1>(st, blocks, threads, q, x, CB, SCB, s, bias_dtype, bias, m, N, K, out);
  else if (M <= 4)
    launch_gemv_rows<T, 4>(st, blocks, threads, q, x, CB, SCB, s, bias_dtype, bias, m, N, K, out);
  else if (M <= 8)
    launch_gemv_rows<T, 8>(st, blocks, threads, q, x, CB, SCB, s, bias_dtype, bias, m, N, K, out);
  else
    launch_gemv_rows<T, kSmallBatchRows>(st, blocks, threads, q, x, CB, SCB, s, bias_dtype, bias, m,
                                         N, K, out);
  LT8_CHECK_LAUNCH("linear_gemv_kernel");
  return Status::Ok();
}

// =============================================================================================
// 4c. Epilogue of the tensor-core path (cuBLASLt int8 GEMM into int32 scratch), per output
//     (m, n), in the CPU reference's order: dequant, outlier terms in ascending k, bias.
//     The first kStagedOutliers outlier columns of the dequantized weight and of x are gathered
//     once per call into Wo (count x N) and Xo (M x kStagedOutliers), read coalesced later;
//     further outlier columns (rare) are gathered from CB and x directly.
// =============================================================================================

constexpr int kEpiThreads = 256;  // one output column per thread
constexpr int kEpiRows = 32;      // rows per block
constexpr int kEpiChunk = 8;      // outlier columns per shared-memory stage

// One thread per (n, j): independent gathers instead of a chain of count dependent ones.
__global__ void __launch_bounds__(kThreads)
    stage_outlier_weights_kernel(const int8_t* __restrict__ CB, const float* __restrict__ SCB,
                                 const int32_t* __restrict__ outlier_idx,
                                 const int32_t* __restrict__ outlier_count, int64_t N, int64_t K,
                                 float* __restrict__ Wo) {
  const int64_t n = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int j = blockIdx.y;  // < kStagedOutliers
  if (n >= N || j >= *outlier_count) return;
  Wo[j * N + n] = weight_value(CB[n * K + outlier_idx[j]], SCB[n]);
}

// Xo[m, j] = x[m, idx[j]], one thread per (j, m) pair; rows of Xo are then read coalesced.
template <typename T>
__global__ void __launch_bounds__(kThreads)
    stage_outlier_activations_kernel(const T* __restrict__ x,
                                     const int32_t* __restrict__ outlier_idx,
                                     const int32_t* __restrict__ outlier_count, int64_t M,
                                     int64_t K, float* __restrict__ Xo) {
  const int count = min(*outlier_count, kStagedOutliers);
  const int64_t t = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t m = t / kStagedOutliers;
  const int j = static_cast<int>(t % kStagedOutliers);
  if (m >= M || j >= count) return;
  Xo[m * kStagedOutliers + j] = to_float(x[m * K + outlier_idx[j]]);
}

// v += sum_j x[j] * w[j] for j < len, in ascending j, as separate IEEE mul and add.
template <int CHUNK>
__device__ __forceinline__ void epi_row_terms(float& v, const float (&x)[CHUNK],
                                              const float (&w)[CHUNK], int len) {
  float xr[CHUNK];
#pragma unroll
  for (int j4 = 0; j4 < CHUNK; j4 += 4) {
    const float4 q4 = *reinterpret_cast<const float4*>(&x[j4]);
    xr[j4] = q4.x;
    xr[j4 + 1] = q4.y;
    xr[j4 + 2] = q4.z;
    xr[j4 + 3] = q4.w;
  }
#pragma unroll
  for (int j = 0; j < CHUNK; ++j)
    if (j < len) v = __fadd_rn(v, __fmul_rn(xr[j], w[j]));
}

template <typename T>
__global__ void __launch_bounds__(kEpiThreads)
    linear_epilogue_kernel(const int32_t* __restrict__ acc, const T* __restrict__ x,
                           const int8_t* __restrict__ CB, const float* __restrict__ SCB,
                           const float* __restrict__ row_scale,
                           const int32_t* __restrict__ outlier_idx,
                           const int32_t* __restrict__ outlier_count, const float* __restrict__ Wo,
                           const float* __restrict__ Xo, DType bias_dtype,
                           const void* __restrict__ bias, int64_t M, int64_t N, int64_t K,
                           T* __restrict__ out) {
  // All threads read the same sx element at a time (broadcast): rows of kEpiChunk floats, read
  // as float4.
  __shared__ __align__(16) float sx[kEpiRows][kEpiChunk];
  const int64_t n = static_cast<int64_t>(blockIdx.x) * kEpiThreads + threadIdx.x;
  const int64_t m0 = static_cast<int64_t>(blockIdx.y) * kEpiRows;
  const int rows = static_cast<int>(M - m0 < kEpiRows ? M - m0 : kEpiRows);
  const bool live = n < N;
  const float cs = live ? SCB[n] : 0.0f;
  float v[kEpiRows];
#pragma unroll
  for (int r = 0; r < kEpiRows; ++r)
    v[r] = (live && r < rows) ? dequant(acc[(m0 + r) * N + n], row_scale[m0 + r], cs) : 0.0f;

  const int count = *outlier_count;
  for (int j0 = 0; j0 < count; j0 += kEpiChunk) {
    const int len = count - j0 < kEpiChunk ? count - j0 : kEpiChunk;
    __syncthreads();
    for (int e = threadIdx.x; e < kEpiRows * kEpiChunk; e += kEpiThreads) {
      const int r = e / kEpiChunk, j = e % kEpiChunk, jj = j0 + j;
      float xv = 0.0f;
      if (r < rows && j < len)
        xv = jj < kStagedOutliers ? Xo[(m0 + r) * kStagedOutliers + jj]
                                  : to_float(x[(m0 + r) * K + outlier_idx[jj]]);
      sx[r][j] = xv;
    }
    __syncthreads();
    if (!live) continue;
    float w[kEpiChunk];
#pragma unroll
    for (int j = 0; j < kEpiChunk; ++j) {
      const int jj = j0 + j;
      w[j] = j >= len               ? 0.0f
             : jj < kStagedOutliers ? Wo[jj * N + n]
                                    : weight_value(CB[n * K + outlier_idx[jj]], cs);
    }
    // Padding terms are exact zeros (x = w = 0), but adding +0 would turn a -0 result into +0,
    // so partial chunks and tiles keep their guards; full ones (the common case) skip them.
    if (len == kEpiChunk && rows == kEpiRows) {
#pragma unroll
      for (int r = 0; r < kEpiRows; ++r) epi_row_terms<kEpiChunk>(v[r], sx[r], w, kEpiChunk);
    } else {
#pragma unroll
      for (int r = 0; r < kEpiRows; ++r)
        if (r < rows) epi_row_terms<kEpiChunk>(v[r], sx[r], w, len);
    }
  }
  if (!live) return;
  const float b = bias != nullptr ? load_float_any(bias_dtype, bias, n) : 0.0f;
#pragma unroll
  for (int r = 0; r < kEpiRows; ++r)
    if (r < rows)
      out[(m0 + r) * N + n] = from_float<T>(bias != nullptr ? __fadd_rn(v[r], b) : v[r]);
}

// The tensor-core path: cuBLASLt GEMM, then the epilogue. Returns false (nothing enqueued) when
// cuBLASLt cannot take the problem; *err reports a failure after which the caller must stop.
template <typename T>
bool launch_linear_tensor_core(cudaStream_t st, const T* x, const int8_t* CB, const float* SCB,
                               const LinearScratch& s, float threshold, DType bias_dtype,
                               const void* bias, int64_t M, int64_t N, int64_t K, T* out,
                               Status* err) {
  if (s.acc == nullptr || ceil_div(M, int64_t{kEpiRows}) > 65535) return false;
  if (!cublaslt_int8_gemm(st, s.q, CB, M, N, K, s.acc, s.gemm_ws, s.gemm_ws_bytes, err))
    return false;
  if (threshold > 0.0f) {
    const dim3 grid(static_cast<unsigned>(ceil_div(N, int64_t{kThreads})), kStagedOutliers);
    stage_outlier_weights_kernel<<<grid, kThreads, 0, st>>>(CB, SCB, s.outlier_idx, s.outlier_count,
                                                            N, K, s.outlier_w);
    const int64_t pairs = M * kStagedOutliers;
    stage_outlier_activations_kernel<T>
        <<<static_cast<unsigned>(ceil_div(pairs, int64_t{kThreads})), kThreads, 0, st>>>(
            x, s.outlier_idx, s.outlier_count, M, K, s.outlier_x);
    if (cudaError_t e = cudaGetLastError(); e != cudaSuccess) {
      *err = cuda_error(e, "stage_outlier_kernels");
      return false;
    }
  }
  const dim3 grid(static_cast<unsigned>(ceil_div(N, int64_t{kEpiThreads})),
                  static_cast<unsigned>(ceil_div(M, int64_t{kEpiRows})));
  linear_epilogue_kernel<T>
      <<<grid, kEpiThreads, 0, st>>>(s.acc, x, CB, SCB, s.row_scale, s.outlier_idx, s.outlier_count,
                                     s.outlier_w, s.outlier_x, bias_dtype, bias, M, N, K, out);
  if (cudaError_t e = cudaGetLastError(); e != cudaSuccess) {
    *err = cuda_error(e, "linear_epilogue_kernel");
    return false;
  }
  return true;
}

// Launches the tiled GEMM with the widest global load the shapes and pointers allow.
template <typename Epi>
Status launch_gemm(cudaStream_t st, const int8_t* A, const int8_t* B, int64_t M, int64_t N,
                   int64_t K, const Epi& epi, const char* name) {
  const int64_t tiles_m = ceil_div(M, kBM), tiles_n = ceil_div(N, kBN);
  if (tiles_m * tiles_n > kMaxGridX)
    return Status::Invalid(std::string(name) + ": output too large for one launch");
  const unsigned blocks = static_cast<unsigned>(tiles_m * tiles_n);
  if (K % 16 == 0 && is_aligned(A, 16) && is_aligned(B, 16)) {
    int8_gemm_kernel<16, Epi>
        <<<blocks, kGemmThreads, 0, st>>>(A, B, M, N, K, tiles_m, tiles_n, epi);
  } else if (K % 4 == 0 && is_aligned(A, 4) && is_aligned(B, 4)) {
    int8_gemm_kernel<4, Epi><<<blocks, kGemmThreads, 0, st>>>(A, B, M, N, K, tiles_m, tiles_n, epi);
  } else {
    int8_gemm_kernel<1, Epi><<<blocks, kGemmThreads, 0, st>>>(A, B, M, N, K, tiles_m, tiles_n, epi);
  }
  LT8_CHECK_LAUNCH(name);
  return Status::Ok();
}

// =============================================================================================
// 5. Input gradient: grad_x (M, K) = sum_n (g[m, n] * (SCB[n] / 127)) * CB[n, k], fp32.
//    Block tile 128 (m) x 128 (k), N step 16, 256 threads each owning 8 x 8 outputs (same
//    mapping as the int8 GEMM). Gs[n][m] holds the scaled gradient, Ws[n][k] the int8 weight
//    as float; both double buffered with register prefetch. The sum runs over n in ascending
//    order, like the CPU reference. The dequantized weight never reaches global memory.
// =============================================================================================

constexpr int kGBM = 128;  // rows of grad_out / grad_x per tile
constexpr int kGBK = 128;  // columns of grad_x (K) per tile
constexpr int kGBN = 16;   // reduction step over N
constexpr int kGStride = kGBM + 4;

template <typename T>
__global__ void __launch_bounds__(kGemmThreads, 2)
    grad_input_kernel(const T* __restrict__ g, const int8_t* __restrict__ CB,
                      const float* __restrict__ SCB, int64_t M, int64_t N, int64_t K,
                      int64_t tiles_m, int64_t tiles_k, bool vec, T* __restrict__ grad_x) {
  __shared__ __align__(16) float Gs[2][kGBN][kGStride];
  __shared__ __align__(16) float Ws[2][kGBN][kGBK];

  const int tid = threadIdx.x;
  const int ty = tid / 16, tx = tid % 16;
  // Gradient loads: column gn of the N step, rows gr + 16 * i.
  const int gn = tid % kGBN, gr = tid / kGBN;
  // Weight loads: column wk of the K tile, N rows wn + 2 * i.
  const int wk = tid % kGBK, wn = tid / kGBK;
  const int64_t num_n = (N + kGBN - 1) / kGBN;
  const int64_t g_row_step = 16 * N;  // between a thread's gradient rows
  const int64_t w_row_step = 2 * K;   // between a thread's weight rows

  {  // one output tile per block (the host guarantees tiles <= max gridDim.x)
    int64_t tm, tk;
    tile_coords(blockIdx.x, tiles_m, tiles_k, &tm, &tk);
    const int64_t m0 = tm * kGBM, k0 = tk * kGBK;

    float acc[8][8];
#pragma unroll
    for (int i = 0; i < 8; ++i)
#pragma unroll
      for (int j = 0; j < 8; ++j) acc[i][j] = 0.0f;

    if (num_n > 0) {
      // Gradient row i of this thread is valid when 16 * i < g_rows; weight column when k_ok.
      const int64_t g_rows64 = M - m0 - gr;
      const int g_rows = g_rows64 > kGBM ? kGBM : static_cast<int>(g_rows64);
      const bool k_ok = k0 + wk < K;
      const T* gp = g + (g_rows > 0 ? (m0 + gr) * N + gn : 0);
      const int8_t* wp = CB + (k_ok ? wn * K + k0 + wk : 0);
      float rg[8];
      uint32_t rw[2];  // 8 int8 weights, packed

      // Loads N step nb (gp / wp point at it) into rg / rw.
      auto load = [&](int64_t nb) {
        const bool n_ok = nb + gn < N;
        const float s = n_ok ? SCB[nb + gn] * kInv127 : 0.0f;
#pragma unroll
        for (int i = 0; i < 8; ++i)
          rg[i] = (n_ok && 16 * i < g_rows) ? __fmul_rn(to_float(gp[i * g_row_step]), s) : 0.0f;
        rw[0] = rw[1] = 0;
#pragma unroll
        for (int i = 0; i < 8; ++i)
          if (k_ok && nb + wn + 2 * i < N)
            rw[i / 4] |= static_cast<uint32_t>(static_cast<uint8_t>(wp[i * w_row_step]))
                         << (8 * (i % 4));
      };
      auto store = [&](int buf) {
#pragma unroll
        for (int i = 0; i < 8; ++i) {
          Gs[buf][gn][gr + 16 * i] = rg[i];
          Ws[buf][wn + 2 * i][wk] = static_cast<float>(byte_of(rw[i / 4], i % 4));
        }
      };

      load(0);
      store(0);
      __syncthreads();
      for (int64_t nt = 0; nt < num_n; ++nt) {
        const int buf = static_cast<int>(nt & 1);
        const bool has_next = nt + 1 < num_n;
        if (has_next) {
          gp += kGBN;
          wp += kGBN * K;
          load((nt + 1) * kGBN);
        }
#pragma unroll
        for (int nn = 0; nn < kGBN; ++nn) {
          const float4 ga = *reinterpret_cast<const float4*>(&Gs[buf][nn][ty * 4]);
          const float4 gb = *reinterpret_cast<const float4*>(&Gs[buf][nn][64 + ty * 4]);
          const float4 wa = *reinterpret_cast<const float4*>(&Ws[buf][nn][tx * 4]);
          const float4 wb = *reinterpret_cast<const float4*>(&Ws[buf][nn][64 + tx * 4]);
          const float gv[8] = {ga.x, ga.y, ga.z, ga.w, gb.x, gb.y, gb.z, gb.w};
          const float wv[8] = {wa.x, wa.y, wa.z, wa.w, wb.x, wb.y, wb.z, wb.w};
#pragma unroll
          for (int i = 0; i < 8; ++i)
#pragma unroll
            for (int j = 0; j < 8; ++j) acc[i][j] = mul_add(acc[i][j], gv[i], wv[j]);
        }
        if (has_next) store(buf ^ 1);
        __syncthreads();
      }
    }

#pragma unroll
    for (int i = 0; i < 8; ++i) {
      const int64_t m = m0 + tile_row(i, ty);
      if (m >= M) continue;
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const int64_t k = k0 + h * 64 + tx * 4;
        if (k >= K) continue;
        T* p = grad_x + m * K + k;
        const float f[4] = {acc[i][4 * h], acc[i][4 * h + 1], acc[i][4 * h + 2], acc[i][4 * h + 3]};
        if (vec) {
          store4(p, f);
        } else {
#pragma unroll
          for (int e = 0; e < 4; ++e)
            if (k + e < K) p[e] = from_float<T>(f[e]);
        }
      }
    }
  }
}

}  // namespace

// =============================================================================================
// Entry points (arguments were validated by dispatch.cc).
// =============================================================================================

Status quantize_rows(const Exec& ex, DType x_dtype, const void* x, int64_t M, int64_t K,
                     float threshold, int8_t* q, float* row_scale, uint8_t* outlier_mask) {
  return dispatch_float(x_dtype, [&](auto tag) -> Status {
    using T = decltype(tag);
    if (M == 0 && K == 0) return Status::Ok();
    DeviceGuard guard(ex);
    if (!guard.ok()) return guard.status();
    return launch_quantize<T>(stream_of(ex), static_cast<const T*>(x), M, K, threshold, q,
                              row_scale, outlier_mask);
  });
}

Status dequantize_rows(const Exec& ex, const int8_t* q, const float* row_scale, int64_t M,
                       int64_t K, DType out_dtype, void* out) {
  return dispatch_float(out_dtype, [&](auto tag) -> Status {
    using T = decltype(tag);
    if (M == 0 || K == 0) return Status::Ok();
    DeviceGuard guard(ex);
    if (!guard.ok()) return guard.status();
    cudaStream_t st = stream_of(ex);
    T* o = static_cast<T*>(out);
    const bool vec = K % 4 == 0 && is_aligned(q, 4) && is_aligned(o, 4 * sizeof(T));
    if (vec) {
      dequantize_rows_kernel<T, true>
          <<<elementwise_blocks(M * K / 4), kThreads, 0, st>>>(q, row_scale, M, K, o);
    } else {
      dequantize_rows_kernel<T, false>
          <<<elementwise_blocks(M * K), kThreads, 0, st>>>(q, row_scale, M, K, o);
    }
    LT8_CHECK_LAUNCH("dequantize_rows_kernel");
    return Status::Ok();
  });
}

Status int8_gemm(const Exec& ex, const int8_t* A, const int8_t* B, int64_t M, int64_t N, int64_t K,
                 int32_t* C) {
  if (M == 0 || N == 0) return Status::Ok();
  DeviceGuard guard(ex);
  if (!guard.ok()) return guard.status();
  cudaStream_t st = stream_of(ex);
  if (K == 0) {
    const size_t bytes = static_cast<size_t>(M) * static_cast<size_t>(N) * sizeof(int32_t);
    LT8_CUDA_RETURN_IF_ERROR(cudaMemsetAsync(C, 0, bytes, st), "cudaMemsetAsync(C)");
    return Status::Ok();
  }
  Status err;
  if (cublaslt_int8_gemm(st, A, B, M, N, K, C, nullptr, 0, &err)) return Status::Ok();
  if (!err.ok()) return err;
  StoreI32Epilogue epi{C, M, N, N % 4 == 0 && is_aligned(C, 16)};
  return launch_gemm(st, A, B, M, N, K, epi, "int8_gemm_kernel");
}

Status dequant_epilogue(const Exec& ex, const int32_t* C, const float* row_scale,
                        const float* col_scale, DType bias_dtype, const void* bias, int64_t M,
                        int64_t N, DType out_dtype, void* out) {
  return dispatch_float(out_dtype, [&](auto tag) -> Status {
    using T = decltype(tag);
    if (M == 0 || N == 0) return Status::Ok();
    DeviceGuard guard(ex);
    if (!guard.ok()) return guard.status();
    cudaStream_t st = stream_of(ex);
    T* o = static_cast<T*>(out);
    const bool vec = N % 4 == 0 && is_aligned(C, 16) && is_aligned(o, 4 * sizeof(T));
    if (vec) {
      dequant_epilogue_kernel<T, true><<<elementwise_blocks(M * N / 4), kThreads, 0, st>>>(
          C, row_scale, col_scale, bias_dtype, bias, M, N, o);
    } else {
      dequant_epilogue_kernel<T, false><<<elementwise_blocks(M * N), kThreads, 0, st>>>(
          C, row_scale, col_scale, bias_dtype, bias, M, N, o);
    }
    LT8_CHECK_LAUNCH("dequant_epilogue_kernel");
    return Status::Ok();
  });
}

Status int8_linear(const Exec& ex, DType x_dtype, const void* x, const int8_t* CB, const float* SCB,
                   DType bias_dtype, const void* bias, int64_t M, int64_t N, int64_t K,
                   float threshold, void* out, const LinearScratch& s) {
  return dispatch_float(x_dtype, [&](auto tag) -> Status {
    using T = decltype(tag);
    // The scratch is internal: with no output there is nothing observable to compute.
    if (M == 0 || N == 0) return Status::Ok();
    DeviceGuard guard(ex);
    if (!guard.ok()) return guard.status();
    cudaStream_t st = stream_of(ex);
    const T* xt = static_cast<const T*>(x);
    T* o = static_cast<T*>(out);

    if (K == 0) {  // empty reduction: out = 0 (+ bias); CB / SCB / x may be null
      bias_fill_kernel<T>
          <<<elementwise_blocks(M * N), kThreads, 0, st>>>(bias_dtype, bias, M, N, o);
      LT8_CHECK_LAUNCH("bias_fill_kernel");
      return Status::Ok();
    }

    // Decode sizes: one preparation launch, then the memory-bound GEMV that reads each weight
    // byte once: two launches in all.
    const bool gemv =
        M <= small_batch_rows() && K % 16 == 0 && is_aligned(CB, 16) && is_aligned(s.q, 16);
    if (gemv && K <= kPrepMaxK && is_aligned(xt, 4 * sizeof(T))) {
      prepare_small_batch_kernel<T><<<static_cast<unsigned>(M), kPrepThreads, K, st>>>(
          xt, static_cast<int>(M), K, threshold, s.outlier_idx, s.outlier_count, s.q, s.row_scale);
      LT8_CHECK_LAUNCH("prepare_small_batch_kernel");
      return launch_linear_gemv<T>(st, s.q, xt, CB, SCB, s, bias_dtype, bias, M, N, K, o);
    }

    // (1) quantize x into the scratch.
    Status qs = launch_quantize<T>(st, xt, M, K, threshold, s.q, s.row_scale, s.mask);
    if (!qs.ok()) return qs;

    // (2) compact the outlier columns (count stays on the device).
    if (threshold > 0.0f) {
      compact_outliers_kernel<<<1, kCompactThreads, 0, st>>>(s.mask, K, s.outlier_idx,
                                                             s.outlier_count);
      LT8_CHECK_LAUNCH("compact_outliers_kernel");
    } else {
      LT8_CUDA_RETURN_IF_ERROR(cudaMemsetAsync(s.outlier_count, 0, sizeof(int32_t), st),
                               "cudaMemsetAsync(outlier_count)");
    }

    // (3a) decode sizes: a memory-bound GEMV that reads each weight byte once.
    if (gemv) return launch_linear_gemv<T>(st, s.q, xt, CB, SCB, s, bias_dtype, bias, M, N, K, o);

    // (3b) larger batches: int8 tensor cores (cuBLASLt) into int32 scratch, then the epilogue.
    Status err;
    if (launch_linear_tensor_core<T>(st, xt, CB, SCB, s, threshold, bias_dtype, bias, M, N, K, o,
                                     &err))
      return Status::Ok();
    if (!err.ok()) return err;

    // (3c) fallback: lt8's dp4a GEMM with the fused dequant + outlier + bias epilogue.
    LinearEpilogue<T> epi{xt,
                          CB,
                          SCB,
                          s.row_scale,
                          s.outlier_idx,
                          s.outlier_count,
                          bias_dtype,
                          bias,
                          o,
                          M,
                          N,
                          K,
                          N % 4 == 0 && is_aligned(o, 4 * sizeof(T))};
    return launch_gemm(st, s.q, CB, M, N, K, epi, "int8_gemm_kernel<LinearEpilogue>");
  });
}

Status int8_linear_grad_input(const Exec& ex, DType g_dtype, const void* grad_out, const int8_t* CB,
                              const float* SCB, int64_t M, int64_t N, int64_t K, void* grad_x) {
  return dispatch_float(g_dtype, [&](auto tag) -> Status {
    using T = decltype(tag);
    if (M == 0 || K == 0) return Status::Ok();
    DeviceGuard guard(ex);
    if (!guard.ok()) return guard.status();
    cudaStream_t st = stream_of(ex);
    T* gx = static_cast<T*>(grad_x);
    if (N == 0) {  // empty sum: +0.0 in every float dtype is all-zero bits
      const size_t bytes = static_cast<size_t>(M) * static_cast<size_t>(K) * sizeof(T);
      LT8_CUDA_RETURN_IF_ERROR(cudaMemsetAsync(gx, 0, bytes, st), "cudaMemsetAsync(grad_x)");
      return Status::Ok();
    }
    const int64_t tiles_m = ceil_div(M, kGBM), tiles_k = ceil_div(K, kGBK);
    if (tiles_m * tiles_k > kMaxGridX)
      return Status::Invalid("int8_linear_grad_input: grad_x too large for one launch");
    const unsigned blocks = static_cast<unsigned>(tiles_m * tiles_k);
    const bool vec = K % 4 == 0 && is_aligned(gx, 4 * sizeof(T));
    grad_input_kernel<T><<<blocks, kGemmThreads, 0, st>>>(static_cast<const T*>(grad_out), CB, SCB,
                                                          M, N, K, tiles_m, tiles_k, vec, gx);
    LT8_CHECK_LAUNCH("grad_input_kernel");
    return Status::Ok();
  });
}

}  // namespace gpu
}  // namespace lt8
