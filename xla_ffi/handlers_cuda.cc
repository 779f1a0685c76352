// XLA FFI handlers for platform "CUDA": the same Impls as the cpu file, on XLA's stream, one per op
// of cuda/ops.def. Every lt8 CUDA launch is asynchronous and allocation-free, so all are
// command-buffer safe.
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

#define LT8_OP(name, Camel)                                                      \
  XLA_FFI_DEFINE_HANDLER_SYMBOL(                                                 \
      lt8_##name##_cuda,                                                         \
      [](cudaStream_t s, auto... a) { return Camel##Impl(on_stream(s), a...); }, \
      Bind##Camel(cuda_bind()), {xffi::Traits::kCmdBufferCompatible});
#include "ops.def"

std::vector<Target> cuda_targets() {
  return {
#define LT8_OP(name, Camel) {#name, reinterpret_cast<void*>(lt8_##name##_cuda)},
#include "ops.def"
  };
}

}  // namespace lt8::ffi
