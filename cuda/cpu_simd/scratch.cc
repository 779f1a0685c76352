#include "cpu_simd/scratch.h"

#include <cstdlib>

namespace lt8::cpu {
namespace {

struct ThreadBlocks {
  void* ptr[Scratch::kSlots] = {};
  size_t size[Scratch::kSlots] = {};
  ~ThreadBlocks() {
    for (void* p : ptr) std::free(p);
  }
};

thread_local ThreadBlocks t_blocks;

void* aligned_block(size_t bytes) {
  return std::aligned_alloc(64, (bytes + 63) / 64 * 64 + 64);
}

}  // namespace

Scratch::Scratch(Slot slot, size_t bytes) {
  if (bytes > kKeepBytes) {
    ptr_ = aligned_block(bytes);
    owned_ = true;
    return;
  }
  ThreadBlocks& t = t_blocks;
  if (t.size[slot] < bytes) {
    std::free(t.ptr[slot]);
    t.ptr[slot] = aligned_block(bytes);
    t.size[slot] = t.ptr[slot] != nullptr ? bytes : 0;
  }
  ptr_ = t.ptr[slot];
}

Scratch::~Scratch() {
  if (owned_) std::free(ptr_);
}

}  // namespace lt8::cpu
