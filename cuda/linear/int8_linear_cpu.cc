// CPU fused LLM.int8() linear op (the CPU twin of int8_linear.cu): quantize x, compact the outlier
// columns, then the int8 GEMM (cpu_simd/int8_gemm.h) with the epilogue run on each finished block
// of its result: per output the int8 dot product, dequantized, plus the outlier columns' terms in
// ascending k, plus bias, in that order (the CUDA epilogues follow the same order).
#include <vector>

#include "common/host_types.h"
#include "common/numerics.h"
#include "cpu_simd/int8_gemm.h"
#include "cpu_simd/scratch.h"
#include "linear/epilogue_cpu.h"
#include "quantize/quantize_cpu.h"

namespace lt8::cpu {
namespace {}  // namespace

Status int8_linear(DType x_dtype, const void* x, const int8_t* CB, const float* SCB,
                   DType bias_dtype, const void* bias, int64_t M, int64_t N, int64_t K,
                   float threshold, void* out, const LinearScratch& s) {
  Status st = quantize_rows(x_dtype, x, M, K, threshold, s.q, s.row_scale, s.mask);
  if (!st.ok()) return st;
  const int32_t count = compact_outliers(s.mask, K, s.outlier_idx);
  *s.outlier_count = count;
  if (M == 0 || N == 0) return Status::Ok();

  // x at the outlier columns as float32 (the values load() gives), gathered once.
  std::vector<float> ox(static_cast<size_t>(M) * count);
  dispatch_float(x_dtype, [&](auto tag) {
    const auto* xt = static_cast<const decltype(tag)*>(x);
    for (int64_t m = 0; m < M; ++m)
      for (int32_t j = 0; j < count; ++j) ox[m * count + j] = load(xt[m * K + s.outlier_idx[j]]);
    return Status::Ok();
  });
  std::vector<float> b;
  if (bias != nullptr) {
    b.resize(static_cast<size_t>(N));
    for (int64_t n = 0; n < N; ++n) b[n] = load_any(bias_dtype, bias, n);
  }

  // The int32 products (the CPU's share of the workspace stays unused: it is sized for the GPU).
  Scratch acc_buf(Scratch::kLinearAcc, static_cast<size_t>(M * N) * sizeof(int32_t));
  int32_t* acc = static_cast<int32_t*>(acc_buf.get());
  if (acc == nullptr) return Status::Internal("out of host memory for the int8 GEMM result");
  simd::EpilogueArgs e;
  e.C = acc;
  e.N = N;
  e.row_scale = s.row_scale;
  e.col_scale = SCB;
  e.count = count;
  e.outlier_x = ox.data();
  e.bias = b.empty() ? nullptr : b.data();
  e.out_dtype = x_dtype;
  e.out = out;
  const GemmBlockFn epilogue = [&](int64_t m0, int64_t m1, int64_t n0, int64_t n1) {
    // W at the outlier columns, gathered per block while the GEMM has just read these rows of
    // CB (a gather over all of CB up front would miss the cache once per outlier and row).
    std::vector<float> ow(static_cast<size_t>(count) * (n1 - n0));
    for (int32_t j = 0; j < count; ++j)
      for (int64_t n = n0; n < n1; ++n)
        ow[j * (n1 - n0) + (n - n0)] = weight_value(CB[n * K + s.outlier_idx[j]], SCB[n]);
    simd::EpilogueArgs eb = e;
    eb.outlier_w = ow.data();
    eb.w_ld = n1 - n0;
    eb.w_n0 = n0;
    epilogue_block(eb, m0, m1, n0, n1);
  };
  if (!int8_gemm_cpu(s.q, CB, M, N, K, acc, &epilogue))
    return Status::Internal("out of host memory in int8_linear");
  return Status::Ok();
}

}  // namespace lt8::cpu
