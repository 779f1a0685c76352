// Outlier columns on tensor cores (fp16/bf16 activations, sm_80+), for the fused linear op's
// large-batch path (cuBLASLt int8 GEMM into int32 scratch, then an epilogue).
//
// When a call has more than kStagedOutliers outlier columns, the exact CUDA-core epilogue
// (one sequential float32 sum per output, bit-identical to the CPU) would turn into a float GEMM
// on CUDA cores: with every column of a 14336-wide input flagged (Llama's down_proj over a long
// prompt) that was 95% of a prefill. Here instead:
//   1. the outlier columns of x and of CB are gathered into two dense, zero-padded tiles
//      Xg (M, Kcap) and Wg (N, Kcap) of x's dtype (int8 weights are exact in fp16 and bf16);
//   2. a tensor-core GEMM sums Xg @ Wg^T with float32 accumulators over ceil(count / 32) k-tiles,
//      count read on the device (no host sync, fixed grid: graph capture and XLA keep working);
//   3. its epilogue adds dequant(acc) + outlier_sum * SCB / 127 + bias and writes out.
// Both kernels read the count first and return at once when it is <= kStagedOutliers: then the
// exact epilogue runs instead (it returns at once in the opposite case). So the numerics are the
// CPU's bit for bit up to kStagedOutliers outlier columns, and above that the outlier terms are
// summed on tensor cores: float32 accumulation in the hardware's order (docs/NUMERICS.md)..
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <mma.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <type_traits>

#include "linear/outlier_tc.cuh"

#include "linear/outlier_gemm_sm90.h"

#include "common/cuda_check.cuh"
#include "common/device_caps.cuh"
#include "common/device_types.cuh"
#include "common/launch_shape.cuh"
#include "common/numerics.h"

namespace lt8 {
namespace gpu {
namespace {

constexpr int kBM = 128, kBN = 128;
constexpr int kBK = kOutlierGatherTile;  // gathered rows are padded to it
constexpr int kStages = 3;               // cp.async stages in flight
constexpr int kTcThreads = 256;  // 8 warps: 4 along M (32 rows each) x 2 along N (64 columns each)
constexpr int kGatherThreads = 256;

// The tensor-core kernel below only exists for sm_80+ (cp.async, bf16 wmma); older archs compile
// an empty body and the host never launches it there.
#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 800
__device__ __forceinline__ void cp_async16(void* smem, const void* gmem, bool pred) {
  const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(smem));
  const int bytes = pred ? 16 : 0;  // 0: zero-fill the 16 bytes, read nothing
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(s), "l"(gmem), "r"(bytes));
}
__device__ __forceinline__ void cp_async_commit() {
  asm volatile("cp.async.commit_group;\n" ::);
}
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}
#endif

