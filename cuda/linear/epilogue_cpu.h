// The CPU dequantization epilogue, shared by dequant_epilogue and the fused linear op (which runs
// it on each block of the int8 GEMM's result while the block is still in cache).
#pragma once

#include <cstdint>

#include "cpu_simd/rows_simd.h"

namespace lt8::cpu {

// out[m, n] for m in [m0, m1), n in [n0, n1), as simd::EpilogueArgs describes: the scalar
// definition, or its AVX2 twin when the CPU has it (bit-identical).
void epilogue_block(const simd::EpilogueArgs& e, int64_t m0, int64_t m1, int64_t n0, int64_t n1);

}  // namespace lt8::cpu
