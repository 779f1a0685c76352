// lt8's own int8 GEMM: C (M, N) = A (M, K) . B (N, K)^T, int32 accumulate with __dp4a, with the
// epilogue as a template parameter (a plain int32 store in int8_gemm.cu, the fused LLM.int8()
// epilogue in linear/dp4a_linear_epilogue.cuh). The fallback wherever cuBLASLt is missing or
// declines a problem, and the int8 engine of sm_75.
//
// Tile (gemm_tile.cuh): 128 x 128 outputs per block, K step 64. Shared memory holds the A and B
// tiles transposed as int8x4 words, [k4][row], double buffered, with register prefetch of the
// next K step. Tails in M, N and K are zero-padded. An epilogue is a functor with
// kSmemBytes (shared memory it needs after the main loop, reusing the tiles' space) and
// operator()(acc, m0, n0, tid, ty, tx, smem).
// Header-only (the kernel is instantiated per epilogue); include from .cu files only.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <string>

#include "common/cuda_check.cuh"
#include "common/launch_shape.cuh"
#include "gemm/gemm_tile.cuh"
#include "lt8.h"

namespace lt8 {
namespace gpu {

constexpr int kBK = 64;
constexpr int kBK4 = kBK / 4;
constexpr int kGemmSmemBytes = 2 /*buffers*/ * (2 * kTile) * kBK4 * 4;  // 32 KiB

static_assert(kTile * kBK == kTileThreads * 32, "each thread loads 32 bytes of A and of B");

// 32 consecutive bytes p[0 .. 32) into 8 little-endian words; byte b is read only when
// b < lim (lim <= 0: all zero). VEC = 16: p 16-byte aligned and lim % 16 == 0; VEC = 4: p
// 4-byte aligned and lim % 4 == 0; VEC = 1: anything.
template <int VEC>
__device__ __forceinline__ void gemm_load(const int8_t* __restrict__ p, int lim, uint32_t (&w)[8]) {
#pragma unroll
  for (int i = 0; i < 8; ++i) w[i] = 0;
  if constexpr (VEC == 16) {
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      if (16 * h < lim) {
        const uint4 v = __ldg(reinterpret_cast<const uint4*>(p + 16 * h));
        w[4 * h + 0] = v.x;
        w[4 * h + 1] = v.y;
        w[4 * h + 2] = v.z;
        w[4 * h + 3] = v.w;
      }
    }
  } else if constexpr (VEC == 4) {
#pragma unroll
    for (int i = 0; i < 8; ++i)
      if (4 * i < lim) w[i] = __ldg(reinterpret_cast<const unsigned int*>(p + 4 * i));
  } else {
#pragma unroll
    for (int b = 0; b < 32; ++b)
      if (b < lim)
        w[b / 4] |= static_cast<uint32_t>(static_cast<uint8_t>(__ldg(p + b))) << (8 * (b % 4));
  }
}

template <int VEC, typename Epi>
__global__ void __launch_bounds__(kTileThreads, 2)
    int8_gemm_kernel(const int8_t* __restrict__ A, const int8_t* __restrict__ B, int64_t M,
                     int64_t N, int64_t K, int64_t tiles_m, int64_t tiles_n, Epi epi) {
  constexpr int kSmem = kGemmSmemBytes > Epi::kSmemBytes ? kGemmSmemBytes : Epi::kSmemBytes;
  __shared__ __align__(16) unsigned char smem[kSmem];
  uint32_t* As = reinterpret_cast<uint32_t*>(smem);  // [2][kBK4][kTile]
  uint32_t* Bs = As + 2 * kBK4 * kTile;              // [2][kBK4][kTile]

  const int tid = threadIdx.x;
  const int ty = tid / 16, tx = tid % 16;        // compute mapping
  const int lr = tid % kTile, lc = tid / kTile;  // load mapping: row lr, bytes lc*32 .. +32
  const int num_k = static_cast<int>((K + kBK - 1) / kBK);  // K < 2^31

  {  // one output tile per block (the host guarantees tiles <= max gridDim.x)
    int64_t tm, tn;
    tile_coords(blockIdx.x, tiles_m, tiles_n, &tm, &tn);
    const int64_t m0 = tm * kTile, n0 = tn * kTile;

    int32_t acc[8][8];
#pragma unroll
    for (int i = 0; i < 8; ++i)
#pragma unroll
      for (int j = 0; j < 8; ++j) acc[i][j] = 0;

    if (num_k > 0) {
      // Loader state: this thread's 32-byte slice of row lr of each tile, and how many of
      // its bytes lie inside the matrix (<= 0: none; rows past the end read nothing).
      const bool a_row_ok = m0 + lr < M, b_row_ok = n0 + lr < N;
      const int8_t* pa = A + (a_row_ok ? (m0 + lr) * K + lc * 32 : 0);
      const int8_t* pb = B + (b_row_ok ? (n0 + lr) * K + lc * 32 : 0);
      int lim_a = a_row_ok ? static_cast<int>(K) - lc * 32 : 0;
      int lim_b = b_row_ok ? static_cast<int>(K) - lc * 32 : 0;

      uint32_t ra[8], rb[8];
      gemm_load<VEC>(pa, lim_a, ra);
      gemm_load<VEC>(pb, lim_b, rb);
#pragma unroll
      for (int w = 0; w < 8; ++w) {
        As[(lc * 8 + w) * kTile + lr] = ra[w];
        Bs[(lc * 8 + w) * kTile + lr] = rb[w];
      }
      __syncthreads();

      for (int kt = 0; kt < num_k; ++kt) {
        const int buf = kt & 1;
        const bool has_next = kt + 1 < num_k;
        if (has_next) {
          pa += kBK;
          lim_a -= kBK;
          pb += kBK;
          lim_b -= kBK;
          gemm_load<VEC>(pa, lim_a, ra);
          gemm_load<VEC>(pb, lim_b, rb);
        }
        const uint32_t* as = As + buf * kBK4 * kTile;
        const uint32_t* bs = Bs + buf * kBK4 * kTile;
#pragma unroll
        for (int k4 = 0; k4 < kBK4; ++k4) {
          uint32_t a[8], b[8];  // four int8 of k each
          load_fragment(as + k4 * kTile, ty, a);
          load_fragment(bs + k4 * kTile, tx, b);
#pragma unroll
          for (int i = 0; i < 8; ++i)
#pragma unroll
            for (int j = 0; j < 8; ++j)
              acc[i][j] = __dp4a(static_cast<int>(a[i]), static_cast<int>(b[j]), acc[i][j]);
        }
        if (has_next) {
          uint32_t* as_next = As + (buf ^ 1) * kBK4 * kTile;
          uint32_t* bs_next = Bs + (buf ^ 1) * kBK4 * kTile;
#pragma unroll
          for (int w = 0; w < 8; ++w) {
            as_next[(lc * 8 + w) * kTile + lr] = ra[w];
            bs_next[(lc * 8 + w) * kTile + lr] = rb[w];
          }
        }
        __syncthreads();
      }
    }

    epi(acc, m0, n0, tid, ty, tx, smem);
  }
}

// Launches the tiled GEMM with the widest global load the shapes and pointers allow.
template <typename Epi>
Status launch_gemm(cudaStream_t st, const int8_t* A, const int8_t* B, int64_t M, int64_t N,
                   int64_t K, const Epi& epi, const char* name) {
  int64_t tiles_m, tiles_n;
  if (!tile_grid(M, N, &tiles_m, &tiles_n))
    return Status::Invalid(std::string(name) + ": output too large for one launch");
  const unsigned blocks = static_cast<unsigned>(tiles_m * tiles_n);
  if (K % 16 == 0 && is_aligned(A, 16) && is_aligned(B, 16)) {
    int8_gemm_kernel<16, Epi>
        <<<blocks, kTileThreads, 0, st>>>(A, B, M, N, K, tiles_m, tiles_n, epi);
  } else if (K % 4 == 0 && is_aligned(A, 4) && is_aligned(B, 4)) {
    int8_gemm_kernel<4, Epi><<<blocks, kTileThreads, 0, st>>>(A, B, M, N, K, tiles_m, tiles_n, epi);
  } else {
    int8_gemm_kernel<1, Epi><<<blocks, kTileThreads, 0, st>>>(A, B, M, N, K, tiles_m, tiles_n, epi);
  }
  LT8_CHECK_LAUNCH(name);
  return Status::Ok();
}

}  // namespace gpu
}  // namespace lt8
