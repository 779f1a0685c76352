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
// of kBK. Grid-stride over (row, j) so that the grid is fixed whatever the count.
template <typename T>
__global__ void __launch_bounds__(kGatherThreads)
    gather_outliers_kernel(const T* __restrict__ x, const int8_t* __restrict__ CB,
                           const int32_t* __restrict__ idx, const int32_t* __restrict__ count_p,
                           int min_count, int64_t M, int64_t N, int64_t K, int64_t Kcap,
                           T* __restrict__ xg, T* __restrict__ wg) {
  const int count = *count_p;
  if (count <= min_count) return;
  const int kp = (count + kBK - 1) / kBK * kBK;
  const int64_t rows = M + N;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.y;
  // One block row (blockDim.x threads) walks one matrix row along j: coalesced writes.
  for (int64_t r = static_cast<int64_t>(blockIdx.x) * blockDim.y + threadIdx.y; r < rows;
       r += stride) {
    if (r < M) {
      const T* xr = x + r * K;
      T* o = xg + r * Kcap;
      for (int j = threadIdx.x; j < kp; j += blockDim.x)
        o[j] = j < count ? xr[idx[j]] : from_float<T>(0.0f);
    } else {
      const int64_t n = r - M;
      const int8_t* cr = CB + n * K;
      T* o = wg + n * Kcap;
      for (int j = threadIdx.x; j < kp; j += blockDim.x)
        o[j] = from_float<T>(j < count ? static_cast<float>(cr[idx[j]]) : 0.0f);
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
  static std::atomic<uint64_t> allowed{0};  // bit d: set for device d (< 64)
  int dev = 0;
  LT8_CUDA_RETURN_IF_ERROR(cudaGetDevice(&dev), "cudaGetDevice");
  const uint64_t bit = dev < 64 ? uint64_t{1} << dev : 0;
  if (kSmem > 48 * 1024 && (bit == 0 || !(allowed.load(std::memory_order_relaxed) & bit))) {
    LT8_CUDA_RETURN_IF_ERROR(
        cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                             static_cast<int>(kSmem)),
        "cudaFuncSetAttribute(outlier_gemm_epilogue_kernel)");
    allowed.fetch_or(bit, std::memory_order_relaxed);
  }
  kernel<<<grid, kTcThreads, kSmem, st>>>(xg, wg, Kcap, count, kOutlierTcMinCount, epi, SCB, M, N,
                                          out);
  LT8_CHECK_LAUNCH("outlier_gemm_epilogue_kernel");
  return Status::Ok();
}

// The epilogue after the sm_90a GEMM (outlier_gemm_sm90.cu), which leaves the outlier sums in
// d: the same float operations as outlier_gemm_epilogue_kernel's epilogue, one output per thread.
template <typename OutT>
__global__ void __launch_bounds__(kThreads)
    outlier_combine_kernel(const float* __restrict__ d, const int32_t* __restrict__ count_p,
                           int min_count, OutlierEpilogueArgs epi, const float* __restrict__ SCB,
                           int64_t M, int64_t N, OutT* out) {
  constexpr bool kTerms = std::is_same<OutT, float>::value;
  if (*count_p <= min_count) return;
  // Grid: x over column blocks of kThreads, y strides over the rows.
  const int64_t n = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (n >= N) return;
  const float cs = SCB[n];
  for (int64_t m = blockIdx.y; m < M; m += gridDim.y) {
    const int64_t i = m * N + n;
    float v = kTerms ? epi.base[i] : dequant(epi.acc[i], epi.row_scale[m], cs);
    v = __fadd_rn(v, __fmul_rn(d[i], cs * kInv127));
    if constexpr (kTerms) {
      out[i] = v;
    } else {
      if (epi.bias != nullptr) v = __fadd_rn(v, load_float_any(epi.bias_dtype, epi.bias, n));
      out[i] = from_float<OutT>(v);
    }
  }
}

// LT8_OUTLIER_TC_WMMA=1 keeps the WMMA GEMM on Hopper too (tests and benchmarks compare them).
bool force_wmma() {
  static const bool force = [] {
    const char* v = std::getenv("LT8_OUTLIER_TC_WMMA");
    return v != nullptr && v[0] == '1';
  }();
  return force;
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
  {
    const dim3 block(64, kGatherThreads / 64);
    const int64_t blocks = std::min<int64_t>((M + N + block.y - 1) / block.y, 4096);
    gather_outliers_kernel<T><<<static_cast<unsigned>(blocks), block, 0, st>>>(
        x, CB, idx, count, kOutlierTcMinCount, M, N, K, Kcap, xg, wg);
    LT8_CHECK_LAUNCH("gather_outliers_kernel");
  }
  // Hopper with CUTLASS built in: wgmma GEMM into d, then the epilogue as its own pass.
  if constexpr (kWithOutlierGemmSm90) {
    if (s.tc_d != nullptr && !force_wmma() && outlier_gemm_sm90_supported(M, N)) {
      Status gs = launch_outlier_gemm_sm90(st, dtype_of<T>(), xg, wg, Kcap, count,
                                           kOutlierTcMinCount, M, N, s.tc_d, s.tc_gemm_ws);
      if (!gs.ok()) return gs;
      const dim3 grid(static_cast<unsigned>((N + kThreads - 1) / kThreads),
                      static_cast<unsigned>(std::min<int64_t>(M, 1024)));
      outlier_combine_kernel<OutT><<<grid, kThreads, 0, st>>>(s.tc_d, count, kOutlierTcMinCount,
                                                              epi, SCB, M, N, out);
      LT8_CHECK_LAUNCH("outlier_combine_kernel");
      return Status::Ok();
    }
  }
  const dim3 grid(static_cast<unsigned>((N + kBN - 1) / kBN),
                  static_cast<unsigned>((M + kBM - 1) / kBM));
  return launch_gemm<T, OutT, kBK, kStages>(st, grid, xg, wg, Kcap, count, epi, SCB, M, N, out);
}

}  // namespace

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
    return launch<__nv_bfloat16>(st, static_cast<const __nv_bfloat16*>(x), CB, SCB, s, epi, M, N,
                                 K, static_cast<__nv_bfloat16*>(out));
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
    return launch<__nv_bfloat16>(st, static_cast<const __nv_bfloat16*>(x), CB, SCB, s, epi, M, N,
                                 K, out);
  return Status::Invalid("launch_outlier_tc_terms: x must be float16 or bfloat16");
}

}  // namespace gpu
}  // namespace lt8
