// The decode path's GEMV: picks the mma.sync or the dp4a engine (same results, bit for bit), and
// beside them the dense-outlier GEMV for many outlier columns (dense_outlier_gemv.cu).
#include <climits>
#include <cstdint>
#include <type_traits>

#include "common/launch_shape.cuh"
#include "gemv/gemv.cuh"

namespace lt8 {
namespace gpu {

template <typename T>
Status launch_linear_gemv(cudaStream_t st, const int8_t* q, const T* x, const int8_t* CB,
                          const float* SCB, const LinearScratch& s, DType bias_dtype,
                          const void* bias, int64_t M, int64_t N, int64_t K, float threshold,
                          bool after_prepare, T* out) {
  // Many outlier columns: the dense-outlier GEMV takes over (both read the count on the device
  // and the one not in charge returns at once).
  // (float16/bfloat16 activations only, as on the large-batch path: float32 ones keep the exact
  // epilogue whatever the count.)
  const bool dense = !std::is_same_v<T, float> && threshold > 0.0f && dense_outlier_gemv_fits(K);
  const int exact_max = dense ? kGemvExactMaxOutliers : INT_MAX;
  // Few rows: the dp4a GEMV; from kGemvTcMinRows on (sm_80+): the tensor-core GEMV, which splits
  // K over its warps (gemv.cuh, tensor_core_gemv).
  Status st_gemv = tensor_core_gemv(M, N, K)
                       ? launch_mma_gemv<T>(st, q, x, CB, SCB, s, bias_dtype, bias, M, N, K,
                                            exact_max, after_prepare, out)
                       : launch_dp4a_gemv<T>(st, q, x, CB, SCB, s, bias_dtype, bias, M, N, K,
                                             exact_max, after_prepare, out);
  if (!st_gemv.ok() || !dense) return st_gemv;
  return launch_dense_outlier_gemv<T>(st, q, x, CB, SCB, s, bias_dtype, bias, M, N, K, out);
}

#define LT8_INSTANTIATE(T)                                                                      \
  template Status launch_linear_gemv<T>(cudaStream_t, const int8_t*, const T*, const int8_t*,   \
                                        const float*, const LinearScratch&, DType, const void*, \
                                        int64_t, int64_t, int64_t, float, bool, T*);
LT8_FOR_EACH_FLOAT_TYPE(LT8_INSTANTIATE)
#undef LT8_INSTANTIATE

}  // namespace gpu
}  // namespace lt8
