// CPU input gradient of the int8 linear op (the CPU twin of grad_input.cu):
// grad_x[m, k] = sum_n (g[m, n] * (SCB[n] / 127)) * CB[n, k] in float, n ascending.
// Work is split over blocks of up to 4 rows x kColsPerTask columns of grad_x. With AVX2
// (cpu_simd/float_weight_avx2.cc) 16 columns of 4 rows keep their sums in registers while their
// weight column strip streams by, each sum in the scalar order: the same bits.
#include <algorithm>
#include <vector>

#include "common/host_types.h"
#include "common/numerics.h"
#include "cpu_simd/cpu_isa.h"
#include "cpu_simd/rows_simd.h"
#include "cpu_simd/thread_pool.h"

namespace lt8::cpu {
namespace {

constexpr int kRows = 4;
constexpr int64_t kColsPerTask = 256;  // a strip of N x 256 weight bytes stays in L2

template <typename T>
void grad_input_impl(const T* g, const int8_t* CB, const float* SCB, int64_t M, int64_t N,
                     int64_t K, T* grad_x) {
  const bool simd = active_cpu_isa() >= CpuIsa::kAvx2;
  parallel_blocks(
      M, kRows, K, kColsPerTask, double(M) * N * K,
      [&](int64_t m0, int64_t m1, int64_t k0, int64_t k1) {
        const int rows = static_cast<int>(m1 - m0);
        const int64_t len = k1 - k0;
        // gs[r][n] = g[m0 + r, n] * (SCB[n] / 127): the scalar loop's per-term scale.
        thread_local std::vector<float> gs;  // reused by this thread's next blocks and calls
        gs.resize(static_cast<size_t>(kRows * N));
        for (int r = 0; r < rows; ++r)
          for (int64_t n = 0; n < N; ++n)
            gs[r * N + n] = load(g[(m0 + r) * N + n]) * (SCB[n] * kInv127);
        int64_t j0 = 0;
        if (simd) {  // 16 columns at a time with their sums in registers
          for (; j0 + 16 <= len; j0 += 16) {
            float acc[kRows][16];
            simd::grad_rows16_avx2(acc, gs.data(), N, rows, CB + k0 + j0, K, N);
            for (int r = 0; r < rows; ++r)
              for (int j = 0; j < 16; ++j) grad_x[(m0 + r) * K + k0 + j0 + j] = store<T>(acc[r][j]);
          }
        }
        // The rest (all of it without AVX2): the scalar loop over the remaining columns.
        const int64_t rest = len - j0;
        if (rest > 0) {
          thread_local std::vector<float> buf;
          buf.assign(static_cast<size_t>(kRows * rest), 0.0f);
          for (int64_t n = 0; n < N; ++n) {
            const int8_t* w = CB + n * K + k0 + j0;
            for (int r = 0; r < rows; ++r) {
              const float s = gs[r * N + n];
              for (int64_t j = 0; j < rest; ++j) buf[r * rest + j] += s * static_cast<float>(w[j]);
            }
          }
          for (int r = 0; r < rows; ++r)
            for (int64_t j = 0; j < rest; ++j)
              grad_x[(m0 + r) * K + k0 + j0 + j] = store<T>(buf[r * rest + j]);
        }
      });
}

}  // namespace

Status int8_linear_grad_input(DType g_dtype, const void* grad_out, const int8_t* CB,
                              const float* SCB, int64_t M, int64_t N, int64_t K, void* grad_x) {
  return dispatch_float(g_dtype, [&](auto tag) {
    using T = decltype(tag);
    grad_input_impl(static_cast<const T*>(grad_out), CB, SCB, M, N, K, static_cast<T*>(grad_x));
    return Status::Ok();
  });
}

}  // namespace lt8::cpu
