// Which SIMD kernels the CPU code may use: detected once from CPUID (and XGETBV, so that a
// hypervisor that hides the AVX-512 register state is respected) on x86-64, from the kernel's
// hardware capabilities on Arm (64-bit), optionally lowered through the environment variable
// LT8_CPU_ISA=scalar|neondot|avx2|avxvnni|avx512vnni|amx (tests force each variant with it; a
// request above what the CPU supports, or of the other family, gives the detected level).
#pragma once

// The x86 SIMD variants are compiled where the compiler targets x86-64 (LT8_NO_X86_SIMD turns
// them off, e.g. to check the portable build); elsewhere only the scalar code runs.
#if (defined(__x86_64__) || defined(_M_X64)) && !defined(LT8_NO_X86_SIMD)
#define LT8_X86_SIMD 1
#endif
// The Arm variant (the int8 GEMM on the dot-product instructions) where the compiler targets
// AArch64 (LT8_NO_ARM_SIMD turns it off); the row kernels stay scalar there.
#if defined(__aarch64__) && !defined(LT8_NO_ARM_SIMD)
#define LT8_ARM_SIMD 1
#endif

namespace lt8::cpu {

// The x86 levels are ordered: each implies the instructions of the ones below it that lt8 uses
// (code tests `>= kAvx2` for the AVX2 row kernels). kNeonDot, the one Arm level, sits below them,
// so those tests stay false on Arm.
// kAmx (Intel AMX-INT8 tiles, which lt8 uses for the GEMM only) implies AVX-512 VNNI.
enum class CpuIsa : int {
  kScalar = 0,
  kNeonDot = 1,
  kAvx2 = 2,
  kAvxVnni = 3,
  kAvx512Vnni = 4,
  kAmx = 5
};

CpuIsa detected_cpu_isa();  // what this CPU runs (cached)
CpuIsa active_cpu_isa();    // detected, lowered by LT8_CPU_ISA (read on every call: a test hook)
const char* cpu_isa_name(CpuIsa isa);

}  // namespace lt8::cpu
