// Exact int8 GEMM for the CPU: C (M, N) int32 = A (M, K) int8 @ B (N, K) int8 ^T, both row-major
// (the weight layout, so no packing of B). Cache-blocked register tiles per instruction set,
// chosen at run time (cpu_isa.h), threaded over blocks of C (thread_pool.h).
//
// Every variant equals the plain int32 sum of products (wrapping like it on overflow):
//   * AVX2 multiplies |B| (unsigned) by A carrying B's sign with vpmaddubsw when A holds no -128
//     (lt8's quantized activations never do), which cannot saturate then; otherwise it widens
//     both operands to int16 and uses vpmaddwd (s16 x s16 -> s32 pairs), exact for every value;
//   * the VNNI variants use vpdpbusd, which multiplies u8 by s8: they feed B + 128 (a xor 0x80 as
//     B is loaded) and subtract 128 * sum_k A[m, k] once per output, which A's row sums give;
//   * on Arm, SDOT multiplies s8 by s8 directly (int8_gemm_neondot.cc);
//   * AMX's TDPBSSD multiplies s8 by s8 on 16x16 tiles, B read in place, A packed once per call
//     (int8_gemm_amx.cc); calls with fewer than 16 rows take AVX-512 VNNI.
#pragma once

#include <cstdint>
#include <functional>

#include "cpu_simd/cpu_isa.h"

namespace lt8::cpu {

// Called on a worker thread once C[m0:m1, n0:n1] is final (fusing an epilogue while the block is
// still in cache). Blocks partition C; they may run concurrently.
using GemmBlockFn = std::function<void(int64_t m0, int64_t m1, int64_t n0, int64_t n1)>;

// C has row stride N. `on_block` may be null. Returns false (C unwritten) when the host memory
// for the prepared copy of A cannot be allocated.
bool int8_gemm_cpu(const int8_t* A, const int8_t* B, int64_t M, int64_t N, int64_t K, int32_t* C,
                   const GemmBlockFn* on_block = nullptr);

namespace gemm_detail {

// A as a variant wants it: `a` rows of `lda` elements (int16 for block_avx2, int8 for the
// others), zero beyond K; `a_rowsum` = sum_k A[m, k] (VNNI only); for AMX, pack_a_amx's chunks
// (lda unused).
struct Problem {
  const void* a = nullptr;
  int64_t lda = 0;
  const int32_t* a_rowsum = nullptr;
  const int8_t* B = nullptr;
  int64_t N = 0, K = 0;
  int32_t* C = nullptr;
  bool avx2_panels = true;  // block_avx2_sign may pack B (LT8_AVX2_PANELS=0: never)
};

// Each computes C[m0:m1, n0:n1] over the whole K.
void block_avx2(const Problem& p, int64_t m0, int64_t m1, int64_t n0, int64_t n1);
void block_avx2_sign(const Problem& p, int64_t m0, int64_t m1, int64_t n0, int64_t n1);
void block_avxvnni(const Problem& p, int64_t m0, int64_t m1, int64_t n0, int64_t n1);
void block_avx512vnni(const Problem& p, int64_t m0, int64_t m1, int64_t n0, int64_t n1);
void block_neondot(const Problem& p, int64_t m0, int64_t m1, int64_t n0, int64_t n1);
// AMX: m0 must be a multiple of 16 (the driver's row chunks are).
void block_amx(const Problem& p, int64_t m0, int64_t m1, int64_t n0, int64_t n1);

// A (M, K) as block_amx reads it: per 16-row block, ceil(K / 64) chunks of 1 KiB in k order;
// chunk row r holds k = 64 c + 4 r .. + 3 of each of the block's 16 rows (4 bytes per row), zero
// past M and K. `out` holds round_up(M, 16) * round_up(K, 64) bytes.
void pack_a_amx(const int8_t* A, int64_t M, int64_t K, int8_t* out);

}  // namespace gemm_detail
}  // namespace lt8::cpu
