// CPU dequantization epilogue of an int32 GEMM result (the CPU twin of dequant_epilogue.cu).
#include <algorithm>
#include <vector>

#include "common/host_types.h"
#include "common/numerics.h"
#include "cpu_simd/cpu_isa.h"
#include "cpu_simd/thread_pool.h"
#include "linear/epilogue_cpu.h"

namespace lt8::cpu {
namespace {

// The definition: dequant, then the outlier columns' terms in ascending k, then bias, rounding
// after every operation (simd::epilogue_avx2 does the same lane-wise).
template <typename T>
void epilogue_scalar(const simd::EpilogueArgs& e, int64_t m0, int64_t m1, int64_t n0, int64_t n1) {
  T* out = static_cast<T*>(e.out);
  for (int64_t m = m0; m < m1; ++m)
    for (int64_t n = n0; n < n1; ++n) {
      float v = dequant(e.C[m * e.N + n], e.row_scale[m], e.col_scale[n]);
      for (int32_t j = 0; j < e.count; ++j)
        v += e.outlier_x[m * e.count + j] * e.outlier_w[j * e.w_ld + (n - e.w_n0)];
      if (e.bias != nullptr) v += e.bias[n];
      out[m * e.N + n] = store<T>(v);
    }
}

}  // namespace

void epilogue_block(const simd::EpilogueArgs& e, int64_t m0, int64_t m1, int64_t n0, int64_t n1) {
  if (active_cpu_isa() >= CpuIsa::kAvx2) {
    simd::epilogue_avx2(e, m0, m1, n0, n1);
    return;
  }
  dispatch_float(e.out_dtype, [&](auto tag) {
    epilogue_scalar<decltype(tag)>(e, m0, m1, n0, n1);
    return Status::Ok();
  });
}

Status dequant_epilogue(const int32_t* C, const float* row_scale, const float* col_scale,
                        DType bias_dtype, const void* bias, int64_t M, int64_t N, DType out_dtype,
                        void* out) {
  std::vector<float> b;
  if (bias != nullptr) {
    b.resize(static_cast<size_t>(N));
    for (int64_t n = 0; n < N; ++n) b[n] = load_any(bias_dtype, bias, n);
  }
  simd::EpilogueArgs e;
  e.C = C;
  e.N = N;
  e.row_scale = row_scale;
  e.col_scale = col_scale;
  e.bias = b.empty() ? nullptr : b.data();
  e.out_dtype = out_dtype;
  e.out = out;
  const int64_t per = std::max<int64_t>(1, (int64_t{1} << 16) / std::max<int64_t>(N, 1));
  parallel_for((M + per - 1) / per, cpu_threads(), [&](int64_t task) {
    epilogue_block(e, task * per, std::min(M, (task + 1) * per), 0, N);
  });
  return Status::Ok();
}

}  // namespace lt8::cpu
