// Which SIMD kernels the CPU code may use: detected once from CPUID (and XGETBV, so that a
// hypervisor that hides the AVX-512 register state is respected), optionally lowered through the
// environment variable LT8_CPU_ISA=scalar|avx2|avxvnni|avx512vnni (tests force each variant with
// it; a request above what the CPU supports is clamped to the detected level).
#pragma once

// The x86 SIMD variants are compiled where the compiler targets x86-64 (LT8_NO_X86_SIMD turns
// them off, e.g. to check the portable build); elsewhere only the scalar code runs.
#if (defined(__x86_64__) || defined(_M_X64)) && !defined(LT8_NO_X86_SIMD)
#define LT8_X86_SIMD 1
#endif

namespace lt8::cpu {

// Ordered: each level implies the instructions of the ones below it that lt8 uses.
enum class CpuIsa : int { kScalar = 0, kAvx2 = 1, kAvxVnni = 2, kAvx512Vnni = 3 };

CpuIsa detected_cpu_isa();  // what this CPU runs (cached)
CpuIsa active_cpu_isa();    // detected, lowered by LT8_CPU_ISA (read on every call: a test hook)
const char* cpu_isa_name(CpuIsa isa);

}  // namespace lt8::cpu
