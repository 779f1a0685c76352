// The small-batch (decode) path of the fused linear op, M <= small_batch_rows(): a one-launch
// preparation kernel (quantize + outlier columns) and a memory-bound GEMV that reads every weight
// byte once, on mma.sync tensor cores (sm_80+) or with dp4a. Called by linear/int8_linear.cu.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "common/device_caps.cuh"
#include "internal.h"

namespace lt8 {
namespace gpu {

// Largest K of the preparation kernel (each of its 1024 threads keeps up to 4 x 8 columns of its
// row in registers).
constexpr int64_t kPrepMaxK = 32768;

// Quantizes x (M <= kSmallBatchRows rows) into s.q / s.row_scale and writes the outlier columns,
// compacted, to s.outlier_idx / s.outlier_count, in one launch. Needs K % 8 == 0,
// K <= kPrepMaxK, x 4 * sizeof(T) aligned and s.q 8-byte aligned. Same values as
// launch_outlier_mask + launch_compact_outliers + launch_quantize_rows. T: float, __half or
// __nv_bfloat16.
template <typename T>
Status launch_prepare_small_batch(cudaStream_t st, const T* x, int64_t M, int64_t K,
                                  float threshold, const LinearScratch& s);

// out = the fused op's result from the prepared q (s.row_scale, s.outlier_idx, s.outlier_count
// filled; after_prepare: by the kernel launched just before, launch_prepare_small_batch's), for M
// <= kSmallBatchRows, K % 16 == 0, CB and q 16-byte aligned. Picks the engine. threshold > 0 with
// more than kGemvExactMaxOutliers outlier columns (read on the device) takes the dense-outlier GEMV
// instead of the exact epilogue (dense_outlier_gemv.cu).
template <typename T>
Status launch_linear_gemv(cudaStream_t st, const int8_t* q, const T* x, const int8_t* CB,
                          const float* SCB, const LinearScratch& s, DType bias_dtype,
                          const void* bias, int64_t M, int64_t N, int64_t K, float threshold,
                          bool after_prepare, T* out);

// Up to this many outlier columns the GEMVs' exact epilogue (the CPU's order, bit for bit) adds
// the outlier terms; above it the dense-outlier GEMV does (the rule of the large-batch path).
constexpr int kGemvExactMaxOutliers = kStagedOutliers;

// The two engines (same arguments and results, bit for bit). Both return at once, writing
// nothing, when the outlier count (read on the device) exceeds exact_max_count. after_prepare:
// the kernel before them in the stream is launch_prepare_small_batch's, which they then overlap
// (a dependent launch on sm_90+: common/dependent_launch.cuh).
template <typename T>
Status launch_dp4a_gemv(cudaStream_t st, const int8_t* q, const T* x, const int8_t* CB,
                        const float* SCB, const LinearScratch& s, DType bias_dtype,
                        const void* bias, int64_t M, int64_t N, int64_t K, int exact_max_count,
                        bool after_prepare, T* out);
template <typename T>
Status launch_mma_gemv(cudaStream_t st, const int8_t* q, const T* x, const int8_t* CB,
                       const float* SCB, const LinearScratch& s, DType bias_dtype, const void* bias,
                       int64_t M, int64_t N, int64_t K, int exact_max_count, bool after_prepare,
                       T* out);

// The dense-outlier GEMV (returns at once up to kGemvExactMaxOutliers outlier columns), for
// K <= dense_outlier_gemv_fits's bound (it keeps a K-bit mask in shared memory).
bool dense_outlier_gemv_fits(int64_t K);
template <typename T>
Status launch_dense_outlier_gemv(cudaStream_t st, const int8_t* q, const T* x, const int8_t* CB,
                                 const float* SCB, const LinearScratch& s, DType bias_dtype,
                                 const void* bias, int64_t M, int64_t N, int64_t K, T* out);

// The SM count that the GEMV rules below scale with (current device); an H200's 132, where the
// rules were measured, when it cannot be read.
inline int64_t gemv_sm_count() {
  const int n = current_device_sm_count();
  return n > 0 ? n : 132;
}

// From this many rows on, the tensor-core GEMV beats the dp4a one (H200, weights out of L2:
// benchmarks/NOTES.md, v5 and v10); at exactly this many rows the streaming dp4a GEMV still wins
// on wide layers (N >= 96 x the SM count) when it fits (tensor_core_gemv).
constexpr int kGemvTcMinRows = 4;

// True when the (M, N, K) GEMV runs on tensor cores: sm_80+ (mma.sync int8), M >= kGemvTcMinRows
// but not the wide-layer exception above, and LT8_GEMV_TC not "0" ("1" forces tensor cores at
// every M).
bool tensor_core_gemv(int64_t M, int64_t N, int64_t K);

// True when the dp4a GEMV of M rows streams its weights with the whole quantized activation
// staged once per block (M * K bytes of shared memory, up to 64 KiB), rather than K chunk by
// chunk (dp4a_gemv.cu).
bool stream_gemv_fits(int64_t M, int64_t K);

}  // namespace gpu
}  // namespace lt8
