// Pieces of the CPU row quantization shared with the CPU fused linear op (the CPU twin of
// quantize.cuh).
#pragma once

#include <cstdint>

namespace lt8::cpu {

// idx[0 .. count) = the ascending k with mask[k] != 0; returns count.
int32_t compact_outliers(const uint8_t* mask, int64_t K, int32_t* idx);

}  // namespace lt8::cpu
