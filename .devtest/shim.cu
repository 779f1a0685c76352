// Device-test shim only (not part of lt8): exposes gpu::transform_layout to ctypes.
#include <cstring>
#include "internal.h"
static char g_msg[512];
extern "C" int shim_gpu_transform(const void* in, void* out, int64_t rows, int64_t cols, int from,
                                  int to, void* stream, int device_index) {
  lt8::Exec ex{lt8::Device::kCUDA, stream, device_index};
  lt8::Status s = lt8::gpu::transform_layout(ex, static_cast<const int8_t*>(in),
                                             static_cast<int8_t*>(out), rows, cols,
                                             static_cast<lt8::Layout>(from), static_cast<lt8::Layout>(to));
  std::strncpy(g_msg, s.message.c_str(), sizeof(g_msg) - 1);
  return static_cast<int>(s.code);
}
extern "C" const char* shim_msg() { return g_msg; }
