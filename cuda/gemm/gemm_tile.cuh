// The output tile shared by lt8's two tiled GEMMs, the dp4a int8 GEMM (dp4a_gemm.cuh) and the
// input-gradient GEMM (grad/grad_input.cu): one 128 x 128 output tile per block of 256 threads,
// each thread owning an 8 x 8 fragment, rows ty*4 + {0..3} and 64 + ty*4 + {0..3} (ty = tid / 16),
// columns likewise with tx = tid % 16. Tiles are rasterised in groups of kGroupM tile rows so
// that neighbouring blocks share their right-hand operand in L2.
// Header-only; include from .cu files only.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <type_traits>

#include "common/device_types.cuh"
#include "common/launch_shape.cuh"

namespace lt8 {
namespace gpu {

constexpr int kTile = 128;         // output rows and columns per tile
constexpr int kTileThreads = 256;  // threads per tile (16 x 16, each 8 x 8 outputs)
constexpr int64_t kGroupM = 8;     // tile rasterisation: groups of 8 tile rows share B in L2

static_assert(kTileThreads * 64 == kTile * kTile, "each thread owns 8 x 8 outputs");

// Row (or column) of a thread's i-th output inside the tile: two groups of 4, 64 apart.
__device__ __forceinline__ int tile_row(int i, int t) {
  return (i < 4 ? 0 : 64) + t * 4 + (i & 3);
}

// Maps a linear tile index onto (tile_m, tile_n), grouping kGroupM M-tiles for L2 reuse.
__device__ __forceinline__ void tile_coords(int64_t t, int64_t tiles_m, int64_t tiles_n,
                                            int64_t* tm, int64_t* tn) {
  const int64_t in_group = kGroupM * tiles_n;
  const int64_t group = t / in_group;
  const int64_t first_m = group * kGroupM;
  const int64_t group_size = tiles_m - first_m < kGroupM ? tiles_m - first_m : kGroupM;
  const int64_t r = t - group * in_group;
  *tm = first_m + r % group_size;
  *tn = r / group_size;
}

// Tiles of a rows x cols output; false when they do not fit in one launch (one tile per block).
inline bool tile_grid(int64_t rows, int64_t cols, int64_t* tiles_m, int64_t* tiles_n) {
  *tiles_m = ceil_div(rows, kTile);
  *tiles_n = ceil_div(cols, kTile);
  return *tiles_m * *tiles_n <= kMaxGridX;
}

// The thread's 8 fragment values of one k step: elements t*4 + {0..3} and 64 + t*4 + {0..3} of a
// 128-element shared-memory row (16-byte aligned), read as two 16-byte words. E: float or a
// 32-bit integer (four packed int8).
template <typename E>
__device__ __forceinline__ void load_fragment(const E* row, int t, E (&f)[8]) {
  static_assert(sizeof(E) == 4, "fragments are 32-bit elements");
  using V4 = std::conditional_t<std::is_same_v<E, float>, float4, uint4>;
  const V4 a = *reinterpret_cast<const V4*>(row + t * 4);
  const V4 b = *reinterpret_cast<const V4*>(row + 64 + t * 4);
  f[0] = static_cast<E>(a.x);
  f[1] = static_cast<E>(a.y);
  f[2] = static_cast<E>(a.z);
  f[3] = static_cast<E>(a.w);
  f[4] = static_cast<E>(b.x);
  f[5] = static_cast<E>(b.y);
  f[6] = static_cast<E>(b.z);
  f[7] = static_cast<E>(b.w);
}

// Calls fn(i, h, m, n) for each run of 4 outputs (m, n .. n + 3) of the thread's fragment that
// starts inside the rows x cols output: acc[i][4h .. 4h + 3] belongs there.
template <typename Fn>
__device__ __forceinline__ void for_each_fragment_quad(int64_t m0, int64_t n0, int ty, int tx,
                                                       int64_t rows, int64_t cols, Fn&& fn) {
#pragma unroll
  for (int i = 0; i < 8; ++i) {
    const int64_t m = m0 + tile_row(i, ty);
    if (m >= rows) continue;
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int64_t n = n0 + h * 64 + tx * 4;
      if (n >= cols) continue;
      fn(i, h, m, n);
    }
  }
}

// Stores the thread's float fragment v (8 x 8) into out (rows x cols, row-major, T the storage
// type). vec: cols % 4 == 0 and out 4 * sizeof(T) aligned (one 4-element store per quad).
template <typename T>
__device__ __forceinline__ void store_fragment(const float (&v)[8][8], int64_t m0, int64_t n0,
                                               int ty, int tx, int64_t rows, int64_t cols, bool vec,
                                               T* __restrict__ out) {
  for_each_fragment_quad(m0, n0, ty, tx, rows, cols, [&](int i, int h, int64_t m, int64_t n) {
    T* p = out + m * cols + n;
    const float f[4] = {v[i][4 * h], v[i][4 * h + 1], v[i][4 * h + 2], v[i][4 * h + 3]};
    if (vec) {
      store4(p, f);
    } else {
#pragma unroll
      for (int e = 0; e < 4; ++e)
        if (n + e < cols) p[e] = from_float<T>(f[e]);
    }
  });
}

}  // namespace gpu
}  // namespace lt8