// Xg[m, j] = x[m, idx[j]], Wg[n, j] = CB[n, idx[j]] for j < count, zeros up to the next multiple
// of kBK. One warp per matrix row (grid-stride over the M + N rows, so the grid is fixed whatever
// the count); each lane fills 8 consecutive j with one 16-byte store. Where those 8 outlier
// columns are 8 adjacent, 8-aligned columns (runs of outliers: with every column flagged, all
// of them) the lane reads them with one vector load instead of 8 gathers.
template <typename T>
__global__ void __launch_bounds__(kGatherThreads)
    gather_outliers_kernel(const T* __restrict__ x, const int8_t* __restrict__ CB,
                           const int32_t* __restrict__ idx, const int32_t* __restrict__ count_p,
                           int min_count, int64_t M, int64_t N, int64_t K, int64_t Kcap,
                           bool x_direct, T* __restrict__ xg, T* __restrict__ wg) {
  const int count = *count_p;
  if (count <= min_count) return;
  const int kp = (count + kBK - 1) / kBK * kBK;
  // Every column an outlier column and the GEMM reads x itself (x_direct): only Wg to fill.
  const int64_t skip = x_direct && count == K ? M : 0;
  const int64_t rows = M + N - skip;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.y;
  // Vector reads need the rows 16-byte (x) / 8-byte (CB) aligned: K % 8 == 0 and aligned bases.
  const bool row_vec = K % 8 == 0 && reinterpret_cast<uintptr_t>(x) % 16 == 0 &&
                       reinterpret_cast<uintptr_t>(CB) % 8 == 0;
  for (int64_t r = static_cast<int64_t>(blockIdx.x) * blockDim.y + threadIdx.y + skip;
       r < rows + skip; r += stride) {
    const bool is_x = r < M;
    const int64_t row = is_x ? r : r - M;
    T* o = (is_x ? xg : wg) + row * Kcap;
    for (int j0 = threadIdx.x * 8; j0 < kp; j0 += 32 * 8) {
      int col[8];
      if (j0 + 8 <= count) {
        const int4 a = *reinterpret_cast<const int4*>(idx + j0);
        const int4 b = *reinterpret_cast<const int4*>(idx + j0 + 4);
        col[0] = a.x, col[1] = a.y, col[2] = a.z, col[3] = a.w;
        col[4] = b.x, col[5] = b.y, col[6] = b.z, col[7] = b.w;
      } else {
#pragma unroll
        for (int e = 0; e < 8; ++e) col[e] = j0 + e < count ? idx[j0 + e] : -1;
      }
      // idx is ascending, so 8 valid entries spanning 7 are 8 adjacent columns.
      const bool run = row_vec && col[7] >= 0 && col[7] - col[0] == 7 && col[0] % 8 == 0;
      uint4 packed;
      if (is_x) {
        const T* xr = x + row * K;
        if (run) {
          packed = *reinterpret_cast<const uint4*>(xr + col[0]);
        } else {
          unsigned short h[8];
#pragma unroll
          for (int e = 0; e < 8; ++e)
            h[e] = col[e] >= 0 ? to_bits16(xr[col[e]]) : to_bits16(from_float<T>(0.0f));
          packed = make_uint4(h[0] | (uint32_t{h[1]} << 16), h[2] | (uint32_t{h[3]} << 16),
                              h[4] | (uint32_t{h[5]} << 16), h[6] | (uint32_t{h[7]} << 16));
        }
      } else {
        const int8_t* cr = CB + row * K;
        int8_t c[8];
        if (run) {
          const uint2 v = *reinterpret_cast<const uint2*>(cr + col[0]);
#pragma unroll
          for (int e = 0; e < 4; ++e) c[e] = byte_of(v.x, e), c[4 + e] = byte_of(v.y, e);
        } else {
#pragma unroll
          for (int e = 0; e < 8; ++e) c[e] = col[e] >= 0 ? cr[col[e]] : int8_t{0};
        }
        unsigned short h[8];
#pragma unroll
        for (int e = 0; e < 8; ++e) h[e] = to_bits16(from_float<T>(static_cast<float>(c[e])));
        packed = make_uint4(h[0] | (uint32_t{h[1]} << 16), h[2] | (uint32_t{h[3]} << 16),
                            h[4] | (uint32_t{h[5]} << 16), h[6] | (uint32_t{h[7]} << 16));
      }
      *reinterpret_cast<uint4*>(o + j0) = packed;
    }
  }
}

template <typename T>
struct Wmma;
template <>
struct Wmma<__half> {
  using type = __half;
};
template <>
struct Wmma<__nv_bfloat16> {
  using type = __nv_bfloat16;
};

// Pipeline shape of the tensor-core GEMM: k-tile width and cp.async stages in flight.
// (64-wide tiles in 3 stages measured 2-10% faster than 32-wide in 2 stages: benchmarks/NOTES.md
// v4b.)
template <int BK, int STAGES>
struct TcShape {
  static constexpr int kLdS = BK + 8;  // shared row stride (elements): rows start in other banks
  static constexpr int kStageElems = (kBM + kBN) * kLdS;
  static constexpr size_t kSmemBytes = size_t{STAGES} * kStageElems * 2;
  static constexpr int kChunksPerRow = BK / 8;  // 16-byte chunks per tile row
};

// The epilogue's two modes. Fused (the fused op): out (T) = dequant(acc[m, n]) + outlier sum
// * SCB[n] / 127 + bias[n]. Terms (add_outlier_terms): out (float) = base[m, n] + outlier sum *
// SCB[n] / 127; base may be out (each element is read, then written, by one thread).
struct OutlierEpilogueArgs {
  const int32_t* acc = nullptr;  // fused
  const float* row_scale = nullptr;
  DType bias_dtype = DType::kF32;
  const void* bias = nullptr;
  const float* base = nullptr;  // terms
};

