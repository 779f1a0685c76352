// CUDA layout transforms between row-major and cuBLASLt's tiled int8 orders. Same contract and
// same formula (layout_offsets.h) as cpu::transform_layout in layout_cpu.cc.
//
// Each thread moves 4-byte units of the tiled buffer, visited in tiled memory order: the tiled
// side is then fully coalesced, and every unit is 4 consecutive columns of one row, so the
// row-major side is read/written as 32-byte row segments per 8 lanes.
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <cstring>

#include "cuda_common.cuh"
#include "internal.h"
#include "layout_offsets.h"

namespace lt8 {
namespace gpu {
namespace {

// I: index type (uint32_t when the whole padded matrix fits, which avoids 64-bit divisions;
// int64_t otherwise). kVec: in, out and the row-major row pitch are 4-byte aligned, so a unit
// is one 32-bit load and one 32-bit store.
template <class I, bool kToTiled, bool kVec>
__global__ void transform_layout_kernel(const int8_t* __restrict__ in, int8_t* __restrict__ out,
                                        I rows, I cols, I padded_rows, I units, Layout tiled) {
  const I stride = static_cast<I>(gridDim.x) * blockDim.x;
  for (I u = static_cast<I>(blockIdx.x) * blockDim.x + threadIdx.x; u < units; u += stride) {
    const I o = u * 4;  // byte offset in the tiled buffer
    if (!kVec) {
      transform_unit_bytes<I>(kToTiled, tiled, in, out, o, rows, cols, padded_rows);
      continue;
    }
    const TiledPos<I> p = tiled_position(tiled, o, padded_rows);
    // With cols % 4 == 0 and p.col % 4 == 0, a unit is either wholly inside or wholly padding.
    const bool valid = p.row < rows && p.col < cols;
    if (kToTiled) {
      const uint32_t v =
          valid ? *reinterpret_cast<const uint32_t*>(in + (p.row * cols + p.col)) : 0u;
      *reinterpret_cast<uint32_t*>(out + o) = v;
    } else if (valid) {
      *reinterpret_cast<uint32_t*>(out + (p.row * cols + p.col)) =
          *reinterpret_cast<const uint32_t*>(in + o);
    }
  }
}

template <class I, bool kToTiled>
Status launch(const int8_t* in, int8_t* out, int64_t rows, int64_t cols, int64_t padded_rows,
              int64_t units, Layout tiled, bool vec, cudaStream_t stream, int blocks) {
  constexpr int kThreads = 256;
  const int64_t need = (units + kThreads - 1) / kThreads;
  const int grid = static_cast<int>(std::min<int64_t>(need, blocks));
  if (vec)
    transform_layout_kernel<I, kToTiled, true><<<grid, kThreads, 0, stream>>>(
        in, out, static_cast<I>(rows), static_cast<I>(cols), static_cast<I>(padded_rows),
        static_cast<I>(units), tiled);
  else
    transform_layout_kernel<I, kToTiled, false><<<grid, kThreads, 0, stream>>>(
        in, out, static_cast<I>(rows), static_cast<I>(cols), static_cast<I>(padded_rows),
        static_cast<I>(units), tiled);
  LT8_CHECK_LAUNCH("transform_layout_kernel");
  return Status::Ok();
}

bool aligned4(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 3u) == 0; }

}  // namespace

Status transform_layout(const Exec& ex, const int8_t* in, int8_t* out, int64_t rows, int64_t cols,
                        Layout from, Layout to) {
  DeviceGuard guard(ex);
  if (!guard.ok()) return guard.status();
  cudaStream_t stream = stream_of(ex);

  if (from == Layout::kRow && to == Layout::kRow) {
    if (rows * cols > 0)
      LT8_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(out, in, static_cast<size_t>(rows * cols),
                                               cudaMemcpyDeviceToDevice, stream),
                               "cudaMemcpyAsync (transform_layout row -> row)");
    return Status::Ok();
  }

  const bool to_tiled = from == Layout::kRow;
  const Layout tiled = to_tiled ? to : from;
  // Header helpers rather than lt8::layout_padded_shape (layout_cpu.cc): keeps this static
  // library free of references back into the CPU one.
  const int64_t prows = round_up_to(rows, layout_row_multiple(tiled));
  const int64_t pcols = round_up_to(cols, layout_col_multiple(tiled));
  const int64_t bytes = prows * pcols;
  if (bytes == 0) return Status::Ok();
  const int64_t units = bytes / 4;  // pcols is a multiple of 32
  const bool vec = aligned4(in) && aligned4(out) && cols % 4 == 0;

  // Enough blocks to fill the GPU; the grid-stride loop covers the rest (616M-element weights
  // would otherwise need a grid far beyond what is useful).
  int dev = 0, sms = 0;
  LT8_CUDA_RETURN_IF_ERROR(cudaGetDevice(&dev), "cudaGetDevice");
  LT8_CUDA_RETURN_IF_ERROR(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev),
                           "cudaDeviceGetAttribute");
  const int blocks = std::max(1, sms) * 16;

  // 32-bit indexing when every index (incl. row * cols + col and the offsets) stays below 2^31.
  const bool small = bytes < (int64_t{1} << 31);
  if (to_tiled)
    return small ? launch<uint32_t, true>(in, out, rows, cols, prows, units, tiled, vec, stream,
                                          blocks)
                 : launch<int64_t, true>(in, out, rows, cols, prows, units, tiled, vec, stream,
                                         blocks);
  return small ? launch<uint32_t, false>(in, out, rows, cols, prows, units, tiled, vec, stream,
                                         blocks)
               : launch<int64_t, false>(in, out, rows, cols, prows, units, tiled, vec, stream,
                                        blocks);
}

}  // namespace gpu
}  // namespace lt8
