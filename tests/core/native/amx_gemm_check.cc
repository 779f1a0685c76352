// Check of the AMX int8 GEMM (cuda/cpu_simd/int8_gemm_amx.cc) built against amx_emulation.h by
// tests/core/test_cpu_gemm_amx_emulated.py: A packed by pack_a_amx, C computed block by block
// as the driver splits it (row chunks at multiples of 32, 32 columns per task) and in one block,
// must equal the exact int64 sum wrapped to int32. Exit status = failed shapes.
#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <random>
#include <vector>

#include "cpu_simd/int8_gemm.h"

using namespace lt8::cpu::gemm_detail;

int main() {
  std::mt19937 g(7);
  std::uniform_int_distribution<int> d(-128, 127);
  // mode 0: random; 1: A and B all -128 (the largest sums); 2: A -128, B 127.
  struct S {
    int64_t M, N, K;
    int mode;
  };
  const std::vector<S> shapes = {{1, 1, 1, 0},     {16, 16, 64, 0},  {17, 33, 65, 0},
                                 {32, 32, 128, 1}, {40, 70, 300, 0}, {64, 31, 4099, 2},
                                 {5, 100, 7, 0},   {100, 45, 129, 0}, {33, 64, 1000, 1},
                                 {48, 96, 256, 0}, {70, 17, 3, 0}};
  int fails = 0;
  for (const S& s : shapes) {
    std::vector<int8_t> A(s.M * s.K), B(s.N * s.K);
    for (auto& v : A) v = s.mode ? -128 : static_cast<int8_t>(d(g));
    for (auto& v : B) v = s.mode == 1 ? -128 : (s.mode == 2 ? 127 : static_cast<int8_t>(d(g)));
    std::vector<int8_t> packed(((s.M + 15) / 16 * 16) * ((s.K + 63) / 64 * 64), 0x11);
    pack_a_amx(A.data(), s.M, s.K, packed.data());
    Problem p;
    p.a = packed.data();
    p.B = B.data();
    p.N = s.N;
    p.K = s.K;
    int bad = 0;
    for (int split = 0; split < 2; ++split) {
      std::vector<int32_t> C(s.M * s.N, 0x5A5A5A5A);
      p.C = C.data();
      if (split) {
        for (int64_t m0 = 0; m0 < s.M; m0 += 32)
          for (int64_t n0 = 0; n0 < s.N; n0 += 32)
            block_amx(p, m0, std::min(s.M, m0 + 32), n0, std::min(s.N, n0 + 32));
      } else {
        block_amx(p, 0, s.M, 0, s.N);
      }
      for (int64_t m = 0; m < s.M; ++m)
        for (int64_t n = 0; n < s.N; ++n) {
          int64_t ref = 0;
          for (int64_t k = 0; k < s.K; ++k) ref += int64_t{A[m * s.K + k]} * B[n * s.K + k];
          bad += C[m * s.N + n] != static_cast<int32_t>(static_cast<uint32_t>(ref));
        }
    }
    std::printf("M=%ld N=%ld K=%ld mode=%d: %s (%d bad)\n", static_cast<long>(s.M),
                static_cast<long>(s.N), static_cast<long>(s.K), s.mode, bad ? "FAIL" : "ok", bad);
    fails += bad != 0;
  }
  return fails;
}