// out[m, n] = (acc or base term) + (sum_j Xg[m, j] * Wg[n, j]) * SCB[n] / 127 (+ bias[n]).
template <typename T, typename OutT, int BK, int STAGES>
__global__ void __launch_bounds__(kTcThreads)
    outlier_gemm_epilogue_kernel(const T* __restrict__ xg, const T* __restrict__ wg, int64_t Kcap,
                                 const int32_t* __restrict__ count_p, int min_count,
                                 OutlierEpilogueArgs epi, const float* __restrict__ SCB, int64_t M,
                                 int64_t N, OutT* out) {
  constexpr bool kTerms = std::is_same<OutT, float>::value;
#if __CUDA_ARCH__ >= 800
  using namespace nvcuda;
  using S = TcShape<BK, STAGES>;
  constexpr int kLdS = S::kLdS;
  const int count = *count_p;
  if (count <= min_count) return;
  const int ktiles = (count + BK - 1) / BK;

  extern __shared__ __align__(128) unsigned char smem_raw[];
  T* smem = reinterpret_cast<T*>(smem_raw);
  auto sA = [&](int stage) { return smem + stage * S::kStageElems; };
  auto sB = [&](int stage) { return smem + stage * S::kStageElems + kBM * kLdS; };

  const int64_t m0 = static_cast<int64_t>(blockIdx.y) * kBM;
  const int64_t n0 = static_cast<int64_t>(blockIdx.x) * kBN;
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  const int wm = warp / 2, wn = warp % 2;

  // Each thread copies kPer 16-byte chunks of A and of B per k-tile (128 rows of BK elements).
  constexpr int kPer = kBM * S::kChunksPerRow / kTcThreads;
  auto load_tile = [&](int kt, int stage) {
    const int64_t k0 = static_cast<int64_t>(kt) * BK;
    T* a_s = sA(stage);
    T* b_s = sB(stage);
#pragma unroll
    for (int i = 0; i < kPer; ++i) {
      const int c = tid + i * kTcThreads;
      const int row = c / S::kChunksPerRow, col = (c % S::kChunksPerRow) * 8;
      const bool am = m0 + row < M, bn = n0 + row < N;
      const T* ga = xg + (am ? (m0 + row) * Kcap : 0) + k0 + col;
      const T* gb = wg + (bn ? (n0 + row) * Kcap : 0) + k0 + col;
      cp_async16(a_s + row * kLdS + col, ga, am);
      cp_async16(b_s + row * kLdS + col, gb, bn);
    }
  };

  using Elem = typename Wmma<T>::type;
  wmma::fragment<wmma::accumulator, 16, 16, 16, float> c[2][4];
#pragma unroll
  for (int i = 0; i < 2; ++i)
#pragma unroll
    for (int j = 0; j < 4; ++j) wmma::fill_fragment(c[i][j], 0.0f);

  // Classic multi-stage cp.async pipeline: STAGES - 1 tiles in flight ahead of the one in use.
  // Every iteration commits one group (possibly empty) so that the wait count stays exact.
#pragma unroll
  for (int st = 0; st < STAGES - 1; ++st) {
    if (st < ktiles) load_tile(st, st);
    cp_async_commit();
  }
  for (int kt = 0; kt < ktiles; ++kt) {
    cp_async_wait<STAGES - 2>();
    __syncthreads();  // tile kt landed for every thread; stage (kt - 1) % STAGES is free again
    const int next = kt + STAGES - 1;
    if (next < ktiles) load_tile(next, next % STAGES);
    cp_async_commit();
    const T* a_s = sA(kt % STAGES);
    const T* b_s = sB(kt % STAGES);
#pragma unroll
    for (int kk = 0; kk < BK; kk += 16) {
      wmma::fragment<wmma::matrix_a, 16, 16, 16, Elem, wmma::row_major> a[2];
      wmma::fragment<wmma::matrix_b, 16, 16, 16, Elem, wmma::col_major> b[4];
#pragma unroll
      for (int i = 0; i < 2; ++i)
        wmma::load_matrix_sync(a[i], a_s + (wm * 32 + i * 16) * kLdS + kk, kLdS);
#pragma unroll
      for (int j = 0; j < 4; ++j)
        wmma::load_matrix_sync(b[j], b_s + (wn * 64 + j * 16) * kLdS + kk, kLdS);
#pragma unroll
      for (int i = 0; i < 2; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) wmma::mma_sync(c[i][j], a[i], b[j], c[i][j]);
    }
  }
  cp_async_wait<0>();
  __syncthreads();  // every warp is done with the tiles: the epilogue reuses shared memory

  // Epilogue: each warp stages one 16x16 accumulator tile at a time in shared memory and its
  // lanes finish 8 consecutive outputs of one row each.
  float* stage_c = reinterpret_cast<float*>(smem_raw) + warp * 256;
#pragma unroll
  for (int i = 0; i < 2; ++i) {
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      wmma::store_matrix_sync(stage_c, c[i][j], 16, wmma::mem_row_major);
      __syncwarp();
      const int r = lane / 2, c0 = (lane % 2) * 8;
      const int64_t m = m0 + wm * 32 + i * 16 + r;
      if (m < M) {
        const float rs = kTerms ? 0.0f : epi.row_scale[m];
#pragma unroll
        for (int e = 0; e < 8; ++e) {
          const int64_t n = n0 + wn * 64 + j * 16 + c0 + e;
          if (n < N) {
            const float cs = SCB[n];
            float v = kTerms ? epi.base[m * N + n] : dequant(epi.acc[m * N + n], rs, cs);
            v = __fadd_rn(v, __fmul_rn(stage_c[r * 16 + c0 + e], cs * kInv127));
            if constexpr (kTerms) {
              out[m * N + n] = v;
            } else {
              if (epi.bias != nullptr)
                v = __fadd_rn(v, load_float_any(epi.bias_dtype, epi.bias, n));
              out[m * N + n] = from_float<T>(v);
            }
          }
        }
      }
      __syncwarp();
    }
  }
