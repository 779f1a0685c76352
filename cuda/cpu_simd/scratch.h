// Per-call host scratch of the CPU kernels, reused across calls on the same thread: a fresh
// multi-megabyte allocation would be returned to the OS after every call and page-faulted back
// in on the next (up to ~10% of a layer's time at M = 256).
#pragma once

#include <cstddef>

namespace lt8::cpu {

// A 64-byte-aligned block of at least `bytes` bytes (content undefined), valid until this
// object goes out of scope. Each thread caches one block per slot (grown as needed, freed when
// the thread exits); blocks above kKeepBytes are allocated for the call only.
class Scratch {
 public:
  static constexpr size_t kKeepBytes = size_t{64} << 20;
  enum Slot { kGemmA = 0, kGemmRowSum = 1, kLinearAcc = 2, kGemmBPanels = 3, kSlots = 4 };

  Scratch(Slot slot, size_t bytes);
  ~Scratch();
  Scratch(const Scratch&) = delete;
  Scratch& operator=(const Scratch&) = delete;

  void* get() const { return ptr_; }  // null when the allocation failed

 private:
  void* ptr_ = nullptr;
  bool owned_ = false;  // true: allocated for this call only
};

}  // namespace lt8::cpu
