// Epilogue of the tensor-core path (cuBLASLt int8 GEMM into int32 scratch), per output (m, n), in
// the CPU reference's order (int8_linear_cpu.cc): dequant, outlier terms in ascending k, bias.
// The first kStagedOutliers outlier columns of the dequantized weight and of x are gathered once
// per call into Wo (count x N) and Xo (M x kStagedOutliers), read coalesced later; further
// outlier columns (rare) are gathered from CB and x directly.
#include "linear/cublaslt_linear.cuh"

#include <algorithm>
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

constexpr int kEpiThreads = 256;          // one or four output columns per thread
constexpr int kEpiRows = 32;              // rows per block (a quarter with 4 columns a thread)
constexpr int kEpiChunk = 8;              // outlier columns per shared-memory stage
constexpr int64_t kInt8Sm90MinK = 12288;  // see launch_linear_tensor_core

// Stages the first min(count, kStagedOutliers) outlier columns, one launch for both operands:
// Wo[j, n] = W[n, idx[j]] (dequantized) and Xo[m, j] = x[m, idx[j]], read coalesced by the
// epilogue later. The count is read first and the grid strides over exactly the staged pairs,
// so a call with few outlier columns (or none, or too many: outlier_tc.cu's turn) costs about
// one launch (benchmarks/NOTES.md v11: two launches of up to 4096 blocks before).
constexpr unsigned kStageMaxBlocks = 1024;
template <typename T>
__global__ void __launch_bounds__(kThreads)
    stage_outliers_kernel(const T* __restrict__ x, const int8_t* __restrict__ CB,
                          const float* __restrict__ SCB, const int32_t* __restrict__ outlier_idx,
                          const int32_t* __restrict__ outlier_count, int64_t M, int64_t N,
                          int64_t K, int exact_max_count, float* __restrict__ Wo,
                          float* __restrict__ Xo) {
  const int count = *outlier_count;
  if (count > exact_max_count) return;
  const int64_t c = min(count, kStagedOutliers);
  const int64_t w_items = c * N, total = w_items + c * M;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t t = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; t < total;
       t += stride) {
    if (t < w_items) {  // one thread per (j, n): independent gathers, coalesced stores
      const int64_t j = t / N, n = t - j * N;
      Wo[j * N + n] = weight_value(CB[n * K + outlier_idx[j]], SCB[n]);
    } else {
      const int64_t p = t - w_items, m = p / c, j = p - m * c;
      Xo[m * kStagedOutliers + j] = to_float(x[m * K + outlier_idx[j]]);
    }
  }
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

