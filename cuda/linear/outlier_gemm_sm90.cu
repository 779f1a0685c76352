// The GEMMs of the many-outlier path on Hopper (sm_90a), with CUTLASS 3's TMA + wgmma
// warp-specialized kernel: the outlier GEMM, D (M, N) float32 = Xg @ Wg^T over the gathered
// outlier columns, and the int8 GEMM (in place of cuBLASLt's on that path for wide inputs, so that
// it can stand aside on the device when every column is an outlier column and the int8 operand is
// all zeros). Built only when CUTLASS's headers are found at build time and sm_90 is a target
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

// Both GEMMs take A (M, K) and B (N, K) row-major, i.e. CUTLASS's A row-major and B
// column-major (K contiguous in both: the "TN" GEMM), and write D (M, N) row-major.
using LayoutA = cutlass::layout::RowMajor;
using LayoutB = cutlass::layout::ColumnMajor;
using LayoutD = cutlass::layout::RowMajor;
using ClusterShape = Shape<_1, _1, _1>;
using KernelSchedule = cutlass::gemm::KernelPtrArrayTmaWarpSpecializedCooperative;
using EpilogueSchedule = cutlass::epilogue::PtrArrayTmaWarpSpecializedCooperative;

// 128x256 output tiles with two consumer warpgroups (cooperative); k-tiles of 128 bytes.
using TileF16 = Shape<_128, _256, _64>;
using TileS8 = Shape<_128, _256, _128>;

// Epilogues: D = 1 * acc, no source (lt8's epilogue runs afterwards). The int8 GEMM keeps
// int32 all the way (a float step would round sums above 2^24). They sit outside the template
// below because they do not depend on its parameter (and GCC rejects the builder there).
template <class Tile, class Acc>
using EpilogueOf = typename cutlass::epilogue::collective::CollectiveBuilder<
    cutlass::arch::Sm90, cutlass::arch::OpClassTensorOp, Tile, ClusterShape,
    cutlass::epilogue::collective::EpilogueTileAuto, Acc, Acc, void, LayoutD*, 16 / sizeof(Acc),
    Acc, LayoutD*, 16 / sizeof(Acc), EpilogueSchedule,
    cutlass::epilogue::fusion::LinearCombination<Acc, Acc, void, Acc>>::CollectiveOp;
using EpilogueF32 = EpilogueOf<TileF16, float>;
using EpilogueS32 = EpilogueOf<TileS8, int32_t>;
constexpr int kSmemF32 = static_cast<int>(sizeof(EpilogueF32::SharedStorage));
constexpr int kSmemS32 = static_cast<int>(sizeof(EpilogueS32::SharedStorage));

template <typename Elem, typename Acc, class Tile, class Epilogue, int kEpilogueSmem>
struct Sm90Gemm {
  using Mainloop = typename cutlass::gemm::collective::CollectiveBuilder<
      cutlass::arch::Sm90, cutlass::arch::OpClassTensorOp, Elem, LayoutA*, 16 / sizeof(Elem), Elem,
      LayoutB*, 16 / sizeof(Elem), Acc, Tile, ClusterShape,
      cutlass::gemm::collective::StageCountAutoCarveout<kEpilogueSmem>,
      KernelSchedule>::CollectiveOp;
  using Kernel = cutlass::gemm::kernel::GemmUniversal<ProblemShape, Mainloop, Epilogue>;
  using Gemm = cutlass::gemm::device::GemmUniversalAdapter<Kernel>;
  using Element = Elem;
  using Accumulator = Acc;

  // The one group's arguments, written on the device (args_kernel) at the workspace's start.
  struct DeviceArgs {
    typename ProblemShape::UnderlyingProblemShape shape;
    const Elem* a;
    const Elem* b;
    Acc* d;
    typename Kernel::InternalStrideA stride_a;
    typename Kernel::InternalStrideB stride_b;
    typename Kernel::InternalStrideD stride_d;
  };
};
template <typename Elem>
using OutlierGemm = Sm90Gemm<Elem, float, TileF16, EpilogueF32, kSmemF32>;
using Int8Gemm = Sm90Gemm<int8_t, int32_t, TileS8, EpilogueS32, kSmemS32>;

// The workspace: the outlier GEMM's half, then the int8 GEMM's; each starts with its DeviceArgs.
constexpr size_t kHalfWorkspace = kOutlierGemmSm90WorkspaceBytes / 2;
constexpr size_t kArgsBytes = 1024;  // DeviceArgs, rounded up; CUTLASS's workspace follows

// What the GEMM of one call is, decided on the device from the outlier count.
struct Plan {
  const void* a;
  int64_t lda;
  const void* b;
  int64_t ldb;
  void* d;
  int M, N, K;
  // Outlier GEMM: runs when count > min_count, over the gathered columns (k rounded up to the
  // gather tile), A = x itself when every column is an outlier column and x_direct.
  bool outlier;
  const void* x;
  bool x_direct;
};