#endif
}

// Launches one pipeline shape; its dynamic shared memory (over the default 48 KiB) is allowed
// once per device.
template <typename T, typename OutT, int BK, int STAGES>
Status launch_gemm(cudaStream_t st, dim3 grid, const T* xg, const T* wg, int64_t Kcap,
                   const int32_t* count, const OutlierEpilogueArgs& epi, const float* SCB,
                   int64_t M, int64_t N, OutT* out) {
  constexpr size_t kSmem = TcShape<BK, STAGES>::kSmemBytes;
  auto kernel = outlier_gemm_epilogue_kernel<T, OutT, BK, STAGES>;
  static std::atomic<uint64_t> allowed{0};
  Status ok = allow_dynamic_smem(kernel, kSmem, allowed,
                                 "cudaFuncSetAttribute(outlier_gemm_epilogue_kernel)");
  if (!ok.ok()) return ok;
  kernel<<<grid, kTcThreads, kSmem, st>>>(xg, wg, Kcap, count, kOutlierTcMinCount, epi, SCB, M, N,
                                          out);
  LT8_CHECK_LAUNCH("outlier_gemm_epilogue_kernel");
  return Status::Ok();
}

// The epilogue after the sm_90a GEMM (outlier_gemm_sm90.cu), which leaves the outlier sums in
// d: the same float operations as outlier_gemm_epilogue_kernel's epilogue. Each thread finishes
// VEC adjacent columns (VEC = 4: N % 4 == 0 and out / base aligned for it) down a stride of rows.
// When every column is an outlier column the int8 activations are all zeros, so acc is exactly
// 0 and is not read.
template <typename OutT, int VEC>
__global__ void __launch_bounds__(kThreads)
    outlier_combine_kernel(const float* __restrict__ d, const int32_t* __restrict__ count_p,
                           int min_count, OutlierEpilogueArgs epi, const float* __restrict__ SCB,
                           int64_t M, int64_t N, int64_t K, OutT* out) {
  constexpr bool kTerms = std::is_same<OutT, float>::value;
  const int count = *count_p;
  if (count <= min_count) return;
  const bool acc_zero = count == K;
  const int64_t n0 = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) * VEC;
  if (n0 >= N) return;
  float cs[VEC], b[VEC];
