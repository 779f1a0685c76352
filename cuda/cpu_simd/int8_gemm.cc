// Driver of the CPU int8 GEMM: prepares A for the chosen variant, splits C into blocks, runs them
// on the thread pool. The scalar variant lives here too (any CPU, and the reference the SIMD
// variants are tested against besides numpy).
#include <algorithm>
#include <climits>
#include <cstdlib>
#include <cstring>

#include "cpu_simd/int8_gemm.h"
#include "cpu_simd/scratch.h"
#include "cpu_simd/thread_pool.h"

namespace lt8::cpu {
namespace {

using gemm_detail::Problem;

constexpr int64_t kBlockCols = 32;        // columns of C (rows of B) per task: B block in L2
constexpr double kMinParallelMacs = 4e6;  // below this, waking threads costs more than it saves
// AMX multiplies 16-row tiles: below 16 rows of A most of each tile product is padding, so
// AVX-512 VNNI (which AMX CPUs have) takes those calls, which are mostly bound by reading B.
// (Measured: AMX at M = 16 and above, VNNI at M = 1; AMX below 16 rows was not tried.)
constexpr int64_t kAmxMinRows = 16;

// Wrapping int32 dot product (unsigned arithmetic: overflow is defined and equals int32 wrap).
void block_scalar(const Problem& p, int64_t m0, int64_t m1, int64_t n0, int64_t n1) {
  const int8_t* A = static_cast<const int8_t*>(p.a);
  for (int64_t m = m0; m < m1; ++m) {
    const int8_t* a = A + m * p.lda;
    for (int64_t n = n0; n < n1; ++n) {
      const int8_t* b = p.B + n * p.K;
      uint32_t acc = 0;
      for (int64_t k = 0; k < p.K; ++k)
        acc += static_cast<uint32_t>(static_cast<int32_t>(a[k]) * static_cast<int32_t>(b[k]));
      p.C[m * p.N + n] = static_cast<int32_t>(acc);
    }
  }
}

bool contains_int8_min(const int8_t* a, int64_t n) {
  uint8_t hit = 0;  // branch-free, so the compiler vectorizes the scan
  for (int64_t i = 0; i < n; ++i) hit |= static_cast<uint8_t>(a[i] == INT8_MIN);
  return hit != 0;
}

int64_t round_up(int64_t v, int64_t to) {
  return (v + to - 1) / to * to;
}

// A's rows copied to rows of lda >= K bytes, zero from K on (the int8 variants' layout).
int8_t* copy_rows_padded(const int8_t* A, int64_t M, int64_t K, int64_t lda, void* buf) {
  int8_t* a8 = static_cast<int8_t*>(buf);
  for (int64_t m = 0; m < M; ++m) {
    std::memcpy(a8 + m * lda, A + m * K, static_cast<size_t>(K));
    std::memset(a8 + m * lda + K, 0, static_cast<size_t>(lda - K));
  }
  return a8;
}

}  // namespace

bool int8_gemm_cpu(const int8_t* A, const int8_t* B, int64_t M, int64_t N, int64_t K, int32_t* C,
                   const GemmBlockFn* on_block) {
  if (M <= 0 || N <= 0) return true;
  if (K <= 0) {
    std::memset(C, 0, static_cast<size_t>(M * N) * sizeof(int32_t));
    if (on_block != nullptr) (*on_block)(0, M, 0, N);
    return true;
  }
  CpuIsa isa = active_cpu_isa();
  if (isa == CpuIsa::kAmx && M < kAmxMinRows) isa = CpuIsa::kAvx512Vnni;
  Problem p;
  p.B = B;
  p.N = N;
  p.K = K;
  p.C = C;
  void (*block)(const Problem&, int64_t, int64_t, int64_t, int64_t) = block_scalar;
  // A prepared for the variant; none needed by the scalar one.
  size_t a_bytes = 0, sum_bytes = 0;
  // AVX2: the vpmaddubsw kernel unless A holds a -128 (int8_gemm.h); one pass over A decides.
  const bool avx2_sign = isa == CpuIsa::kAvx2 && !contains_int8_min(A, M * K);
  if (isa == CpuIsa::kAvx2)
    a_bytes = avx2_sign ? static_cast<size_t>(M * round_up(K, 32))
                        : static_cast<size_t>(M * round_up(K, 16) * 2);
  if (isa == CpuIsa::kAvxVnni || isa == CpuIsa::kAvx512Vnni) {
    a_bytes = static_cast<size_t>(M * round_up(K, 64));
    sum_bytes = static_cast<size_t>(M * 4);
  }
  if (isa == CpuIsa::kNeonDot) a_bytes = static_cast<size_t>(M * round_up(K, 16));
  if (isa == CpuIsa::kAmx) a_bytes = static_cast<size_t>(round_up(M, 16) * round_up(K, 64));
  Scratch a_buf(Scratch::kGemmA, a_bytes), sum_buf(Scratch::kGemmRowSum, sum_bytes);
  if ((a_bytes && a_buf.get() == nullptr) || (sum_bytes && sum_buf.get() == nullptr)) return false;
  if (avx2_sign) {
    const char* panels = std::getenv("LT8_AVX2_PANELS");  // read per call: a test and A/B hook
    p.avx2_panels = !(panels != nullptr && panels[0] == '0');
    p.lda = round_up(K, 32);
    p.a = copy_rows_padded(A, M, K, p.lda, a_buf.get());
    block = gemm_detail::block_avx2_sign;
  } else if (isa == CpuIsa::kAvx2) {
    // int16 copy of A, rows padded with zeros to a multiple of 16 elements.
    p.lda = round_up(K, 16);
    int16_t* a16 = static_cast<int16_t*>(a_buf.get());
    for (int64_t m = 0; m < M; ++m) {
      for (int64_t k = 0; k < K; ++k) a16[m * p.lda + k] = A[m * K + k];
      for (int64_t k = K; k < p.lda; ++k) a16[m * p.lda + k] = 0;
    }
    p.a = a16;
    block = gemm_detail::block_avx2;
  } else if (isa == CpuIsa::kAvxVnni || isa == CpuIsa::kAvx512Vnni) {
    p.lda = round_up(K, 64);
    p.a = copy_rows_padded(A, M, K, p.lda, a_buf.get());
    int32_t* sums = static_cast<int32_t*>(sum_buf.get());
    for (int64_t m = 0; m < M; ++m) {
      int32_t s = 0;
      for (int64_t k = 0; k < K; ++k) s += A[m * K + k];
      sums[m] = s;
    }
    p.a_rowsum = sums;
    block = isa == CpuIsa::kAvx512Vnni ? gemm_detail::block_avx512vnni : gemm_detail::block_avxvnni;
  } else if (isa == CpuIsa::kAmx) {
    gemm_detail::pack_a_amx(A, M, K, static_cast<int8_t*>(a_buf.get()));
    p.a = a_buf.get();
    block = gemm_detail::block_amx;
  } else if (isa == CpuIsa::kNeonDot) {
    p.lda = round_up(K, 16);
    p.a = copy_rows_padded(A, M, K, p.lda, a_buf.get());
    block = gemm_detail::block_neondot;
  } else {
    p.a = A;
    p.lda = K;
  }

  // Tasks: blocks of kBlockCols columns over all rows; rows are split too when there are too
  // few column blocks to keep every thread busy (small N).
  const int threads = double(M) * N * K < kMinParallelMacs ? 1 : cpu_threads();
  const int64_t col_blocks = (N + kBlockCols - 1) / kBlockCols;
  int64_t row_chunks = 1;
  if (col_blocks < 4 * threads) row_chunks = std::min<int64_t>(M, (4 * threads) / col_blocks + 1);
  // Row chunks start at multiples of 4 rows (of 32 for AMX, whose packed A comes in 16-row
  // blocks and whose register tiles cover 32 rows).
  const int64_t rows_per =
      round_up((M + row_chunks - 1) / row_chunks, isa == CpuIsa::kAmx ? 32 : 4);
  row_chunks = (M + rows_per - 1) / rows_per;
  parallel_for(col_blocks * row_chunks, threads, [&](int64_t t) {
    const int64_t m0 = (t / col_blocks) * rows_per, m1 = std::min(M, m0 + rows_per);
    const int64_t n0 = (t % col_blocks) * kBlockCols, n1 = std::min(N, n0 + kBlockCols);
    block(p, m0, m1, n0, n1);
    if (on_block != nullptr) (*on_block)(m0, m1, n0, n1);
  });
  return true;
}

}  // namespace lt8::cpu
