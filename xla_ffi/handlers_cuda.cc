// XLA FFI handlers for platform "CUDA": the same Impls as the cpu file, on XLA's stream.
// Every lt8 CUDA launch is asynchronous and allocation-free, so all are command-buffer safe.
#include <cuda_runtime_api.h>

#include "handlers.h"
#include "registry.h"

namespace lt8::ffi {
namespace {
Exec on_stream(cudaStream_t s) {
  return Exec{Device::kCUDA, s, -1};
}
auto cuda_bind() {
  return xffi::Ffi::Bind().Ctx<xffi::PlatformStream<cudaStream_t>>();
}
}  // namespace

#define LT8_CUDA_HANDLER(symbol, impl, binder)                                    \
  XLA_FFI_DEFINE_HANDLER_SYMBOL(                                                  \
      symbol, [](cudaStream_t s, auto... a) { return impl(on_stream(s), a...); }, \
      binder(cuda_bind()), {xffi::Traits::kCmdBufferCompatible})

LT8_CUDA_HANDLER(lt8_quantize_rows_cuda, QuantizeRowsImpl, BindQuantizeRows);
LT8_CUDA_HANDLER(lt8_dequantize_rows_cuda, DequantizeRowsImpl, BindDequantizeRows);
LT8_CUDA_HANDLER(lt8_int8_gemm_cuda, Int8GemmImpl, BindInt8Gemm);
LT8_CUDA_HANDLER(lt8_dequant_epilogue_cuda, DequantEpilogueImpl, BindDequantEpilogue);
LT8_CUDA_HANDLER(lt8_transform_layout_cuda, TransformLayoutImpl, BindTransformLayout);
LT8_CUDA_HANDLER(lt8_int8_linear_cuda, Int8LinearImpl, BindInt8Linear);
LT8_CUDA_HANDLER(lt8_int8_weight_linear_cuda, Int8WeightLinearImpl, BindInt8WeightLinear);
LT8_CUDA_HANDLER(lt8_int8_linear_grad_input_cuda, Int8LinearGradInputImpl, BindInt8LinearGradInput);

std::vector<Target> cuda_targets() {
  return {
      {"quantize_rows", reinterpret_cast<void*>(lt8_quantize_rows_cuda)},
      {"dequantize_rows", reinterpret_cast<void*>(lt8_dequantize_rows_cuda)},
      {"int8_gemm", reinterpret_cast<void*>(lt8_int8_gemm_cuda)},
      {"dequant_epilogue", reinterpret_cast<void*>(lt8_dequant_epilogue_cuda)},
      {"transform_layout", reinterpret_cast<void*>(lt8_transform_layout_cuda)},
      {"int8_linear", reinterpret_cast<void*>(lt8_int8_linear_cuda)},
      {"int8_weight_linear", reinterpret_cast<void*>(lt8_int8_weight_linear_cuda)},
      {"int8_linear_grad_input", reinterpret_cast<void*>(lt8_int8_linear_grad_input_cuda)},
  };
}

}  // namespace lt8::ffi
