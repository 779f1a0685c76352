// gpu::int8_linear_grad_input: grad_x (M, K) = sum_n (g[m, n] * (SCB[n] / 127)) * CB[n, k], fp32.
// A tiled GEMM on the shared tile (gemm/gemm_tile.cuh): 128 (m) x 128 (k) outputs per block, N
// step 16, 256 threads each owning 8 x 8 outputs. Gs[n][m] holds the scaled gradient, Ws[n][k]
// the int8 weight as float; both double buffered with register prefetch. The sum runs over n in
// ascending order with separate IEEE mul and add, like grad_input_cpu.cc, so the two agree bit
// for bit. The dequantized weight never reaches global memory.
#include <cstdint>

#include "common/cuda_check.cuh"
#include "common/device_types.cuh"
#include "common/launch_shape.cuh"
#include "common/numerics.h"
#include "gemm/gemm_tile.cuh"
#include "internal.h"

namespace lt8 {
namespace gpu {
namespace {

// true: a += b * c as separate IEEE mul and add (matches the CPU reference exactly).
// false: fused multiply-add (faster input-gradient GEMM, differs by rounding only).
constexpr bool kExactCpuRounding = true;

__device__ __forceinline__ float mul_add(float acc, float a, float b) {
  if constexpr (kExactCpuRounding) {
    return __fadd_rn(acc, __fmul_rn(a, b));
  } else {
    return fmaf(a, b, acc);
  }
}

constexpr int kGBM = kTile;  // rows of grad_out / grad_x per tile
constexpr int kGBK = kTile;  // columns of grad_x (K) per tile
constexpr int kGBN = 16;     // reduction step over N
constexpr int kGStride = kGBM + 4;

template <typename T>
__global__ void __launch_bounds__(kTileThreads, 2)
    grad_input_kernel(const T* __restrict__ g, const int8_t* __restrict__ CB,
                      const float* __restrict__ SCB, int64_t M, int64_t N, int64_t K,
                      int64_t tiles_m, int64_t tiles_k, bool vec, T* __restrict__ grad_x) {
  __shared__ __align__(16) float Gs[2][kGBN][kGStride];
  __shared__ __align__(16) float Ws[2][kGBN][kGBK];

  const int tid = threadIdx.x;
  const int ty = tid / 16, tx = tid % 16;
  // Gradient loads: column gn of the N step, rows gr + 16 * i.
  const int gn = tid % kGBN, gr = tid / kGBN;
  // Weight loads: column wk of the K tile, N rows wn + 2 * i.
  const int wk = tid % kGBK, wn = tid / kGBK;
  const int64_t num_n = (N + kGBN - 1) / kGBN;
  const int64_t g_row_step = 16 * N;  // between a thread's gradient rows
  const int64_t w_row_step = 2 * K;   // between a thread's weight rows

  {  // one output tile per block (the host guarantees tiles <= max gridDim.x)
    int64_t tm, tk;
    tile_coords(blockIdx.x, tiles_m, tiles_k, &tm, &tk);
    const int64_t m0 = tm * kGBM, k0 = tk * kGBK;

    float acc[8][8];
#pragma unroll
    for (int i = 0; i < 8; ++i)
#pragma unroll
      for (int j = 0; j < 8; ++j) acc[i][j] = 0.0f;

    if (num_n > 0) {
      // Gradient row i of this thread is valid when 16 * i < g_rows; weight column when k_ok.
      const int64_t g_rows64 = M - m0 - gr;
      const int g_rows = g_rows64 > kGBM ? kGBM : static_cast<int>(g_rows64);
      const bool k_ok = k0 + wk < K;
      const T* gp = g + (g_rows > 0 ? (m0 + gr) * N + gn : 0);
      const int8_t* wp = CB + (k_ok ? wn * K + k0 + wk : 0);
      float rg[8];
      uint32_t rw[2];  // 8 int8 weights, packed

      // Loads N step nb (gp / wp point at it) into rg / rw.
      auto load = [&](int64_t nb) {
        const bool n_ok = nb + gn < N;
        const float s = n_ok ? SCB[nb + gn] * kInv127 : 0.0f;
#pragma unroll
        for (int i = 0; i < 8; ++i)
          rg[i] = (n_ok && 16 * i < g_rows) ? __fmul_rn(to_float(gp[i * g_row_step]), s) : 0.0f;
        rw[0] = rw[1] = 0;
#pragma unroll
        for (int i = 0; i < 8; ++i)
          if (k_ok && nb + wn + 2 * i < N)
            rw[i / 4] |= static_cast<uint32_t>(static_cast<uint8_t>(wp[i * w_row_step]))
                         << (8 * (i % 4));
      };
      auto store = [&](int buf) {
#pragma unroll
        for (int i = 0; i < 8; ++i) {
          Gs[buf][gn][gr + 16 * i] = rg[i];
          Ws[buf][wn + 2 * i][wk] = static_cast<float>(byte_of(rw[i / 4], i % 4));
        }
      };

      load(0);
      store(0);
      __syncthreads();
      for (int64_t nt = 0; nt < num_n; ++nt) {
        const int buf = static_cast<int>(nt & 1);
        const bool has_next = nt + 1 < num_n;
        if (has_next) {
          gp += kGBN;
          wp += kGBN * K;
          load((nt + 1) * kGBN);
        }
#pragma unroll
        for (int nn = 0; nn < kGBN; ++nn) {
          float gv[8], wv[8];
          load_fragment(&Gs[buf][nn][0], ty, gv);
          load_fragment(&Ws[buf][nn][0], tx, wv);
#pragma unroll
          for (int i = 0; i < 8; ++i)
#pragma unroll
            for (int j = 0; j < 8; ++j) acc[i][j] = mul_add(acc[i][j], gv[i], wv[j]);
        }
        if (has_next) store(buf ^ 1);
        __syncthreads();
      }
    }

    store_fragment(acc, m0, k0, ty, tx, M, K, vec, grad_x);
  }
}

}  // namespace

Status int8_linear_grad_input(const Exec& ex, DType g_dtype, const void* grad_out, const int8_t* CB,
                              const float* SCB, int64_t M, int64_t N, int64_t K, void* grad_x) {
  return dispatch_float(g_dtype, [&](auto tag) -> Status {
    using T = decltype(tag);
    if (M == 0 || K == 0) return Status::Ok();
    DeviceGuard guard(ex);
    if (!guard.ok()) return guard.status();
    cudaStream_t st = stream_of(ex);
    T* gx = static_cast<T*>(grad_x);
    if (N == 0) {  // empty sum: +0.0 in every float dtype is all-zero bits
      const size_t bytes = static_cast<size_t>(M) * static_cast<size_t>(K) * sizeof(T);
      LT8_CUDA_RETURN_IF_ERROR(cudaMemsetAsync(gx, 0, bytes, st), "cudaMemsetAsync(grad_x)");
      return Status::Ok();
    }
    int64_t tiles_m, tiles_k;
    if (!tile_grid(M, K, &tiles_m, &tiles_k))
      return Status::Invalid("int8_linear_grad_input: grad_x too large for one launch");
    const unsigned blocks = static_cast<unsigned>(tiles_m * tiles_k);
    const bool vec = K % 4 == 0 && is_aligned(gx, 4 * sizeof(T));
    grad_input_kernel<T><<<blocks, kTileThreads, 0, st>>>(static_cast<const T*>(grad_out), CB, SCB,
                                                          M, N, K, tiles_m, tiles_k, vec, gx);
    LT8_CHECK_LAUNCH("grad_input_kernel");
    return Status::Ok();
  });
}

}  // namespace gpu
}  // namespace lt8
