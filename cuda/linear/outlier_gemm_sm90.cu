// The outlier GEMM of the tensor-core outlier path on Hopper (sm_90a): D (M, N) float32 =
// Xg @ Wg^T over the gathered outlier columns, with CUTLASS 3's TMA + wgmma warp-specialized
// kernel. Built only when CUTLASS's headers are found at build time and sm_90 is a target
// (CMakeLists.txt: LT8_WITH_CUTLASS_SM90); elsewhere outlier_tc.cu's WMMA kernel does the job.
//
// Why the *grouped* kernel for one GEMM: its problem shapes are read from device memory, so the
// k extent (the outlier count rounded up to the gather tile) is decided on the device like every
// other lt8 kernel's, with no host sync and a launch that CUDA graphs and XLA can replay. A
// small kernel writes the one group's shape, pointers and strides into the workspace first; when
// the count is small enough for the exact epilogue it writes M = 0, and the GEMM finds no tile.
#include <cuda_runtime.h>

#include <cstdint>

#include "cute/tensor.hpp"
#include "cutlass/cutlass.h"
#include "cutlass/epilogue/collective/collective_builder.hpp"
#include "cutlass/gemm/collective/collective_builder.hpp"
#include "cutlass/gemm/device/gemm_universal_adapter.h"
#include "cutlass/gemm/dispatch_policy.hpp"
#include "cutlass/gemm/group_array_problem_shape.hpp"
#include "cutlass/gemm/kernel/gemm_universal.hpp"

#include "common/cuda_check.cuh"
#include "common/device_caps.cuh"
#include "linear/outlier_gemm_sm90.h"

namespace lt8 {
namespace gpu {
namespace {

using namespace cute;

using ProblemShape = cutlass::gemm::GroupProblemShape<Shape<int, int, int>>;  // (M, N, K)

// Xg is (M, Kcap) row-major = CUTLASS's A (M x K, K contiguous); Wg is (N, Kcap) row-major =
// CUTLASS's B (K x N column-major); D is (M, N) row-major float32.
using LayoutA = cutlass::layout::RowMajor;
using LayoutB = cutlass::layout::ColumnMajor;
using LayoutD = cutlass::layout::RowMajor;
constexpr int kAlignD = 16 / sizeof(float);
// 128x256 output tiles, two consumer warpgroups (cooperative), 64-wide k-tiles: CUTLASS's usual
// shape for large fp16 GEMMs on Hopper.
using TileShape = Shape<_128, _256, _64>;
using ClusterShape = Shape<_1, _1, _1>;
using KernelSchedule = cutlass::gemm::KernelPtrArrayTmaWarpSpecializedCooperative;
using EpilogueSchedule = cutlass::epilogue::PtrArrayTmaWarpSpecializedCooperative;

// D = 1 * acc (no source): the lt8 epilogue runs afterwards (outlier_tc.cu). Outside the template
// below: it does not depend on the element type (and GCC rejects the builder in that context).
using CollectiveEpilogue = typename cutlass::epilogue::collective::CollectiveBuilder<
    cutlass::arch::Sm90, cutlass::arch::OpClassTensorOp, TileShape, ClusterShape,
    cutlass::epilogue::collective::EpilogueTileAuto, float, float, void, LayoutD*, kAlignD, float,
    LayoutD*, kAlignD, EpilogueSchedule,
    cutlass::epilogue::fusion::LinearCombination<float, float, void, float>>::CollectiveOp;

constexpr int kEpilogueSmemBytes = static_cast<int>(sizeof(CollectiveEpilogue::SharedStorage));

template <typename Elem>
struct OutlierGemm {
  static constexpr int kAlignAB = 16 / sizeof(Elem);
  using CollectiveMainloop = typename cutlass::gemm::collective::CollectiveBuilder<
      cutlass::arch::Sm90, cutlass::arch::OpClassTensorOp, Elem, LayoutA*, kAlignAB, Elem,
      LayoutB*, kAlignAB, float, TileShape, ClusterShape,
      cutlass::gemm::collective::StageCountAutoCarveout<kEpilogueSmemBytes>,
      KernelSchedule>::CollectiveOp;

  using Kernel =
      cutlass::gemm::kernel::GemmUniversal<ProblemShape, CollectiveMainloop, CollectiveEpilogue>;
  using Gemm = cutlass::gemm::device::GemmUniversalAdapter<Kernel>;
  using StrideA = typename Kernel::InternalStrideA;
  using StrideB = typename Kernel::InternalStrideB;
  using StrideD = typename Kernel::InternalStrideD;

