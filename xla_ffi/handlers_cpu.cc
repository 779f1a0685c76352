// XLA FFI handlers for platform "cpu".
#include "handlers.h"
#include "registry.h"

namespace lt8::ffi {
namespace {
const Exec kCpu{};
}  // namespace

// The lambdas prepend the CPU execution context to the decoded arguments.
XLA_FFI_DEFINE_HANDLER_SYMBOL(
    lt8_quantize_rows_cpu, [](auto... a) { return QuantizeRowsImpl(kCpu, a...); },
    BindQuantizeRows(xffi::Ffi::Bind()));
XLA_FFI_DEFINE_HANDLER_SYMBOL(
    lt8_dequantize_rows_cpu, [](auto... a) { return DequantizeRowsImpl(kCpu, a...); },
    BindDequantizeRows(xffi::Ffi::Bind()));
XLA_FFI_DEFINE_HANDLER_SYMBOL(
    lt8_int8_gemm_cpu, [](auto... a) { return Int8GemmImpl(kCpu, a...); },
    BindInt8Gemm(xffi::Ffi::Bind()));
XLA_FFI_DEFINE_HANDLER_SYMBOL(
    lt8_dequant_epilogue_cpu, [](auto... a) { return DequantEpilogueImpl(kCpu, a...); },
    BindDequantEpilogue(xffi::Ffi::Bind()));
XLA_FFI_DEFINE_HANDLER_SYMBOL(
    lt8_transform_layout_cpu, [](auto... a) { return TransformLayoutImpl(kCpu, a...); },
    BindTransformLayout(xffi::Ffi::Bind()));
XLA_FFI_DEFINE_HANDLER_SYMBOL(
    lt8_int8_linear_cpu, [](auto... a) { return Int8LinearImpl(kCpu, a...); },
    BindInt8Linear(xffi::Ffi::Bind()));
XLA_FFI_DEFINE_HANDLER_SYMBOL(
    lt8_int8_weight_linear_cpu, [](auto... a) { return Int8WeightLinearImpl(kCpu, a...); },
    BindInt8WeightLinear(xffi::Ffi::Bind()));
XLA_FFI_DEFINE_HANDLER_SYMBOL(
    lt8_int8_linear_grad_input_cpu, [](auto... a) { return Int8LinearGradInputImpl(kCpu, a...); },
    BindInt8LinearGradInput(xffi::Ffi::Bind()));

std::vector<Target> cpu_targets() {
  return {
      {"quantize_rows", reinterpret_cast<void*>(lt8_quantize_rows_cpu)},
      {"dequantize_rows", reinterpret_cast<void*>(lt8_dequantize_rows_cpu)},
      {"int8_gemm", reinterpret_cast<void*>(lt8_int8_gemm_cpu)},
      {"dequant_epilogue", reinterpret_cast<void*>(lt8_dequant_epilogue_cpu)},
      {"transform_layout", reinterpret_cast<void*>(lt8_transform_layout_cpu)},
      {"int8_linear", reinterpret_cast<void*>(lt8_int8_linear_cpu)},
      {"int8_weight_linear", reinterpret_cast<void*>(lt8_int8_weight_linear_cpu)},
      {"int8_linear_grad_input", reinterpret_cast<void*>(lt8_int8_linear_grad_input_cpu)},
  };
}

}  // namespace lt8::ffi
