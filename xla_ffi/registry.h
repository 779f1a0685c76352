// The FFI targets this build provides, by platform; bindings/module.cc turns them into capsules.
#pragma once

#include <vector>

namespace lt8::ffi {

struct Target {
  const char* name;  // registered as "lt8_<name>"
  void* handler;     // an XLA_FFI_Handler*
};

std::vector<Target> cpu_targets();
std::vector<Target> cuda_targets();  // defined only when built with CUDA

}  // namespace lt8::ffi
