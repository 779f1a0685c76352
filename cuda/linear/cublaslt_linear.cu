// Epilogue of the tensor-core path (cuBLASLt int8 GEMM into int32 scratch), per output (m, n), in
// the CPU reference's order (int8_linear_cpu.cc): dequant, outlier terms in ascending k, bias.
// The first kStagedOutliers outlier columns of the dequantized weight and of x are gathered once
// per call into Wo (count x N) and Xo (M x kStagedOutliers), read coalesced later; further
// outlier columns (rare) are gathered from CB and x directly.
#include "linear/cublaslt_linear.cuh"

#include <climits>
#include <cstdint>
#include <cstdlib>

#include "common/cuda_check.cuh"
#include "common/device_types.cuh"
#include "common/launch_shape.cuh"
#include "common/numerics.h"
#include "gemm/cublaslt_gemm.h"
#include "linear/outlier_gemm_sm90.h"
#include "linear/outlier_tc.cuh"

namespace lt8 {
namespace gpu {
namespace {

constexpr int kEpiThreads = 256;          // one output column per thread
constexpr int kEpiRows = 32;              // rows per block
constexpr int kEpiChunk = 8;              // outlier columns per shared-memory stage
constexpr int64_t kInt8Sm90MinK = 12288;  // see launch_linear_tensor_core

// One thread per (n, j): independent gathers instead of a chain of count dependent ones.
__global__ void __launch_bounds__(kThreads)
    stage_outlier_weights_kernel(const int8_t* __restrict__ CB, const float* __restrict__ SCB,
                                 const int32_t* __restrict__ outlier_idx,
                                 const int32_t* __restrict__ outlier_count, int64_t N, int64_t K,
                                 int exact_max_count, float* __restrict__ Wo) {
  const int64_t n = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int j = blockIdx.y;  // < kStagedOutliers
  const int count = *outlier_count;
  if (n >= N || j >= count || count > exact_max_count) return;  // (else: outlier_tc.cu's turn)
  Wo[j * N + n] = weight_value(CB[n * K + outlier_idx[j]], SCB[n]);
}

// Xo[m, j] = x[m, idx[j]], one thread per (j, m) pair; rows of Xo are then read coalesced.
template <typename T>
__global__ void __launch_bounds__(kThreads)
    stage_outlier_activations_kernel(const T* __restrict__ x,
                                     const int32_t* __restrict__ outlier_idx,
                                     const int32_t* __restrict__ outlier_count, int64_t M,
                                     int64_t K, int exact_max_count, float* __restrict__ Xo) {
  if (*outlier_count > exact_max_count) return;  // outlier_tc.cu's turn
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
                           int exact_max_count, T* __restrict__ out) {
  // More outlier columns than exact_max_count: the tensor-core path (outlier_tc.cu) writes out.
  if (*outlier_count > exact_max_count) return;
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

}  // namespace

bool tensor_core_path_fits(const LinearScratch& s, int64_t M) {
  return s.acc != nullptr && ceil_div(M, int64_t{kEpiRows}) <= 65535;
}

bool int8_gemm_stands_aside_when_all_outliers(const int8_t* CB, const LinearScratch& s, int64_t M,
                                              int64_t N, int64_t K) {
  // On the Hopper many-outlier path with wide inputs (K >= kInt8Sm90MinK) the int8 GEMM is
  // CUTLASS's, which stands aside on the device when every column is an outlier column (an
  // MLP's down projection over a long prompt: benchmarks/NOTES.md v7). There it measured as fast
  // as cuBLASLt's or faster at 0 outliers (14336->4096, 28672->8192), and 10-30% slower on
  // narrower inputs, which keep cuBLASLt. LT8_INT8_GEMM_CUBLASLT=1: cuBLASLt's everywhere.
  static const bool force_cublaslt = [] {
    const char* v = std::getenv("LT8_INT8_GEMM_CUBLASLT");
    return v != nullptr && v[0] == '1';
  }();
  const bool tc = s.tc_x != nullptr && outlier_tc_supported(M);
  return tensor_core_path_fits(s, M) && tc && K >= kInt8Sm90MinK && cublaslt_enabled() &&
         !force_cublaslt && outlier_tc_takes_sm90(s.tc_d, M, N) &&
         int8_gemm_sm90_supported(s.q, CB, M, N, K);
}

template <typename T>
bool launch_linear_tensor_core(cudaStream_t st, const T* x, const int8_t* CB, const float* SCB,
                               const LinearScratch& s, float threshold, DType bias_dtype,
                               const void* bias, int64_t M, int64_t N, int64_t K, T* out,
                               Status* err) {
  if (!tensor_core_path_fits(s, M)) return false;
  const bool tc = s.tc_x != nullptr && outlier_tc_supported(M);
  if (int8_gemm_stands_aside_when_all_outliers(CB, s, M, N, K)) {
    Status gs = launch_int8_gemm_sm90(st, s.q, CB, M, N, K, s.outlier_count, kOutlierTcMinCount,
                                      s.acc, s.tc_gemm_ws);
    if (!gs.ok()) {
      *err = gs;
      return false;
    }
  } else if (!cublaslt_int8_gemm(st, s.q, CB, M, N, K, s.acc, s.gemm_ws, s.gemm_ws_bytes, err)) {
    return false;
  }
  // Many outlier columns go to tensor cores; the exact epilogue and its staging then stand aside
  // (each of the two reads the count on the device and returns at once when the other one is in
  // charge).
  int exact_max_count = INT_MAX;
  if (tc) {
    Status ts = launch_outlier_tc(st, dtype_of<T>(), x, CB, SCB, s, bias_dtype, bias, M, N, K, out);
    if (!ts.ok()) {
      *err = ts;
      return false;
    }
    exact_max_count = kOutlierTcMinCount;
  }
  if (threshold > 0.0f) {
    const dim3 grid(static_cast<unsigned>(ceil_div(N, int64_t{kThreads})), kStagedOutliers);
    stage_outlier_weights_kernel<<<grid, kThreads, 0, st>>>(CB, SCB, s.outlier_idx, s.outlier_count,
                                                            N, K, exact_max_count, s.outlier_w);
    const int64_t pairs = M * kStagedOutliers;
    stage_outlier_activations_kernel<T>
        <<<static_cast<unsigned>(ceil_div(pairs, int64_t{kThreads})), kThreads, 0, st>>>(
            x, s.outlier_idx, s.outlier_count, M, K, exact_max_count, s.outlier_x);
    if (cudaError_t e = cudaGetLastError(); e != cudaSuccess) {
      *err = cuda_error(e, "stage_outlier_kernels");
      return false;
    }
  }
  const dim3 grid(static_cast<unsigned>(ceil_div(N, int64_t{kEpiThreads})),
                  static_cast<unsigned>(ceil_div(M, int64_t{kEpiRows})));
  linear_epilogue_kernel<T><<<grid, kEpiThreads, 0, st>>>(
      s.acc, x, CB, SCB, s.row_scale, s.outlier_idx, s.outlier_count, s.outlier_w, s.outlier_x,
      bias_dtype, bias, M, N, K, exact_max_count, out);
  if (cudaError_t e = cudaGetLastError(); e != cudaSuccess) {
    *err = cuda_error(e, "linear_epilogue_kernel");
    return false;
  }
  return true;
}

#define LT8_INSTANTIATE(T)                                                                        \
  template bool launch_linear_tensor_core<T>(cudaStream_t, const T*, const int8_t*, const float*, \
                                             const LinearScratch&, float, DType, const void*,     \
                                             int64_t, int64_t, int64_t, T*, Status*);
LT8_FOR_EACH_FLOAT_TYPE(LT8_INSTANTIATE)
#undef LT8_INSTANTIATE

}  // namespace gpu
}  // namespace lt8
