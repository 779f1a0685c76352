// Cross-check of the Arm int8 GEMM (cuda/cpu_simd/int8_gemm_neondot.cc), built for AArch64 and
// run under qemu-aarch64 by tests/core/test_cpu_gemm_arm.py: on every shape the neondot variant
// and the scalar one must equal the exact int64 sum wrapped to int32. Exit status = failed shapes.
#include <cstdio>
#include <cstdlib>
#include <cstdint>
#include <random>
#include <vector>
#include "cpu_simd/cpu_isa.h"
#include "cpu_simd/int8_gemm.h"
using namespace lt8::cpu;
static std::vector<int32_t> run(const char* isa, const std::vector<int8_t>& A, const std::vector<int8_t>& B, int64_t M, int64_t N, int64_t K) {
  setenv("LT8_CPU_ISA", isa, 1);
  std::vector<int32_t> C(M * N, 12345);
  if (!int8_gemm_cpu(A.data(), B.data(), M, N, K, C.data())) { printf("alloc fail\n"); exit(2); }
  return C;
}
int main() {
  printf("detected %s\n", cpu_isa_name(detected_cpu_isa()));
  // Odd shapes (tails of the 4x4 tile and of 16-byte K steps), all -128, all 127, and a K
  // whose -128 x -128 sums wrap int32.
  std::mt19937 g(1);
  struct S { int64_t M, N, K; int mode; };
  std::vector<S> shapes = {{1,1,1,0},{3,5,7,0},{4,4,16,0},{5,7,17,0},{9,13,33,0},{17,31,100,0},{64,96,384,0},{37,45,1000,0},{8,8,4096,1},{6,10,2100,2},{33,70,131,0},{100,3,4097,0},{2,200,15,0},{2,3,140000,1}};
  int fails = 0;
  for (auto s : shapes) {
    std::vector<int8_t> A(s.M * s.K), B(s.N * s.K);
    std::uniform_int_distribution<int> d(-128, 127);
    for (auto& v : A) v = s.mode == 1 ? -128 : (int8_t)d(g);
    for (auto& v : B) v = s.mode == 1 ? -128 : (s.mode == 2 ? 127 : (int8_t)d(g));
    auto C1 = run("neondot", A, B, s.M, s.N, s.K);
    auto C2 = run("scalar", A, B, s.M, s.N, s.K);
    int bad = 0;
    for (int64_t m = 0; m < s.M; ++m) for (int64_t n = 0; n < s.N; ++n) {
      int64_t ref = 0; for (int64_t k = 0; k < s.K; ++k) ref += (int64_t)A[m*s.K+k] * B[n*s.K+k];
      int32_t r32 = (int32_t)(uint32_t)(uint64_t)ref;
      if (C1[m*s.N+n] != r32 || C2[m*s.N+n] != r32) ++bad;
    }
    printf("M=%ld N=%ld K=%ld mode=%d: %s (%d bad)\n", (long)s.M, (long)s.N, (long)s.K, s.mode, bad ? "FAIL" : "ok", bad);
    fails += bad != 0;
  }
  return fails;
}
