// Declarations shared by the CPU and CUDA implementations (not part of the public API).
#pragma once

#include "lt8.h"

namespace lt8 {

// Scratch carved out of the caller's workspace for the fused linear op. Every piece is aligned to
// 256 bytes so CUDA kernels may use vector loads on it.
struct LinearScratch {
  int8_t* q = nullptr;               // (M, K) quantized activations, outlier columns zeroed
  float* row_scale = nullptr;        // (M,)
  uint8_t* mask = nullptr;           // (K,) outlier column flags
  int32_t* outlier_idx = nullptr;    // (K,) compacted outlier column indices (first *count valid)
  int32_t* outlier_count = nullptr;  // (1,)
  // Only when M > small_batch_rows() (the GPU's tensor-core path; the CPU ignores them):
  int32_t* acc = nullptr;      // (M, N) int32 GEMM result
  float* outlier_w = nullptr;  // (kStagedOutliers, N) gathered outlier columns of W
  float* outlier_x = nullptr;  // (M, kStagedOutliers) gathered outlier columns of x
  void* gemm_ws = nullptr;     // cuBLASLt workspace
  size_t gemm_ws_bytes = 0;
  // Gather buffers of the tensor-core outlier path (cuda/linear/outlier_tc.cu), 2-byte elements
  // of x's dtype, rows of outlier_gather_stride(K): (M, .) activations and (N, .) weights.
  // Carved only where that path can run (CUDA, M > 16, 16-bit x, threshold > 0): non-null
  // means "take it when the count asks for it".
  void* tc_x = nullptr;
  void* tc_w = nullptr;
  // Builds with CUTLASS's sm_90a outlier GEMM (LT8_WITH_CUTLASS_SM90) only, beside tc_x / tc_w:
  // its (M, N) float32 result and its workspace (kOutlierGemmSm90WorkspaceBytes).
  float* tc_d = nullptr;
  void* tc_gemm_ws = nullptr;
};

// Scratch of add_outlier_terms' tensor-core path (carve_terms_scratch): the compacted outlier
// columns and the gather buffers of cuda/linear/outlier_tc.cu. All null where the path cannot
// run (CPU, float32 x).
struct TermsScratch {
  int32_t* outlier_idx = nullptr;    // (K,)
  int32_t* outlier_count = nullptr;  // (1,)
  void* tc_x = nullptr;              // (M, outlier_gather_stride(K)) of x's dtype
  void* tc_w = nullptr;              // (N, outlier_gather_stride(K)) of x's dtype
  float* tc_d = nullptr;             // as LinearScratch::tc_d
  void* tc_gemm_ws = nullptr;        // as LinearScratch::tc_gemm_ws
};

// Batches up to this many rows take the GPU's memory-bound GEMV; larger ones the int8 GEMM.
// small_batch_rows() (lt8.h) is it, or less through LT8_GEMV_MAX_ROWS (a benchmark knob).
constexpr int kSmallBatchRows = 16;
// Outlier columns whose weights and activations the tensor-core path gathers once per call.
constexpr int kStagedOutliers = 64;
// k-tile of the tensor-core outlier GEMM; its gather buffers' rows are K rounded up to it.
constexpr int kOutlierGatherTile = 64;
inline int64_t outlier_gather_stride(int64_t K) {
  return (K + kOutlierGatherTile - 1) / kOutlierGatherTile * kOutlierGatherTile;
}
// cuBLASLt workspace reserved in the fused op's scratch.
constexpr size_t kGemmWorkspaceBytes = size_t{8} << 20;
// Workspace of the sm_90a outlier GEMM (its device-written arguments and CUTLASS's tensor maps,
// a few per SM): checked against CUTLASS's own figure at every launch.
constexpr size_t kOutlierGemmSm90WorkspaceBytes = size_t{1} << 20;
// Whether this build carries that GEMM (then the gather scratch includes its result and workspace).
#ifdef LT8_WITH_CUTLASS_SM90
constexpr bool kWithOutlierGemmSm90 = true;
#else
constexpr bool kWithOutlierGemmSm90 = false;
#endif

// Returns the number of bytes needed; when `base` is non-null also fills `s`.
// The GPU's large-batch pieces (acc, staging, cuBLASLt workspace) only for device kCUDA and
// M > small_batch_rows(); the tensor-core outlier gather buffers only when also x is 16-bit and
// threshold > 0 (the only calls that can take that path).
size_t carve_linear_scratch(void* base, int64_t M, int64_t N, int64_t K, DType x_dtype,
                            float threshold, Device device, LinearScratch* s);
// The same for add_outlier_terms: nothing unless device is kCUDA and x is 16-bit.
size_t carve_terms_scratch(void* base, int64_t M, int64_t N, int64_t K, DType x_dtype,
                           Device device, TermsScratch* s);

// Host-side float <-> fp16/bf16 with round-to-nearest-even (matches torch/numpy/CUDA casts).
float half_bits_to_float(uint16_t h);
uint16_t float_to_half_bits(float f);
inline float bf16_bits_to_float(uint16_t b) {
  union {
    uint32_t u;
    float f;
  } v{static_cast<uint32_t>(b) << 16};
  return v.f;
}
uint16_t float_to_bf16_bits(float f);

// One function per op of ops.def with lt8::<op>'s contract, minus the Exec (the fused op takes
// its carved scratch instead of the raw workspace). dispatch.cc's LT8_ROUTE calls them.
namespace cpu {
Status quantize_rows(DType x_dtype, const void* x, int64_t M, int64_t K, float threshold, int8_t* q,
                     float* row_scale, uint8_t* outlier_mask);
Status dequantize_rows(const int8_t* q, const float* row_scale, int64_t M, int64_t K,
                       DType out_dtype, void* out);
Status int8_gemm(const int8_t* A, const int8_t* B, int64_t M, int64_t N, int64_t K, int32_t* C);
Status dequant_epilogue(const int32_t* C, const float* row_scale, const float* col_scale,
                        DType bias_dtype, const void* bias, int64_t M, int64_t N, DType out_dtype,
                        void* out);
Status transform_layout(const int8_t* in, int8_t* out, int64_t rows, int64_t cols, Layout from,
                        Layout to);
Status int8_linear(DType x_dtype, const void* x, const int8_t* CB, const float* SCB,
                   DType bias_dtype, const void* bias, int64_t M, int64_t N, int64_t K,
                   float threshold, void* out, const LinearScratch& s);
Status int8_linear_grad_input(DType g_dtype, const void* grad_out, const int8_t* CB,
                              const float* SCB, int64_t M, int64_t N, int64_t K, void* grad_x);
Status int8_weight_linear(DType x_dtype, const void* x, const int8_t* CB, const float* SCB,
                          DType bias_dtype, const void* bias, int64_t M, int64_t N, int64_t K,
                          void* out);
Status add_outlier_terms(DType x_dtype, const void* x, const uint8_t* outlier_mask,
                         const int8_t* CB, const float* SCB, const float* base, int64_t M,
                         int64_t N, int64_t K, float* out);
}  // namespace cpu

#ifdef LT8_WITH_CUDA
// Same contracts as cpu::, launched on ex.stream on ex.device_index. No host synchronisation, no
// allocation: safe inside CUDA graph capture and XLA command buffers.
namespace gpu {
Status quantize_rows(const Exec& ex, DType x_dtype, const void* x, int64_t M, int64_t K,
                     float threshold, int8_t* q, float* row_scale, uint8_t* outlier_mask);
Status dequantize_rows(const Exec& ex, const int8_t* q, const float* row_scale, int64_t M,
                       int64_t K, DType out_dtype, void* out);
Status int8_gemm(const Exec& ex, const int8_t* A, const int8_t* B, int64_t M, int64_t N, int64_t K,
                 int32_t* C);
Status dequant_epilogue(const Exec& ex, const int32_t* C, const float* row_scale,
                        const float* col_scale, DType bias_dtype, const void* bias, int64_t M,
                        int64_t N, DType out_dtype, void* out);
Status transform_layout(const Exec& ex, const int8_t* in, int8_t* out, int64_t rows, int64_t cols,
                        Layout from, Layout to);
Status int8_linear(const Exec& ex, DType x_dtype, const void* x, const int8_t* CB, const float* SCB,
                   DType bias_dtype, const void* bias, int64_t M, int64_t N, int64_t K,
                   float threshold, void* out, const LinearScratch& s);
Status int8_linear_grad_input(const Exec& ex, DType g_dtype, const void* grad_out, const int8_t* CB,
                              const float* SCB, int64_t M, int64_t N, int64_t K, void* grad_x);
Status int8_weight_linear(const Exec& ex, DType x_dtype, const void* x, const int8_t* CB,
                          const float* SCB, DType bias_dtype, const void* bias, int64_t M,
                          int64_t N, int64_t K, void* out);
Status add_outlier_terms(const Exec& ex, DType x_dtype, const void* x, const uint8_t* outlier_mask,
                         const int8_t* CB, const float* SCB, const float* base, int64_t M,
                         int64_t N, int64_t K, float* out, const TermsScratch& s);
}  // namespace gpu
#endif

}  // namespace lt8
