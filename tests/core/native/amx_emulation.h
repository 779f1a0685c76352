// Scalar model of the AMX instructions lt8's AMX GEMM uses (Intel SDM, "Intel AMX instruction
// set reference"), so that tests/core/test_cpu_gemm_amx_emulated.py can run
// cuda/cpu_simd/int8_gemm_amx.cc on any x86-64 CPU: it compiles a copy of that file in which
// <immintrin.h> is replaced by this header. Each tile honours the rows and bytes per row of the
// last LDTILECFG; loads zero what lies beyond them, TDPBSSD wraps in int32 like the hardware.
#pragma once

#include <cstdint>
#include <cstring>

namespace amx_emulation {

struct State {
  int rows[8] = {};
  int colsb[8] = {};
  uint8_t data[8][16][64] = {};
};
inline thread_local State state;

inline void loadconfig(const void* cfg) {
  const uint8_t* c = static_cast<const uint8_t*>(cfg);
  for (int t = 0; t < 8; ++t) {
    uint16_t cb;
    std::memcpy(&cb, c + 16 + 2 * t, 2);
    state.colsb[t] = cb;
    state.rows[t] = c[48 + t];
  }
  std::memset(state.data, 0, sizeof(state.data));
}
inline void release() { state = State{}; }
inline void zero(int t) { std::memset(state.data[t], 0, sizeof(state.data[t])); }
inline void load(int t, const void* base, long stride) {
  zero(t);
  for (int r = 0; r < state.rows[t]; ++r)
    std::memcpy(state.data[t][r], static_cast<const uint8_t*>(base) + r * stride, state.colsb[t]);
}
inline void store(int t, void* base, long stride) {
  for (int r = 0; r < state.rows[t]; ++r)
    std::memcpy(static_cast<uint8_t*>(base) + r * stride, state.data[t][r], state.colsb[t]);
}
// dst[m][n] += sum over k, i < 4 of a[m][4k + i] * b[k][4n + i], signed bytes, int32 wrap.
inline void dpbssd(int dst, int a, int b) {
  for (int m = 0; m < state.rows[dst]; ++m) {
    for (int n = 0; n < state.colsb[dst] / 4; ++n) {
      uint32_t acc;
      std::memcpy(&acc, &state.data[dst][m][4 * n], 4);
      for (int k = 0; k < state.colsb[a] / 4; ++k)
        for (int i = 0; i < 4; ++i)
          acc += static_cast<uint32_t>(static_cast<int8_t>(state.data[a][m][4 * k + i]) *
                                       static_cast<int8_t>(state.data[b][k][4 * n + i]));
      std::memcpy(&state.data[dst][m][4 * n], &acc, 4);
    }
  }
}

}  // namespace amx_emulation

#define _tile_loadconfig(cfg) amx_emulation::loadconfig(cfg)
#define _tile_release() amx_emulation::release()
#define _tile_zero(t) amx_emulation::zero(t)
#define _tile_loadd(t, base, stride) amx_emulation::load(t, base, stride)
#define _tile_stored(t, base, stride) amx_emulation::store(t, base, stride)
#define _tile_dpbssd(d, a, b) amx_emulation::dpbssd(d, a, b)
