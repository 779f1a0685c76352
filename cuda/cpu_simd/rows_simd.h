// AVX2 + F16C versions of the CPU row kernels: outlier mask, row quantization and the fused
// dequantization epilogue. They perform the scalar kernels' float operations in the same order
// (no FMA contraction: the file is compiled for AVX2 without FMA), so results are bit-identical
// to them; callers use them only when active_cpu_isa() >= CpuIsa::kAvx2.
#pragma once

#include <cstdint>

#include "lt8.h"

namespace lt8::cpu::simd {

// mask[k] = 1 where some |x[m, k]| >= threshold, m in [0, M) (other entries left as they are).
void outlier_mask_avx2(DType t, const void* x, int64_t M, int64_t K, float threshold,
                       uint8_t* mask);

// One row of quantize_rows given the outlier mask: row_scale = NaN-winning absmax over the
// non-outlier columns, q = quantize_value(x, absmax), 0 in outlier columns. Returns false, having
// written nothing, for a row with a NaN outside the outlier columns: the caller runs the scalar
// row there, whose sequential absmax decides which NaN (sign, payload) becomes the scale.
bool quantize_row_avx2(DType t, const void* row, int64_t K, const uint8_t* mask, int8_t* q,
                       float* row_scale);

// out[m, n] = dequant(C[m, n], row_scale[m], col_scale[n]) + sum_j outlier_x[m, j] *
// W_j[n] (j ascending) + bias[n], stored as out_dtype; C and out have row stride N, and
// W_j[n] = outlier_w[j * w_ld + n - w_n0] (the caller may pass just the columns of one block).
struct EpilogueArgs {
  const int32_t* C = nullptr;
  int64_t N = 0;
  const float* row_scale = nullptr;
  const float* col_scale = nullptr;
  int32_t count = 0;                 // outlier columns
  const float* outlier_x = nullptr;  // (M, count): x at the outlier columns, as float
  const float* outlier_w = nullptr;  // weight_value(CB[n, k_j], col_scale[n]), see above
  int64_t w_ld = 0, w_n0 = 0;
  const float* bias = nullptr;  // (N,) as float, or null
  DType out_dtype = DType::kF32;
  void* out = nullptr;
};
void epilogue_avx2(const EpilogueArgs& e, int64_t m0, int64_t m1, int64_t n0, int64_t n1);

// acc[r][j] = sum over n ascending of gs[r * gs_ld + n] * float(w[n * ldw + j]) (a multiply,
// then an add, from 0), r < rows (<= 4), j < 16, n < n_count: the input gradient's sums for 16
// adjacent columns of 4 rows, held in registers while the weight column strip streams by.
void grad_rows16_avx2(float (*acc)[16], const float* gs, int64_t gs_ld, int rows, const int8_t* w,
                      int64_t ldw, int64_t n_count);

// out[r][j] = sum over k ascending of x[r][k] * wt[k * 8 + j] (a multiply, then an add, from
// 0), r < rows (<= 4), j < 8: the weight-only linear's scalar dot products for 8 columns at once
// (wt holds their dequantized weights transposed, K x 8).
void dot_columns8_avx2(const float* const* x, int rows, const float* wt, int64_t K,
                       float (*out)[8]);

}  // namespace lt8::cpu::simd