template <typename G>
__global__ void args_kernel(typename G::DeviceArgs* args, Plan p,
                            const int32_t* __restrict__ count_p, int min_count) {
  const int count = *count_p;
  int M = p.M, K = p.K;
  const void* a = p.a;
  int64_t lda = p.lda;
  if (p.outlier) {
    const bool run = count > min_count;
    K = run ? (count + kOutlierGatherTile - 1) / kOutlierGatherTile * kOutlierGatherTile
            : kOutlierGatherTile;
    if (!run) M = 0;
    if (run && count == p.K && p.x_direct) {  // every column: x is its own gather
      a = p.x;
      lda = p.K;
      K = p.K;
    }
  } else if (count == K && count > min_count) {
    M = 0;  // every column an outlier column: the int8 product is all zeros (see the header)
  }
  args->shape = make_shape(M, p.N, K);
  args->a = static_cast<const typename G::Element*>(a);
  args->b = static_cast<const typename G::Element*>(p.b);
  args->d = static_cast<typename G::Accumulator*>(p.d);
  // Each stride is (leading dimension, 1, batch stride 0).
  args->stride_a = {};
  args->stride_b = {};
  args->stride_d = {};
  get<0>(args->stride_a) = lda;
  get<0>(args->stride_b) = p.ldb;
  get<0>(args->stride_d) = p.N;
}

template <typename G>
Status run(cudaStream_t st, const Plan& plan, const int32_t* count, int min_count,
           void* workspace) {
  auto* dargs = static_cast<typename G::DeviceArgs*>(workspace);
  static_assert(sizeof(typename G::DeviceArgs) <= kArgsBytes, "DeviceArgs outgrew kArgsBytes");
  args_kernel<G><<<1, 1, 0, st>>>(dargs, plan, count, min_count);
  LT8_CHECK_LAUNCH("sm90 args_kernel");

  int dev = 0;
  LT8_CUDA_RETURN_IF_ERROR(cudaGetDevice(&dev), "cudaGetDevice");
  cutlass::KernelHardwareInfo hw;
  hw.device_id = dev;
  hw.sm_count = current_device_sm_count();

  typename G::Gemm::Arguments args;
  args.mode = cutlass::gemm::GemmUniversalMode::kGrouped;
  args.problem_shape = {1, &dargs->shape, nullptr};
  args.mainloop = {&dargs->a, &dargs->stride_a, &dargs->b, &dargs->stride_b};
  args.epilogue.thread.alpha = 1;
  args.epilogue.thread.beta = 0;
  args.epilogue.ptr_C = nullptr;
  args.epilogue.dC = nullptr;
  args.epilogue.ptr_D = &dargs->d;
  args.epilogue.dD = &dargs->stride_d;
  args.hw_info = hw;

  void* cutlass_ws = static_cast<char*>(workspace) + kArgsBytes;
  if (G::Gemm::get_workspace_size(args) > kHalfWorkspace - kArgsBytes)
    return Status::Internal("sm90 GEMM: CUTLASS workspace exceeds its reservation");
  typename G::Gemm gemm;
  if (gemm.can_implement(args) != cutlass::Status::kSuccess)
    return Status::Internal("sm90 GEMM: CUTLASS cannot implement the problem");
  if (gemm.initialize(args, cutlass_ws, st) != cutlass::Status::kSuccess)
    return Status::Internal("sm90 GEMM: CUTLASS initialize failed");
  if (gemm.run(st) != cutlass::Status::kSuccess)
    return Status::Internal("sm90 GEMM: CUTLASS launch failed");
  LT8_CHECK_LAUNCH("sm90 GEMM");
  return Status::Ok();
}

}  // namespace

bool outlier_gemm_sm90_supported(int64_t M, int64_t N) {
  // sm_90a code runs on compute capability 9.0 only; TMA stores D rows 16-byte aligned.
  return current_device_cc() == 90 && N % 4 == 0 && M < (int64_t{1} << 31) &&
         N < (int64_t{1} << 31);
}

Status launch_outlier_gemm_sm90(cudaStream_t st, DType dtype, const void* xg, const void* wg,
                                int64_t Kcap, const int32_t* count, int min_count, int64_t M,
                                int64_t N, const void* x, int64_t K, float* d, void* workspace) {
  Plan p{xg,
         Kcap,
         wg,
         Kcap,
         d,
         static_cast<int>(M),
         static_cast<int>(N),
         static_cast<int>(K),
         true,
         x,
         x != nullptr && outlier_gemm_x_direct(x, K)};
  if (dtype == DType::kF16)
    return run<OutlierGemm<cutlass::half_t>>(st, p, count, min_count, workspace);
  if (dtype == DType::kBF16)
    return run<OutlierGemm<cutlass::bfloat16_t>>(st, p, count, min_count, workspace);
  return Status::Invalid("launch_outlier_gemm_sm90: x must be float16 or bfloat16");
}

bool int8_gemm_sm90_supported(const int8_t* q, const int8_t* CB, int64_t M, int64_t N, int64_t K) {
  // TMA: 16-byte aligned rows of A / B (K % 16) and of the int32 D (N % 4). K <= 2^17 keeps
  // every int32 sum exact (127 * 127 * K < 2^31), the bound cuBLASLt's path keeps too.
  return current_device_cc() == 90 && K % 16 == 0 && N % 4 == 0 && K <= (int64_t{1} << 17) &&
         reinterpret_cast<uintptr_t>(q) % 16 == 0 && reinterpret_cast<uintptr_t>(CB) % 16 == 0 &&
         M < (int64_t{1} << 31) && N < (int64_t{1} << 31) && K < (int64_t{1} << 31);
}

Status launch_int8_gemm_sm90(cudaStream_t st, const int8_t* q, const int8_t* CB, int64_t M,
                             int64_t N, int64_t K, const int32_t* count, int min_count,
                             int32_t* acc, void* workspace) {
  Plan p{
      q,     K,       CB,   K, acc, static_cast<int>(M), static_cast<int>(N), static_cast<int>(K),
      false, nullptr, false};
  return run<Int8Gemm>(st, p, count, min_count, static_cast<char*>(workspace) + kHalfWorkspace);
}

}  // namespace gpu
}  // namespace lt8