#pragma unroll
  for (int e = 0; e < VEC; ++e) {
    cs[e] = SCB[n0 + e];
    b[e] =
        (!kTerms && epi.bias != nullptr) ? load_float_any(epi.bias_dtype, epi.bias, n0 + e) : 0.0f;
  }
  for (int64_t m = blockIdx.y; m < M; m += gridDim.y) {
    const int64_t i = m * N + n0;
    float dv[VEC], v[VEC];
    if constexpr (VEC == 4) {
      const float4 d4 = *reinterpret_cast<const float4*>(d + i);
      dv[0] = d4.x, dv[1] = d4.y, dv[2] = d4.z, dv[3] = d4.w;
    } else {
      dv[0] = d[i];
    }
    if constexpr (kTerms) {
      if constexpr (VEC == 4) {
        load4(epi.base + i, v);
      } else {
        v[0] = epi.base[i];
      }
    } else {
      int32_t a[VEC] = {};
      if (!acc_zero) {
        if constexpr (VEC == 4) {
          const int4 a4 = *reinterpret_cast<const int4*>(epi.acc + i);
          a[0] = a4.x, a[1] = a4.y, a[2] = a4.z, a[3] = a4.w;
        } else {
          a[0] = epi.acc[i];
        }
      }
      const float rs = epi.row_scale[m];
#pragma unroll
      for (int e = 0; e < VEC; ++e) v[e] = dequant(a[e], rs, cs[e]);
    }
#pragma unroll
    for (int e = 0; e < VEC; ++e) {
      v[e] = __fadd_rn(v[e], __fmul_rn(dv[e], cs[e] * kInv127));
      if (!kTerms && epi.bias != nullptr) v[e] = __fadd_rn(v[e], b[e]);
    }
    if constexpr (VEC == 4) {
      store4(out + i, v);
    } else {
      out[i] = from_float<OutT>(v[0]);
    }
  }
}

// Gathers the outlier columns (idx[0 .. *count)) into xg / wg, then the GEMM and the epilogue.
template <typename T, typename OutT, typename Scratch>
Status launch(cudaStream_t st, const T* x, const int8_t* CB, const float* SCB, const Scratch& s,
              const OutlierEpilogueArgs& epi, int64_t M, int64_t N, int64_t K, OutT* out) {
  const int32_t* idx = s.outlier_idx;
  const int32_t* count = s.outlier_count;
  const int64_t Kcap = outlier_gather_stride(K);
  T* xg = static_cast<T*>(s.tc_x);
  T* wg = static_cast<T*>(s.tc_w);
  const bool sm90 = outlier_tc_takes_sm90(s.tc_d, M, N);
  const bool x_direct = sm90 && outlier_gemm_x_direct(x, K);
  {
    const dim3 block(32, kGatherThreads / 32);  // a warp per row
    // At most 1024 blocks: they return at once unless the count asks for the gather.
    const int64_t blocks = std::min<int64_t>((M + N + block.y - 1) / block.y, 1024);
    gather_outliers_kernel<T><<<static_cast<unsigned>(blocks), block, 0, st>>>(
        x, CB, idx, count, kOutlierTcMinCount, M, N, K, Kcap, x_direct, xg, wg);
    LT8_CHECK_LAUNCH("gather_outliers_kernel");
  }
  // Hopper with CUTLASS built in: wgmma GEMM into d, then the epilogue as its own pass.
  if (sm90) {
    Status gs = launch_outlier_gemm_sm90(st, dtype_of<T>(), xg, wg, Kcap, count, kOutlierTcMinCount,
                                         M, N, x_direct ? x : nullptr, K, s.tc_d, s.tc_gemm_ws);
    if (!gs.ok()) return gs;
    const bool vec = N % 4 == 0 && is_aligned(out, 4 * sizeof(OutT)) &&
                     (epi.base == nullptr || is_aligned(epi.base, 16));
    const int64_t threads_n = vec ? N / 4 : N;
    // About 2048 blocks in all: enough to stream M x N, few enough that the launch costs
    // little when the count sends them home at once (a 1024-row grid cost 35 us there).
    const int64_t gx = (threads_n + kThreads - 1) / kThreads;
    const dim3 grid(static_cast<unsigned>(gx),
                    static_cast<unsigned>(std::max<int64_t>(1, std::min<int64_t>(M, 2048 / gx))));
    if (vec)
      outlier_combine_kernel<OutT, 4>
          <<<grid, kThreads, 0, st>>>(s.tc_d, count, kOutlierTcMinCount, epi, SCB, M, N, K, out);
    else
      outlier_combine_kernel<OutT, 1>
          <<<grid, kThreads, 0, st>>>(s.tc_d, count, kOutlierTcMinCount, epi, SCB, M, N, K, out);
    LT8_CHECK_LAUNCH("outlier_combine_kernel");
    return Status::Ok();
  }
  const dim3 grid(static_cast<unsigned>((N + kBN - 1) / kBN),
                  static_cast<unsigned>((M + kBM - 1) / kBM));
  return launch_gemm<T, OutT, kBK, kStages>(st, grid, xg, wg, Kcap, count, epi, SCB, M, N, out);
}

}  // namespace