  // The one group's arguments, written on the device (args_kernel) at the workspace's start.
  struct DeviceArgs {
    typename ProblemShape::UnderlyingProblemShape shape;
    const Elem* a;
    const Elem* b;
    float* d;
    StrideA stride_a;
    StrideB stride_b;
    StrideD stride_d;
  };
};

constexpr size_t kArgsBytes = 1024;  // DeviceArgs, rounded up; CUTLASS's workspace follows

template <typename G>
__global__ void args_kernel(typename G::DeviceArgs* args, const void* xg, const void* wg,
                            int64_t Kcap, const int32_t* __restrict__ count_p, int min_count,
                            int M, int N, float* d) {
  const int count = *count_p;
  const bool run = count > min_count;
  const int kp = run ? (count + kOutlierGatherTile - 1) / kOutlierGatherTile * kOutlierGatherTile
                     : kOutlierGatherTile;
  args->shape = make_shape(run ? M : 0, N, kp);
  args->a = static_cast<decltype(args->a)>(xg);
  args->b = static_cast<decltype(args->b)>(wg);
  args->d = d;
  // Each stride is (leading dimension, 1, batch stride 0): rows of Xg / Wg are Kcap apart.
  args->stride_a = typename G::StrideA{};
  args->stride_b = typename G::StrideB{};
  args->stride_d = typename G::StrideD{};
  get<0>(args->stride_a) = Kcap;
  get<0>(args->stride_b) = Kcap;
  get<0>(args->stride_d) = N;
}

template <typename Elem>
Status run(cudaStream_t st, const void* xg, const void* wg, int64_t Kcap, const int32_t* count,
           int min_count, int64_t M, int64_t N, float* d, void* workspace) {
  using G = OutlierGemm<Elem>;
  auto* dargs = static_cast<typename G::DeviceArgs*>(workspace);
  static_assert(sizeof(typename G::DeviceArgs) <= kArgsBytes, "DeviceArgs outgrew kArgsBytes");
  args_kernel<G><<<1, 1, 0, st>>>(dargs, xg, wg, Kcap, count, min_count, static_cast<int>(M),
                                  static_cast<int>(N), d);
  LT8_CHECK_LAUNCH("outlier_gemm_sm90 args_kernel");

  int dev = 0;
  LT8_CUDA_RETURN_IF_ERROR(cudaGetDevice(&dev), "cudaGetDevice");
  cutlass::KernelHardwareInfo hw;
  hw.device_id = dev;
  hw.sm_count = current_device_sm_count();

  typename G::Gemm::Arguments args;
  args.mode = cutlass::gemm::GemmUniversalMode::kGrouped;
  args.problem_shape = {1, &dargs->shape, nullptr};
  args.mainloop = {&dargs->a, &dargs->stride_a, &dargs->b, &dargs->stride_b};
  args.epilogue.thread.alpha = 1.0f;
  args.epilogue.thread.beta = 0.0f;
  args.epilogue.ptr_C = nullptr;
  args.epilogue.dC = nullptr;
  args.epilogue.ptr_D = &dargs->d;
  args.epilogue.dD = &dargs->stride_d;
  args.hw_info = hw;

  void* cutlass_ws = static_cast<char*>(workspace) + kArgsBytes;
  if (G::Gemm::get_workspace_size(args) > kOutlierGemmSm90WorkspaceBytes - kArgsBytes)
    return Status::Internal("outlier_gemm_sm90: CUTLASS workspace exceeds its reservation");
  typename G::Gemm gemm;
  if (gemm.can_implement(args) != cutlass::Status::kSuccess)
    return Status::Internal("outlier_gemm_sm90: CUTLASS cannot implement the problem");
  if (gemm.initialize(args, cutlass_ws, st) != cutlass::Status::kSuccess)
    return Status::Internal("outlier_gemm_sm90: CUTLASS initialize failed");
  if (gemm.run(st) != cutlass::Status::kSuccess)
    return Status::Internal("outlier_gemm_sm90: CUTLASS launch failed");
  LT8_CHECK_LAUNCH("outlier_gemm_sm90");
  return Status::Ok();
}

}  // namespace

bool outlier_gemm_sm90_supported(int64_t M, int64_t N) {
  // sm_90a code runs on compute capability 9.0 only; TMA stores D rows 16-byte aligned.
  return current_device_cc() == 90 && N % 4 == 0 &&
         M < (int64_t{1} << 31) && N < (int64_t{1} << 31);
}

Status launch_outlier_gemm_sm90(cudaStream_t st, DType dtype, const void* xg, const void* wg,
                                int64_t Kcap, const int32_t* count, int min_count, int64_t M,
                                int64_t N, float* d, void* workspace) {
  if (dtype == DType::kF16)
    return run<cutlass::half_t>(st, xg, wg, Kcap, count, min_count, M, N, d, workspace);
  if (dtype == DType::kBF16)
    return run<cutlass::bfloat16_t>(st, xg, wg, Kcap, count, min_count, M, N, d, workspace);
  return Status::Invalid("launch_outlier_gemm_sm90: x must be float16 or bfloat16");
}

}  // namespace gpu
}  // namespace lt8