// VEC = 4: each thread finishes 4 adjacent columns of kEpiRows / 4 rows (16-byte int32 loads,
// 8- or 16-byte stores; N % 4 == 0, SCB and out aligned), VEC = 1: one column of kEpiRows
// rows. The arithmetic of each output is the same either way.
template <typename T, int VEC>
__global__ void __launch_bounds__(kEpiThreads)
    linear_epilogue_kernel(const int32_t* __restrict__ acc, const T* __restrict__ x,
                           const int8_t* __restrict__ CB, const float* __restrict__ SCB,
                           const float* __restrict__ row_scale,
                           const int32_t* __restrict__ outlier_idx,
                           const int32_t* __restrict__ outlier_count, const float* __restrict__ Wo,
                           const float* __restrict__ Xo, DType bias_dtype,
                           const void* __restrict__ bias, int64_t M, int64_t N, int64_t K,
                           int exact_max_count, T* __restrict__ out) {
  static_assert(VEC == 1 || VEC == 4, "VEC is 1 or 4");
  constexpr int kRows = kEpiRows / VEC;
  // More outlier columns than exact_max_count: the tensor-core path (outlier_tc.cu) writes out.
  if (*outlier_count > exact_max_count) return;
  // All threads read the same sx element at a time (broadcast): rows of kEpiChunk floats, read
  // as float4.
  __shared__ __align__(16) float sx[kRows][kEpiChunk];
  const int64_t n0 = (static_cast<int64_t>(blockIdx.x) * kEpiThreads + threadIdx.x) * VEC;
  const int64_t m0 = static_cast<int64_t>(blockIdx.y) * kRows;
  const int rows = static_cast<int>(M - m0 < kRows ? M - m0 : kRows);
  const bool live = n0 < N;  // VEC = 4: N % 4 == 0, so all 4 columns are
  float cs[VEC];
#pragma unroll
  for (int e = 0; e < VEC; ++e) cs[e] = live ? SCB[n0 + e] : 0.0f;
  float v[kRows][VEC];
#pragma unroll
  for (int r = 0; r < kRows; ++r) {
    int32_t a[VEC] = {};
    const bool in = live && r < rows;
    if (in) {
      if constexpr (VEC == 4) {
        const int4 a4 = *reinterpret_cast<const int4*>(acc + (m0 + r) * N + n0);
        a[0] = a4.x, a[1] = a4.y, a[2] = a4.z, a[3] = a4.w;
      } else {
        a[0] = acc[(m0 + r) * N + n0];
      }
    }
    const float rs = in ? row_scale[m0 + r] : 0.0f;
#pragma unroll
    for (int e = 0; e < VEC; ++e) v[r][e] = in ? dequant(a[e], rs, cs[e]) : 0.0f;
  }

  const int count = *outlier_count;
  for (int j0 = 0; j0 < count; j0 += kEpiChunk) {
    const int len = count - j0 < kEpiChunk ? count - j0 : kEpiChunk;
    __syncthreads();
    for (int e = threadIdx.x; e < kRows * kEpiChunk; e += kEpiThreads) {
      const int r = e / kEpiChunk, j = e % kEpiChunk, jj = j0 + j;
      float xv = 0.0f;
      if (r < rows && j < len)
        xv = jj < kStagedOutliers ? Xo[(m0 + r) * kStagedOutliers + jj]
                                  : to_float(x[(m0 + r) * K + outlier_idx[jj]]);
      sx[r][j] = xv;
    }
    __syncthreads();
    if (!live) continue;
    float w[VEC][kEpiChunk];  // w[e][j]: column n0 + e, outlier column j0 + j
#pragma unroll
    for (int j = 0; j < kEpiChunk; ++j) {
      const int jj = j0 + j;
      if (j >= len) {
#pragma unroll
        for (int e = 0; e < VEC; ++e) w[e][j] = 0.0f;
      } else if (jj < kStagedOutliers) {
        if constexpr (VEC == 4) {
          const float4 w4 = *reinterpret_cast<const float4*>(Wo + jj * N + n0);
          w[0][j] = w4.x, w[1][j] = w4.y, w[2][j] = w4.z, w[3][j] = w4.w;
        } else {
          w[0][j] = Wo[jj * N + n0];
        }
      } else {
#pragma unroll
        for (int e = 0; e < VEC; ++e)
          w[e][j] = weight_value(CB[(n0 + e) * K + outlier_idx[jj]], cs[e]);
      }
    }
    // Padding terms are exact zeros (x = w = 0), but adding +0 would turn a -0 result into +0,
    // so partial chunks and tiles keep their guards; full ones (the common case) skip them.
    if (len == kEpiChunk && rows == kRows) {
#pragma unroll
      for (int r = 0; r < kRows; ++r)
#pragma unroll
        for (int e = 0; e < VEC; ++e) epi_row_terms<kEpiChunk>(v[r][e], sx[r], w[e], kEpiChunk);
    } else {
#pragma unroll
      for (int r = 0; r < kRows; ++r)
        if (r < rows)
#pragma unroll
          for (int e = 0; e < VEC; ++e) epi_row_terms<kEpiChunk>(v[r][e], sx[r], w[e], len);
    }
  }
  if (!live) return;
  float b[VEC];
#pragma unroll
  for (int e = 0; e < VEC; ++e)
    b[e] = bias != nullptr ? load_float_any(bias_dtype, bias, n0 + e) : 0.0f;
#pragma unroll
  for (int r = 0; r < kRows; ++r) {
    if (r >= rows) continue;
    float f[VEC];
#pragma unroll
    for (int e = 0; e < VEC; ++e) f[e] = bias != nullptr ? __fadd_rn(v[r][e], b[e]) : v[r][e];
    if constexpr (VEC == 4) {
      store4(out + (m0 + r) * N + n0, f);
    } else {
      out[(m0 + r) * N + n0] = from_float<T>(f[0]);
    }
  }
}

}  // namespace

