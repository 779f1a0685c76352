// CUDA row quantization (outlier mask, absmax, int8 rounding), outlier column compaction and
// row dequantization: gpu::quantize_rows, gpu::dequantize_rows, and the quantization stage of the
// fused linear op. Same contracts and arithmetic (common/numerics.h) as quantize_cpu.cc.
//
// Rules followed by every CUDA source here: every launch goes on ex.stream, no host
// synchronisation, no allocation (graph-capture safe), sizes may be 0, tails of any length are
// handled, products that can exceed 2^31 are computed in int64, and M never lands in
// gridDim.y/z unguarded.
#include "quantize/quantize.cuh"

#include <algorithm>
#include <cstdint>

#include "common/cuda_check.cuh"
#include "common/device_types.cuh"
#include "common/launch_shape.cuh"
#include "common/numerics.h"
#include "quantize/outlier_compaction.cuh"

namespace lt8 {
namespace gpu {
namespace {

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

// NaN-winning absmax over the whole block (THREADS threads): warp shuffles, then the warps'
// partials through shared memory (warp_amax, THREADS / 32 floats, reusable on return).
template <int THREADS = kThreads>
__device__ __forceinline__ float block_absmax(float amax, float* warp_amax) {
#pragma unroll
  for (int off = 16; off > 0; off >>= 1)
    amax = absmax_combine(amax, __shfl_xor_sync(0xffffffffu, amax, off));
  if (threadIdx.x % 32 == 0) warp_amax[threadIdx.x / 32] = amax;
  __syncthreads();
  amax = warp_amax[0];
#pragma unroll
  for (int w = 1; w < THREADS / 32; ++w) amax = absmax_combine(amax, warp_amax[w]);
  __syncthreads();  // warp_amax is reused by the next row
  return amax;
}

// The same mask for 16-bit x with K % 8 == 0 and x 16-byte aligned: each thread tests 8 adjacent
// columns with one 16-byte load per row (the scalar kernel's 2-byte loads left it at a quarter of
// the memory bandwidth), blockIdx.y (grid-stride) = chunk of kMaskVecRows rows, whose loads are
// all issued before any test (5-10% faster at K = 4096 than testing row by row; at ~2.9 TB/s it
// is close to bound by memory either way: benchmarks/NOTES.md v11).
constexpr int kMaskVecRows = 8;
template <typename T>
__global__ void __launch_bounds__(kThreads)
    outlier_mask_vec_kernel(const T* __restrict__ x, int64_t M, int64_t K, float threshold,
                            uint8_t* __restrict__ mask) {
  const int64_t k0 = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) * 8;
  if (k0 >= K) return;
  const int64_t chunks = (M + kMaskVecRows - 1) / kMaskVecRows;
  unsigned hit = 0;  // bit e: column k0 + e
  for (int64_t c = blockIdx.y; c < chunks && hit != 0xffu; c += gridDim.y) {
    const int64_t m0 = c * kMaskVecRows;
    uint4 raw[kMaskVecRows];
#pragma unroll
    for (int r = 0; r < kMaskVecRows; ++r)  // zeros past M: no outliers
      raw[r] = m0 + r < M ? *reinterpret_cast<const uint4*>(x + (m0 + r) * K + k0)
                          : make_uint4(0, 0, 0, 0);
#pragma unroll
    for (int r = 0; r < kMaskVecRows; ++r) {
      const uint32_t w[4] = {raw[r].x, raw[r].y, raw[r].z, raw[r].w};
#pragma unroll
      for (int e = 0; e < 8; ++e) {
        const unsigned short bits = static_cast<unsigned short>(w[e / 2] >> (16 * (e % 2)));
        hit |= is_outlier(to_float(from_bits16<T>(bits)), threshold) ? 1u << e : 0u;
      }
    }
  }
#pragma unroll
  for (int e = 0; e < 8; ++e)
    if (hit & (1u << e)) mask[k0 + e] = 1;
}

// The fused op's all-outlier shortcut: when skip_count is given and every one of the K columns
// is an outlier column, the quantized row would be all zeros with absmax 0 over no column; the
// caller's int8 GEMM then stands aside and never reads q (takes_int8_gemm_sm90
// in linear/cublaslt_linear.cuh), so only the scales are written and x is not read. The grid
// has at least M threads.
__device__ __forceinline__ bool all_columns_outliers(const int32_t* skip_count, int64_t M,
                                                     int64_t K, float* __restrict__ row_scale) {
  if (skip_count == nullptr || *skip_count != K) return false;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t m = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; m < M; m += stride)
    row_scale[m] = 0.0f;
  return true;
}

// Row quantization for 16-bit x with K % 8 == 0, x 16-byte aligned and K <= THREADS * 8 *
// CHUNKS: a block per row (grid-stride), each thread keeps its CHUNKS 8-element pieces of the
// row in registers between the absmax and the rounding, so x is read from memory once, with
// CHUNKS independent 16-byte loads in flight per thread. Same values as quantize_rows_kernel
// (the absmax is a max: its order does not matter).
template <typename T, int THREADS, int CHUNKS>
__global__ void __launch_bounds__(THREADS)
    quantize_rows_reg_kernel(const T* __restrict__ x, int64_t M, int64_t K,
                             const uint8_t* __restrict__ mask,
                             const int32_t* __restrict__ skip_count, int8_t* __restrict__ q,
                             float* __restrict__ row_scale) {
  __shared__ float warp_amax[THREADS / 32];
  if (all_columns_outliers(skip_count, M, K, row_scale)) return;
  for (int64_t m = blockIdx.x; m < M; m += gridDim.x) {
    const T* row = x + m * K;
    uint4 raw[CHUNKS];
    uint2 mk[CHUNKS];
#pragma unroll
    for (int c = 0; c < CHUNKS; ++c) {
      const int64_t k = (static_cast<int64_t>(c) * THREADS + threadIdx.x) * 8;
      raw[c] = k < K ? *reinterpret_cast<const uint4*>(row + k) : make_uint4(0, 0, 0, 0);
      mk[c] = k < K ? *reinterpret_cast<const uint2*>(mask + k) : make_uint2(~0u, ~0u);
    }
    float amax = 0.0f;
#pragma unroll
    for (int c = 0; c < CHUNKS; ++c) {
      const uint32_t w[4] = {raw[c].x, raw[c].y, raw[c].z, raw[c].w};
#pragma unroll
      for (int e = 0; e < 8; ++e) {
        const uint32_t mword = e < 4 ? mk[c].x : mk[c].y;
        if (!((mword >> (8 * (e % 4))) & 0xffu)) {
          const unsigned short bits = static_cast<unsigned short>(w[e / 2] >> (16 * (e % 2)));
          amax = absmax_step(amax, to_float(from_bits16<T>(bits)));
        }
      }
    }
    amax = block_absmax<THREADS>(amax, warp_amax);
    if (threadIdx.x == 0) row_scale[m] = amax;
#pragma unroll
    for (int c = 0; c < CHUNKS; ++c) {
      const int64_t k = (static_cast<int64_t>(c) * THREADS + threadIdx.x) * 8;
      if (k >= K) continue;
      const uint32_t w[4] = {raw[c].x, raw[c].y, raw[c].z, raw[c].w};
      uint32_t packed[2] = {0, 0};
#pragma unroll
      for (int e = 0; e < 8; ++e) {
        const uint32_t mword = e < 4 ? mk[c].x : mk[c].y;
        const unsigned short bits = static_cast<unsigned short>(w[e / 2] >> (16 * (e % 2)));
        const int8_t qe = ((mword >> (8 * (e % 4))) & 0xffu)
                              ? int8_t{0}
                              : quantize_value(to_float(from_bits16<T>(bits)), amax);
        packed[e / 4] |= static_cast<uint32_t>(static_cast<uint8_t>(qe)) << (8 * (e % 4));
      }
      *reinterpret_cast<uint2*>(q + m * K + k) = make_uint2(packed[0], packed[1]);
    }
  }
}

// One group of TPR threads per row (TPR = 32: a warp per row, TPR = 256: a block per row),
// grid-stride over rows. VEC: K % 4 == 0 and x / q / mask aligned for 4-element accesses.
template <typename T, int TPR, bool VEC>
__global__ void __launch_bounds__(kThreads)
    quantize_rows_kernel(const T* __restrict__ x, int64_t M, int64_t K,
                         const uint8_t* __restrict__ mask, const int32_t* __restrict__ skip_count,
                         int8_t* __restrict__ q, float* __restrict__ row_scale) {
  static_assert(TPR == 32 || TPR == kThreads, "TPR must be a warp or the block");
  if (all_columns_outliers(skip_count, M, K, row_scale)) return;
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
    if constexpr (TPR == kThreads) {
      amax = block_absmax(amax, warp_amax);
    } else {
#pragma unroll
      for (int off = 16; off > 0; off >>= 1)
        amax = absmax_combine(amax, __shfl_xor_sync(0xffffffffu, amax, off));
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

// Outlier column compaction: idx[0 .. count) = the ascending k with mask[k] != 0, in one block
// (compact_step, outlier_compaction.cuh), kCompactPerThread columns per thread and step.
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

// out = q * row_scale / 127, elementwise, grid-stride; VEC: 4 elements per step (K % 4 == 0 and
// q, out aligned).
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

}  // namespace

template <typename T>
Status launch_outlier_mask(cudaStream_t st, const T* x, int64_t M, int64_t K, float threshold,
                           uint8_t* mask) {
  if (K == 0) return Status::Ok();
  LT8_CUDA_RETURN_IF_ERROR(cudaMemsetAsync(mask, 0, static_cast<size_t>(K), st),
                           "cudaMemsetAsync(outlier_mask)");
  if constexpr (sizeof(T) == 2) {
    if (threshold > 0.0f && M > 0 && K % 8 == 0 && is_aligned(x, 16)) {
      const int64_t chunks = ceil_div(M, int64_t{kMaskVecRows});
      dim3 grid(static_cast<unsigned>(ceil_div(K / 8, kThreads)),
                static_cast<unsigned>(std::min(chunks, kMaxGridYZ)));
      outlier_mask_vec_kernel<T><<<grid, kThreads, 0, st>>>(x, M, K, threshold, mask);
      LT8_CHECK_LAUNCH("outlier_mask_vec_kernel");
      return Status::Ok();
    }
  }
  if (threshold > 0.0f && M > 0) {
    const int64_t chunks = ceil_div(M, kMaskRowsPerChunk);
    dim3 grid(static_cast<unsigned>(ceil_div(K, kThreads)),
              static_cast<unsigned>(std::min(chunks, kMaxGridYZ)));
    outlier_mask_kernel<T><<<grid, kThreads, 0, st>>>(x, M, K, threshold, mask);
    LT8_CHECK_LAUNCH("outlier_mask_kernel");
  }
  return Status::Ok();
}

template <typename T>
Status launch_quantize_rows(cudaStream_t st, const T* x, int64_t M, int64_t K, const uint8_t* mask,
                            const int32_t* skip_count, int8_t* q, float* row_scale) {
  if (M == 0) return Status::Ok();
  // 16-bit rows of 1K-16K elements: the one-read register kernel.
  if constexpr (sizeof(T) == 2) {
    if (K % 8 == 0 && is_aligned(x, 16) && is_aligned(q, 8) && is_aligned(mask, 8) && K > 1024 &&
        K <= int64_t{kThreads} * 8 * 8) {
      const unsigned blocks = static_cast<unsigned>(std::min(M, int64_t{1} << 24));
      // Up to 4096 columns: 128 threads with 4 pieces each (more loads in flight per thread
      // and a cheaper block reduction than 256 x 2: NOTES v11).
      if (K <= 128 * 8 * 4)
        quantize_rows_reg_kernel<T, 128, 4>
            <<<blocks, 128, 0, st>>>(x, M, K, mask, skip_count, q, row_scale);
      else
        quantize_rows_reg_kernel<T, kThreads, 8>
            <<<blocks, kThreads, 0, st>>>(x, M, K, mask, skip_count, q, row_scale);
      LT8_CHECK_LAUNCH("quantize_rows_reg_kernel");
      return Status::Ok();
    }
  }
  const bool vec =
      K % 4 == 0 && is_aligned(x, 4 * sizeof(T)) && is_aligned(q, 4) && is_aligned(mask, 4);
  const bool warp_per_row = K <= 1024;
  const int64_t rows_per_block = warp_per_row ? kThreads / 32 : 1;
  const unsigned blocks =
      static_cast<unsigned>(std::min(ceil_div(M, rows_per_block), int64_t{1} << 24));
  if (warp_per_row) {
    if (vec)
      quantize_rows_kernel<T, 32, true>
          <<<blocks, kThreads, 0, st>>>(x, M, K, mask, skip_count, q, row_scale);
    else
      quantize_rows_kernel<T, 32, false>
          <<<blocks, kThreads, 0, st>>>(x, M, K, mask, skip_count, q, row_scale);
  } else {
    if (vec)
      quantize_rows_kernel<T, kThreads, true>
          <<<blocks, kThreads, 0, st>>>(x, M, K, mask, skip_count, q, row_scale);
    else
      quantize_rows_kernel<T, kThreads, false>
          <<<blocks, kThreads, 0, st>>>(x, M, K, mask, skip_count, q, row_scale);
  }
  LT8_CHECK_LAUNCH("quantize_rows_kernel");
  return Status::Ok();
}

#define LT8_INSTANTIATE(T)                                                                \
  template Status launch_outlier_mask<T>(cudaStream_t, const T*, int64_t, int64_t, float, \
                                         uint8_t*);                                       \
  template Status launch_quantize_rows<T>(cudaStream_t, const T*, int64_t, int64_t,       \
                                          const uint8_t*, const int32_t*, int8_t*, float*);
LT8_FOR_EACH_FLOAT_TYPE(LT8_INSTANTIATE)
#undef LT8_INSTANTIATE

Status launch_compact_outliers(cudaStream_t st, const uint8_t* mask, int64_t K, int32_t* idx,
                               int32_t* count) {
  compact_outliers_kernel<<<1, kCompactThreads, 0, st>>>(mask, K, idx, count);
  LT8_CHECK_LAUNCH("compact_outliers_kernel");
  return Status::Ok();
}

// ---------------------------------------------------------------------------------------------
// Entry points (arguments were validated by dispatch.cc).

Status quantize_rows(const Exec& ex, DType x_dtype, const void* x, int64_t M, int64_t K,
                     float threshold, int8_t* q, float* row_scale, uint8_t* outlier_mask) {
  return dispatch_float(x_dtype, [&](auto tag) -> Status {
    using T = decltype(tag);
    if (M == 0 && K == 0) return Status::Ok();
    DeviceGuard guard(ex);
    if (!guard.ok()) return guard.status();
    const T* xt = static_cast<const T*>(x);
    Status ms = launch_outlier_mask<T>(stream_of(ex), xt, M, K, threshold, outlier_mask);
    if (!ms.ok()) return ms;
    return launch_quantize_rows<T>(stream_of(ex), xt, M, K, outlier_mask, nullptr, q, row_scale);
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

}  // namespace gpu
}  // namespace lt8