#ifndef LT8_WITH_CUTLASS_SM90
// Builds without CUTLASS's headers: the sm_90a GEMMs do not exist and are never chosen.
bool outlier_gemm_sm90_supported(int64_t, int64_t) {
  return false;
}
bool int8_gemm_sm90_supported(const int8_t*, const int8_t*, int64_t, int64_t, int64_t) {
  return false;
}
Status launch_outlier_gemm_sm90(cudaStream_t, DType, const void*, const void*, int64_t,
                                const int32_t*, int, int64_t, int64_t, const void*, int64_t, float*,
                                void*) {
  return Status::Unsupported("this build has no CUTLASS sm_90a GEMMs");
}
Status launch_int8_gemm_sm90(cudaStream_t, const int8_t*, const int8_t*, int64_t, int64_t, int64_t,
                             const int32_t*, int, int32_t*, void*) {
  return Status::Unsupported("this build has no CUTLASS sm_90a GEMMs");
}
#endif

bool outlier_tc_takes_sm90(const float* tc_d, int64_t M, int64_t N) {
  // LT8_OUTLIER_TC_WMMA=1 keeps the WMMA GEMM on Hopper too (tests and benchmarks compare them).
  static const bool force_wmma = [] {
    const char* v = std::getenv("LT8_OUTLIER_TC_WMMA");
    return v != nullptr && v[0] == '1';
  }();
  return tc_d != nullptr && !force_wmma && outlier_gemm_sm90_supported(M, N);
}

bool outlier_tc_supported(int64_t M) {
  return (M + kBM - 1) / kBM <= 65535 && current_device_cc_major() >= 8;
}

Status launch_outlier_tc(cudaStream_t st, DType x_dtype, const void* x, const int8_t* CB,
                         const float* SCB, const LinearScratch& s, DType bias_dtype,
                         const void* bias, int64_t M, int64_t N, int64_t K, void* out) {
  OutlierEpilogueArgs epi;
  epi.acc = s.acc;
  epi.row_scale = s.row_scale;
  epi.bias_dtype = bias_dtype;
  epi.bias = bias;
  if (x_dtype == DType::kF16)
    return launch<__half>(st, static_cast<const __half*>(x), CB, SCB, s, epi, M, N, K,
                          static_cast<__half*>(out));
  if (x_dtype == DType::kBF16)
    return launch<__nv_bfloat16>(st, static_cast<const __nv_bfloat16*>(x), CB, SCB, s, epi, M, N, K,
                                 static_cast<__nv_bfloat16*>(out));
  return Status::Invalid("launch_outlier_tc: x must be float16 or bfloat16");
}

Status launch_outlier_tc_terms(cudaStream_t st, DType x_dtype, const void* x, const int8_t* CB,
                               const float* SCB, const TermsScratch& s, const float* base,
                               int64_t M, int64_t N, int64_t K, float* out) {
  OutlierEpilogueArgs epi;
  epi.base = base;
  if (x_dtype == DType::kF16)
    return launch<__half>(st, static_cast<const __half*>(x), CB, SCB, s, epi, M, N, K, out);
  if (x_dtype == DType::kBF16)
    return launch<__nv_bfloat16>(st, static_cast<const __nv_bfloat16*>(x), CB, SCB, s, epi, M, N, K,
                                 out);
  return Status::Invalid("launch_outlier_tc_terms: x must be float16 or bfloat16");
}

}  // namespace gpu
}  // namespace lt8
