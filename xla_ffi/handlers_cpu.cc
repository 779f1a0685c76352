// XLA FFI handlers for platform "cpu": one per op of cuda/ops.def.
#include "handlers.h"
#include "registry.h"

namespace lt8::ffi {
namespace {
const Exec kCpu{};
}  // namespace

// The lambdas prepend the CPU execution context to the decoded arguments.
#define LT8_OP(name, Camel)                                                \
  XLA_FFI_DEFINE_HANDLER_SYMBOL(                                           \
      lt8_##name##_cpu, [](auto... a) { return Camel##Impl(kCpu, a...); }, \
      Bind##Camel(xffi::Ffi::Bind()));
#include "ops.def"

std::vector<Target> cpu_targets() {
  return {
#define LT8_OP(name, Camel) {#name, reinterpret_cast<void*>(lt8_##name##_cpu)},
#include "ops.def"
  };
}

}  // namespace lt8::ffi
