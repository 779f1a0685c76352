// CUDA layout transforms between row-major and cuBLASLt's tiled int8 orders. Same contract and
// same formula (layout_offsets.h) as cpu::transform_layout in transform_layout_cpu.cc.
// Launched on ex.stream; no allocation, no host synchronisation (CUDA-graph / XLA safe).
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

#include "common/cuda_check.cuh"
#include "internal.h"
#include "layout/layout_offsets.h"

namespace lt8 {
namespace gpu {
namespace {

// Work is cut into chunks of 32 rows x 32 columns. In every tiled order such a chunk (rows
// aligned to 32) is 1024 contiguous bytes of one column group (the last one of a group may be
// shorter when padded_rows % 32 != 0). A block of 256 threads moves one chunk as 256 4-byte
// units; consecutive blocks take the next column group of the same 32 rows, so the row-major
// side is swept row block by row block (good DRAM locality) and the tiled side is written or
// read in whole 1 KiB pieces. Each unit is 4 consecutive columns of one row.
constexpr int kThreads = 256;

// I: index type (uint32_t when the whole padded matrix fits, which avoids 64-bit divisions;
// int64_t otherwise). kVec: in, out and the row-major row pitch are 4-byte aligned, so a unit is
// one 32-bit load and one 32-bit store; otherwise units move byte by byte.
template <class I, bool kToTiled, bool kVec>
__global__ void __launch_bounds__(kThreads)
    transform_layout_kernel(const int8_t* __restrict__ in, int8_t* __restrict__ out, I rows, I cols,
                            I padded_rows, I groups, I chunks, Layout tiled) {
  const I ld = padded_rows * 32;
  for (I chunk = blockIdx.x; chunk < chunks; chunk += gridDim.x) {
    const I rb = chunk / groups;      // 32-row block
    const I g = chunk - rb * groups;  // 32-column group
    const I in_group = rb * 1024 + threadIdx.x * 4;
    if (in_group >= ld) continue;   // past the padded rows of a short last chunk
    const I o = g * ld + in_group;  // byte offset in the tiled buffer
    if (!kVec) {
      transform_unit_bytes<I>(kToTiled, tiled, in, out, o, rows, cols, padded_rows);
      continue;
    }
    TiledPos<I> p = tiled_position_in_group(tiled, in_group);
    p.col += g * 32;
    // With cols % 4 == 0 and p.col % 4 == 0 a unit is wholly inside or wholly padding.
    const bool valid = p.row < rows && p.col < cols;
    if (kToTiled) {
      const uint32_t v =
          valid ? *reinterpret_cast<const uint32_t*>(in + (p.row * cols + p.col)) : 0u;
      *reinterpret_cast<uint32_t*>(out + o) = v;  // padding units are written as 0
    } else if (valid) {
      *reinterpret_cast<uint32_t*>(out + (p.row * cols + p.col)) =
          *reinterpret_cast<const uint32_t*>(in + o);
    }
  }
}

template <class I, bool kToTiled>
Status launch(const int8_t* in, int8_t* out, int64_t rows, int64_t cols, int64_t padded_rows,
              int64_t groups, Layout tiled, bool vec, cudaStream_t stream, int max_blocks) {
  const int64_t chunks = (padded_rows + 31) / 32 * groups;
  const int grid = static_cast<int>(std::min<int64_t>(chunks, max_blocks));
  auto kernel = vec ? transform_layout_kernel<I, kToTiled, true>
                    : transform_layout_kernel<I, kToTiled, false>;
  kernel<<<grid, kThreads, 0, stream>>>(in, out, static_cast<I>(rows), static_cast<I>(cols),
                                        static_cast<I>(padded_rows), static_cast<I>(groups),
                                        static_cast<I>(chunks), tiled);
  LT8_CHECK_LAUNCH("transform_layout_kernel");
  return Status::Ok();
}

bool aligned4(const void* p) {
  return (reinterpret_cast<uintptr_t>(p) & 3u) == 0;
}

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
  // Header helpers rather than lt8::layout_padded_shape (transform_layout_cpu.cc): keeps this
  // static library free of references back into the CPU one.
  const int64_t prows = round_up_to(rows, layout_row_multiple(tiled));
  const int64_t pcols = round_up_to(cols, layout_col_multiple(tiled));
  const int64_t bytes = prows * pcols;
  if (bytes == 0) return Status::Ok();
  const int64_t groups = pcols / 32;
  const bool vec = aligned4(in) && aligned4(out) && cols % 4 == 0;

  // Enough blocks to fill the GPU; the grid-stride loop over chunks covers the rest.
  int dev = 0, sms = 0;
  LT8_CUDA_RETURN_IF_ERROR(cudaGetDevice(&dev), "cudaGetDevice");
  LT8_CUDA_RETURN_IF_ERROR(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev),
                           "cudaDeviceGetAttribute");
  const int blocks = std::max(1, sms) * 32;

  // 32-bit indexing when every index (incl. row * cols + col and the offsets) stays below 2^31.
  const bool small = bytes < (int64_t{1} << 31);
  if (to_tiled)
    return small ? launch<uint32_t, true>(in, out, rows, cols, prows, groups, tiled, vec, stream,
                                          blocks)
                 : launch<int64_t, true>(in, out, rows, cols, prows, groups, tiled, vec, stream,
                                         blocks);
  return small ? launch<uint32_t, false>(in, out, rows, cols, prows, groups, tiled, vec, stream,
                                         blocks)
               : launch<int64_t, false>(in, out, rows, cols, prows, groups, tiled, vec, stream,
                                        blocks);
}

}  // namespace gpu
}  // namespace lt8
