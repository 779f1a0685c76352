// gpu::int8_linear, the fused LLM.int8() linear op: picks the path for the batch size and runs
// its stages. Decode sizes: gemv/ (one preparation launch, then a GEMV reading every weight byte
// once). Larger batches: quantize/ (mask, compaction, quantization), then cuBLASLt's int8 tensor
// cores with lt8's epilogue (cublaslt_linear.cu), or, where cuBLASLt declines, lt8's dp4a GEMM
// with the fused epilogue (dp4a_linear_epilogue.cuh). Every path computes the CPU reference's
// values (int8_linear_cpu.cc) in its order: dequant, outlier terms in ascending k, bias.
#include <cstdint>

#include "common/cuda_check.cuh"
#include "common/device_types.cuh"
#include "common/launch_shape.cuh"
#include "gemm/dp4a_gemm.cuh"
#include "gemv/gemv.cuh"
#include "internal.h"
#include "linear/cublaslt_linear.cuh"
#include "linear/dp4a_linear_epilogue.cuh"
#include "quantize/quantize.cuh"

namespace lt8 {
namespace gpu {
namespace {

// out[m, n] = 0 (+ bias[n]): the fused linear op with K == 0.
template <typename T>
__global__ void __launch_bounds__(kThreads)
    bias_fill_kernel(DType bias_dtype, const void* __restrict__ bias, int64_t M, int64_t N,
                     T* __restrict__ out) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const int64_t total = M * N;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total;
       i += stride) {
    float v = 0.0f;
    if (bias != nullptr) v = __fadd_rn(v, load_float_any(bias_dtype, bias, i % N));
    out[i] = from_float<T>(v);
  }
}

}  // namespace

Status int8_linear(const Exec& ex, DType x_dtype, const void* x, const int8_t* CB, const float* SCB,
                   DType bias_dtype, const void* bias, int64_t M, int64_t N, int64_t K,
                   float threshold, void* out, const LinearScratch& s) {
  return dispatch_float(x_dtype, [&](auto tag) -> Status {
    using T = decltype(tag);
    // The scratch is internal: with no output there is nothing observable to compute.
    if (M == 0 || N == 0) return Status::Ok();
    DeviceGuard guard(ex);
    if (!guard.ok()) return guard.status();
    cudaStream_t st = stream_of(ex);
    const T* xt = static_cast<const T*>(x);
    T* o = static_cast<T*>(out);

    if (K == 0) {  // empty reduction: out = 0 (+ bias); CB / SCB / x may be null
      bias_fill_kernel<T>
          <<<elementwise_blocks(M * N), kThreads, 0, st>>>(bias_dtype, bias, M, N, o);
      LT8_CHECK_LAUNCH("bias_fill_kernel");
      return Status::Ok();
    }

    // Decode sizes: one preparation launch, then the memory-bound GEMV that reads each weight
    // byte once: two launches in all.
    const bool gemv =
        M <= small_batch_rows() && K % 16 == 0 && is_aligned(CB, 16) && is_aligned(s.q, 16);
    if (gemv && K <= kPrepMaxK && is_aligned(xt, 4 * sizeof(T))) {
      Status ps = launch_prepare_small_batch<T>(st, xt, M, K, threshold, s);
      if (!ps.ok()) return ps;
      return launch_linear_gemv<T>(st, s.q, xt, CB, SCB, s, bias_dtype, bias, M, N, K, threshold,
                                   /*after_prepare=*/true, o);
    }

    // (1) the outlier mask, (2) the outlier columns compacted (the count stays on the device),
    // (3) x quantized into the scratch. Past the GEMV's sizes, where every column being an
    // outlier column makes the int8 GEMM stand aside (an MLP's down projection over a long
    // prompt), the quantizer reads the count and then skips x (benchmarks/NOTES.md v11).
    Status ms = launch_outlier_mask<T>(st, xt, M, K, threshold, s.mask);
    if (!ms.ok()) return ms;
    if (threshold > 0.0f) {
      Status cs = launch_compact_outliers(st, s.mask, K, s.outlier_idx, s.outlier_count);
      if (!cs.ok()) return cs;
    } else {
      LT8_CUDA_RETURN_IF_ERROR(cudaMemsetAsync(s.outlier_count, 0, sizeof(int32_t), st),
                               "cudaMemsetAsync(outlier_count)");
    }
    const bool int8_sm90 = !gemv && takes_int8_gemm_sm90(CB, s, M, N, K);
    Status qs = launch_quantize_rows<T>(st, xt, M, K, s.mask,
                                        int8_sm90 && threshold > 0.0f ? s.outlier_count : nullptr,
                                        s.q, s.row_scale);
    if (!qs.ok()) return qs;

    // (4a) decode sizes: a memory-bound GEMV that reads each weight byte once.
    if (gemv)
      return launch_linear_gemv<T>(st, s.q, xt, CB, SCB, s, bias_dtype, bias, M, N, K, threshold,
                                   /*after_prepare=*/false, o);

    // (4b) larger batches: int8 tensor cores (cuBLASLt) into int32 scratch, then the epilogue.
    Status err;
    if (launch_linear_tensor_core<T>(st, xt, CB, SCB, s, threshold, bias_dtype, bias, M, N, K,
                                     int8_sm90, o, &err))
      return Status::Ok();
    if (!err.ok()) return err;

    // (4c) fallback: lt8's dp4a GEMM with the fused dequant + outlier + bias epilogue.
    LinearEpilogue<T> epi{xt,
                          CB,
                          SCB,
                          s.row_scale,
                          s.outlier_idx,
                          s.outlier_count,
                          bias_dtype,
                          bias,
                          o,
                          M,
                          N,
                          K,
                          N % 4 == 0 && is_aligned(o, 4 * sizeof(T))};
    return launch_gemm(st, s.q, CB, M, N, K, epi, "int8_gemm_kernel<LinearEpilogue>");
  });
}

}  // namespace gpu
}  // namespace lt8