bool tensor_core_path_fits(const LinearScratch& s, int64_t M) {
  return s.acc != nullptr && ceil_div(M, int64_t{kEpiRows}) <= 65535;
}

bool takes_int8_gemm_sm90(const int8_t* CB, const LinearScratch& s, int64_t M, int64_t N,
                          int64_t K) {
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
                               const void* bias, int64_t M, int64_t N, int64_t K, bool int8_sm90,
                               T* out, Status* err) {
  if (!tensor_core_path_fits(s, M)) return false;
  const bool tc = s.tc_x != nullptr && outlier_tc_supported(M);
  if (int8_sm90) {
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
    const unsigned blocks =
        std::min(elementwise_blocks(int64_t{kStagedOutliers} * (N + M)), kStageMaxBlocks);
    stage_outliers_kernel<T><<<blocks, kThreads, 0, st>>>(x, CB, SCB, s.outlier_idx,
                                                          s.outlier_count, M, N, K, exact_max_count,
                                                          s.outlier_w, s.outlier_x);
    if (cudaError_t e = cudaGetLastError(); e != cudaSuccess) {
      *err = cuda_error(e, "stage_outliers_kernel");
      return false;
    }
  }
  // LT8_EPILOGUE_VEC=0: one column per thread everywhere (a benchmark knob).
  static const bool vec_off = [] {
    const char* v = std::getenv("LT8_EPILOGUE_VEC");
    return v != nullptr && v[0] == '0';
  }();
  const bool vec = !vec_off && N % 4 == 0 && is_aligned(SCB, 16) &&
                   is_aligned(out, 4 * sizeof(T)) && ceil_div(M, int64_t{kEpiRows / 4}) <= 65535;
  if (vec) {
    const dim3 grid(static_cast<unsigned>(ceil_div(N, int64_t{kEpiThreads} * 4)),
                    static_cast<unsigned>(ceil_div(M, int64_t{kEpiRows / 4})));
    linear_epilogue_kernel<T, 4><<<grid, kEpiThreads, 0, st>>>(
        s.acc, x, CB, SCB, s.row_scale, s.outlier_idx, s.outlier_count, s.outlier_w, s.outlier_x,
        bias_dtype, bias, M, N, K, exact_max_count, out);
  } else {
    const dim3 grid(static_cast<unsigned>(ceil_div(N, int64_t{kEpiThreads})),
                    static_cast<unsigned>(ceil_div(M, int64_t{kEpiRows})));
    linear_epilogue_kernel<T, 1><<<grid, kEpiThreads, 0, st>>>(
        s.acc, x, CB, SCB, s.row_scale, s.outlier_idx, s.outlier_count, s.outlier_w, s.outlier_x,
        bias_dtype, bias, M, N, K, exact_max_count, out);
  }
  if (cudaError_t e = cudaGetLastError(); e != cudaSuccess) {
    *err = cuda_error(e, "linear_epilogue_kernel");
    return false;
  }
  return true;
}

#define LT8_INSTANTIATE(T)                                                                        \
  template bool launch_linear_tensor_core<T>(cudaStream_t, const T*, const int8_t*, const float*, \
                                             const LinearScratch&, float, DType, const void*,     \
                                             int64_t, int64_t, int64_t, bool, T*, Status*);
LT8_FOR_EACH_FLOAT_TYPE(LT8_INSTANTIATE)
#undef LT8_INSTANTIATE

}  // namespace gpu
}  // namespace lt8
