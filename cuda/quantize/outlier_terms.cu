// The outlier columns' float terms of the fused linear op added onto a float32 base (the sharded
// linear ops of lt8.jax.partitioning): out = base + x[:, k] * W[:, k] for each outlier column k in
// ascending order, one rounding per multiply and per add, as the fused epilogue
// (linear/int8_linear.cu) and the CPU twin (outlier_terms_cpu.cc) compute them.
//
// A block owns kThreads consecutive output columns n and kTermRows rows m at a time; it compacts
// the outlier columns of the mask in ordered chunks into shared memory (no scratch, no host sync)
// and each thread accumulates its column for the block's rows. Cost: M * N * (outlier columns)
// multiply-adds, like the fused epilogue's outlier terms.
//
// With 16-bit x and more than kOutlierTcMinCount outlier columns (tc_count says so, read on
// the device) this kernel returns at once and the fused op's tensor-core path
// (linear/outlier_tc.cu, terms mode) sums them instead, as the fused op itself does: a
// row-parallel shard of Llama's down_proj has every column flagged over a long prompt, and
// M * N * K multiply-adds on CUDA cores with the weight read along k made a 2-device JAX prefill
// of an 8-layer Llama-3-8B-shaped model take 553 ms against 31 ms on one (benchmarks/NOTES.md v6).
#include <algorithm>
#include <cstdint>

#include "common/cuda_check.cuh"
#include "common/device_types.cuh"
#include "common/launch_shape.cuh"
#include "common/numerics.h"
#include "internal.h"
#include "linear/outlier_tc.cuh"
#include "quantize/quantize.cuh"
#include "quantize/outlier_compaction.cuh"

namespace lt8 {
namespace gpu {
namespace {

constexpr int kTermRows = 8;        // rows per block step (weights reused across them)
constexpr int kTermPerThread = 16;  // mask bytes per thread per compaction step
constexpr int kTermChunk = kThreads * kTermPerThread;

template <typename T>
__global__ void __launch_bounds__(kThreads)
    add_outlier_terms_kernel(const T* __restrict__ x, const uint8_t* __restrict__ mask,
                             const int8_t* __restrict__ CB, const float* __restrict__ SCB,
                             const float* base, int64_t M, int64_t N, int64_t K, float* out,
                             const int32_t* __restrict__ tc_count) {
  if (tc_count != nullptr && *tc_count > kOutlierTcMinCount) return;  // the tensor cores' call
  __shared__ int32_t s_idx[kTermChunk];
  __shared__ int warp_total[kThreads / 32];
  const int64_t n = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  const bool nv = n < N;
  const float scb = nv ? SCB[n] : 0.0f;
  for (int64_t m0 = static_cast<int64_t>(blockIdx.y) * kTermRows; m0 < M;
       m0 += static_cast<int64_t>(gridDim.y) * kTermRows) {
    float v[kTermRows];
#pragma unroll
    for (int r = 0; r < kTermRows; ++r) v[r] = nv && m0 + r < M ? base[(m0 + r) * N + n] : 0.0f;
    for (int64_t c0 = 0; c0 < K; c0 += kTermChunk) {
      const int64_t k0 = c0 + static_cast<int64_t>(threadIdx.x) * kTermPerThread;
      uint32_t flags = 0;  // bit p: column k0 + p is an outlier column
#pragma unroll
      for (int p = 0; p < kTermPerThread; ++p)
        if (k0 + p < K && mask[k0 + p]) flags |= 1u << p;
      // Ends with a barrier: s_idx[0 .. count) holds this chunk's columns, ascending.
      const int count = compact_step<kThreads>(flags, k0, 0, warp_total, s_idx);
      for (int j = 0; j < count; ++j) {
        const int64_t k = s_idx[j];
        const float w = nv ? weight_value(CB[n * K + k], scb) : 0.0f;
#pragma unroll
        for (int r = 0; r < kTermRows; ++r)
          if (m0 + r < M) v[r] = __fadd_rn(v[r], __fmul_rn(to_float(x[(m0 + r) * K + k]), w));
      }
      __syncthreads();  // s_idx is rewritten by the next chunk
    }
    if (nv) {
#pragma unroll
      for (int r = 0; r < kTermRows; ++r)
        if (m0 + r < M) out[(m0 + r) * N + n] = v[r];
    }
  }
}

}  // namespace

Status add_outlier_terms(const Exec& ex, DType x_dtype, const void* x, const uint8_t* outlier_mask,
                         const int8_t* CB, const float* SCB, const float* base, int64_t M,
                         int64_t N, int64_t K, float* out, const TermsScratch& s) {
  return dispatch_float(x_dtype, [&](auto tag) -> Status {
    using T = decltype(tag);
    if (M == 0 || N == 0) return Status::Ok();
    DeviceGuard guard(ex);
    if (!guard.ok()) return guard.status();
    cudaStream_t st = stream_of(ex);
    // The tensor-core path exists for 16-bit x (scratch carved) on sm_80+; which of the two
    // kernels does the work is decided on the device from the outlier count.
    const bool tc = s.tc_x != nullptr && K > 0 && outlier_tc_supported(M);
    if (tc) {
      Status cs = launch_compact_outliers(st, outlier_mask, K, s.outlier_idx, s.outlier_count);
      if (!cs.ok()) return cs;
    }
    dim3 grid(static_cast<unsigned>(ceil_div(N, kThreads)),
              static_cast<unsigned>(std::min(ceil_div(M, kTermRows), kMaxGridYZ)));
    add_outlier_terms_kernel<T><<<grid, kThreads, 0, st>>>(static_cast<const T*>(x), outlier_mask,
                                                           CB, SCB, base, M, N, K, out,
                                                           tc ? s.outlier_count : nullptr);
    LT8_CHECK_LAUNCH("add_outlier_terms_kernel");
    if (!tc) return Status::Ok();
    return launch_outlier_tc_terms(st, x_dtype, x, CB, SCB, s, base, M, N, K, out);
  });
}

}  // namespace gpu
}  // namespace lt8
