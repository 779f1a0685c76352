#include "cpu_simd/cpu_isa.h"

#include <cstdint>
#include <cstdlib>
#include <cstring>

#ifdef LT8_X86_SIMD
#include <cpuid.h>
#endif
#if defined(LT8_X86_SIMD) && defined(__linux__)
#include <sys/syscall.h>
#include <unistd.h>
#endif
#if defined(LT8_ARM_SIMD) && defined(__linux__)
#include <sys/auxv.h>
#endif

namespace lt8::cpu {
namespace {

#ifdef LT8_X86_SIMD
uint64_t xgetbv0() {
  uint32_t lo, hi;
  __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
  return (uint64_t{hi} << 32) | lo;
}

// AMX's tile data is a dynamically enabled state on Linux: a process must ask for it once
// (arch_prctl ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) before any thread touches a tile; the
// permission then holds for all its threads. Elsewhere AMX is not used.
bool amx_permitted() {
#ifdef __linux__
  constexpr long kArchReqXcompPerm = 0x1023, kXfeatureXtiledata = 18;
  return syscall(SYS_arch_prctl, kArchReqXcompPerm, kXfeatureXtiledata) == 0;
#else
  return false;
#endif
}

CpuIsa detect() {
  unsigned a, b, c, d;
  if (!__get_cpuid(1, &a, &b, &c, &d)) return CpuIsa::kScalar;
  const bool osxsave = c & (1u << 27), fma = c & (1u << 12), f16c = c & (1u << 29);
  if (!osxsave || !fma || !f16c) return CpuIsa::kScalar;
  const uint64_t xcr0 = xgetbv0();
  if ((xcr0 & 0x6) != 0x6) return CpuIsa::kScalar;  // OS saves XMM and YMM state
  if (__get_cpuid_max(0, nullptr) < 7) return CpuIsa::kScalar;
  __cpuid_count(7, 0, a, b, c, d);
  const bool avx2 = b & (1u << 5);
  if (!avx2) return CpuIsa::kScalar;
  const bool avx512f = b & (1u << 16), avx512bw = b & (1u << 30), avx512vl = b & (1u << 31);
  const bool avx512vnni = c & (1u << 11);
  const bool zmm_state = (xcr0 & 0xe0) == 0xe0;  // opmask, ZMM0-15 upper halves, ZMM16-31
  if (avx512f && avx512bw && avx512vl && avx512vnni && zmm_state) {
    const bool amx_int8 = (d & (1u << 24)) && (d & (1u << 25));  // AMX-TILE, AMX-INT8
    const bool tile_state = ((xcr0 >> 17) & 3) == 3;             // XTILECFG, XTILEDATA
    if (amx_int8 && tile_state && amx_permitted()) return CpuIsa::kAmx;
    return CpuIsa::kAvx512Vnni;
  }
  unsigned a1, b1, c1, d1;
  __cpuid_count(7, 1, a1, b1, c1, d1);
  if (a1 & (1u << 4)) return CpuIsa::kAvxVnni;
  return CpuIsa::kAvx2;
}
#elif defined(LT8_ARM_SIMD)
CpuIsa detect() {
#if defined(__APPLE__)
  return CpuIsa::kNeonDot;  // every Apple Arm CPU has the dot-product instructions
#elif defined(__linux__)
  constexpr unsigned long kHwcapAsimdDp = 1ul << 20;  // HWCAP_ASIMDDP (asm/hwcap.h)
  return (getauxval(AT_HWCAP) & kHwcapAsimdDp) ? CpuIsa::kNeonDot : CpuIsa::kScalar;
#else
  return CpuIsa::kScalar;
#endif
}
#else
CpuIsa detect() {
  return CpuIsa::kScalar;
}
#endif

bool is_x86(CpuIsa isa) {
  return isa == CpuIsa::kAvx2 || isa == CpuIsa::kAvxVnni || isa == CpuIsa::kAvx512Vnni ||
         isa == CpuIsa::kAmx;
}

}  // namespace

CpuIsa detected_cpu_isa() {
  static const CpuIsa isa = detect();
  return isa;
}

CpuIsa active_cpu_isa() {
  CpuIsa isa = detected_cpu_isa();
  const char* env = std::getenv("LT8_CPU_ISA");
  if (env == nullptr || *env == '\0') return isa;
  CpuIsa want = isa;
  if (!std::strcmp(env, "scalar")) want = CpuIsa::kScalar;
  if (!std::strcmp(env, "neondot")) want = CpuIsa::kNeonDot;
  if (!std::strcmp(env, "avx2")) want = CpuIsa::kAvx2;
  if (!std::strcmp(env, "avxvnni")) want = CpuIsa::kAvxVnni;
  if (!std::strcmp(env, "avx512vnni")) want = CpuIsa::kAvx512Vnni;
  if (!std::strcmp(env, "amx")) want = CpuIsa::kAmx;
  if (want == CpuIsa::kScalar) return want;
  if (is_x86(want) != is_x86(isa)) return isa;  // the other family: ignored
  return static_cast<int>(want) < static_cast<int>(isa) ? want : isa;
}

const char* cpu_isa_name(CpuIsa isa) {
  switch (isa) {
    case CpuIsa::kNeonDot:
      return "neondot";
    case CpuIsa::kAvx2:
      return "avx2";
    case CpuIsa::kAvxVnni:
      return "avxvnni";
    case CpuIsa::kAvx512Vnni:
      return "avx512vnni";
    case CpuIsa::kAmx:
      return "amx";
    default:
      return "scalar";
  }
}

}  // namespace lt8::cpu
