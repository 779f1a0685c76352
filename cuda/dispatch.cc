// Public entry points: argument checks shared by every backend, then CPU or CUDA.
// The frontends validate in Python first; these checks repeat the ones that protect memory.
#include <cstdlib>
#include <string>

#include "cpu_simd/cpu_isa.h"
#include "cpu_simd/thread_pool.h"
#include "internal.h"

namespace lt8 {

void set_cpu_threads(int n) {
  cpu::set_cpu_threads(n);
}
int cpu_threads() {
  return cpu::cpu_threads();
}
bool use_openmp_threads(bool on) {
  return cpu::set_openmp_threads(on);
}
const char* cpu_isa() {
  return cpu::cpu_isa_name(cpu::active_cpu_isa());
}

bool cutlass_sm90_built() {
  return kWithOutlierGemmSm90;
}

#ifdef LT8_WITH_CUDA
bool cuda_built() {
  return true;
}
const char* cuda_archs() {
  return LT8_CUDA_ARCHS;
}
namespace gpu {
void set_cublaslt_enabled(bool enabled);
bool cublaslt_available();
}  // namespace gpu
void set_cublaslt_enabled(bool enabled) {
  gpu::set_cublaslt_enabled(enabled);
}
bool cublaslt_available() {
  return gpu::cublaslt_available();
}
#else
bool cuda_built() {
  return false;
}
const char* cuda_archs() {
  return "";
}
void set_cublaslt_enabled(bool) {}
bool cublaslt_available() {
  return false;
}
#endif

size_t dtype_size(DType t) {
#define LT8_SIZE_CASE(e, code, name, bytes) \
  case DType::e:                            \
    return bytes;
  switch (t) { LT8_DTYPES(LT8_SIZE_CASE) }
#undef LT8_SIZE_CASE
  return 0;
}

const char* dtype_name(DType t) {
#define LT8_NAME_CASE(e, code, name, bytes) \
  case DType::e:                            \
    return name;
  switch (t) { LT8_DTYPES(LT8_NAME_CASE) }
#undef LT8_NAME_CASE
  return "unknown";
}

namespace {

constexpr size_t kAlign = 256;
size_t align_up(size_t n) {
  return (n + kAlign - 1) / kAlign * kAlign;
}

bool is_float(DType t) {
  return t == DType::kF32 || t == DType::kF16 || t == DType::kBF16;
}

Status check_float(DType t, const char* what) {
  if (is_float(t)) return Status::Ok();
  return Status::Invalid(std::string(what) + " must be float32, float16 or bfloat16, got " +
                         dtype_name(t));
}

Status check_dims(std::initializer_list<std::pair<const char*, int64_t>> dims) {
  for (auto& [name, v] : dims) {
    if (v < 0)
      return Status::Invalid(std::string(name) + " must be >= 0, got " + std::to_string(v));
    // Kernels index with int64 but grid sizes and row lengths fit in int32.
    if (v > (int64_t{1} << 31) - 1)
      return Status::Invalid(std::string(name) + " is too large: " + std::to_string(v));
  }
  return Status::Ok();
}

Status check_ptrs(std::initializer_list<std::pair<const char*, const void*>> ptrs, bool nonempty) {
  if (!nonempty) return Status::Ok();
  for (auto& [name, p] : ptrs)
    if (p == nullptr) return Status::Invalid(std::string(name) + " must not be null");
  return Status::Ok();
}

Status no_cuda() {
  return Status::Unsupported(
      "this lt8 build has no CUDA kernels; rebuild with a CUDA toolkit (LT8_CUDA=ON) to use GPU "
      "tensors");
}

#define LT8_TRY(expr)        \
  do {                       \
    Status _s = (expr);      \
    if (!_s.ok()) return _s; \
  } while (0)

#define LT8_UNPAREN(...) __VA_ARGS__
#ifdef LT8_WITH_CUDA
#define LT8_GPU_CALL(name, args) gpu::name(ex, LT8_UNPAREN args)
#else
#define LT8_GPU_CALL(name, args) no_cuda()
#endif
// The routing of every op: cpu::name(args) or gpu::name(ex, args) by ex.device, where `args` is
// the parenthesized argument list of cpu::name.
#define LT8_ROUTE(name, args)                                              \
  if (!is_valid(ex.device)) return Status::Invalid("unknown device code"); \
  return ex.device == Device::kCUDA ? LT8_GPU_CALL(name, args) : cpu::name args

}  // namespace

int small_batch_rows() {
  static const int rows = [] {
    const char* v = std::getenv("LT8_GEMV_MAX_ROWS");
    const int r = v != nullptr ? std::atoi(v) : kSmallBatchRows;
    return r < 0 ? 0 : (r > kSmallBatchRows ? kSmallBatchRows : r);
  }();
  return rows;
}

namespace {
// Offsets of the tensor-core outlier path's scratch, the same in the fused op's and in
// add_outlier_terms' workspace: the gather buffers (rows of outlier_gather_stride(K) 2-byte
// elements) and, in builds with the CUTLASS sm_90a GEMMs, their float32 result and workspace.
struct GatherOffsets {
  size_t x = 0, w = 0, d = 0, gemm_ws = 0;
  template <typename Scratch>
  void assign(char* b, Scratch* s) const {
    s->tc_x = b + x;
    s->tc_w = b + w;
    if (kWithOutlierGemmSm90) {
      s->tc_d = reinterpret_cast<float*>(b + d);
      s->tc_gemm_ws = b + gemm_ws;
    }
  }
};
template <typename Take>
GatherOffsets take_gather(Take& take, int64_t M, int64_t N, int64_t K) {
  const size_t row = 2 * static_cast<size_t>(outlier_gather_stride(K));
  GatherOffsets g;
  g.x = take(row * M);
  g.w = take(row * N);
  if (kWithOutlierGemmSm90) {
    g.d = take(sizeof(float) * M * N);
    g.gemm_ws = take(kOutlierGemmSm90WorkspaceBytes);
  }
  return g;
}
}  // namespace

size_t carve_linear_scratch(void* base, int64_t M, int64_t N, int64_t K, DType x_dtype,
                            float threshold, Device device, LinearScratch* s) {
  size_t off = 0;
  auto take = [&](size_t bytes) {
    size_t at = off;
    off += align_up(bytes);
    return at;
  };
  size_t q = take(static_cast<size_t>(M) * K);
  size_t rs = take(sizeof(float) * M);
  size_t mask = take(K);
  size_t idx = take(sizeof(int32_t) * K);
  size_t cnt = take(sizeof(int32_t));
  const bool large = device == Device::kCUDA && M > small_batch_rows();
  const bool gather =
      large && threshold > 0.0f && (x_dtype == DType::kF16 || x_dtype == DType::kBF16);
  size_t acc = large ? take(sizeof(int32_t) * M * N) : 0;
  size_t ow = large ? take(sizeof(float) * kStagedOutliers * N) : 0;
  size_t ox = large ? take(sizeof(float) * kStagedOutliers * M) : 0;
  size_t ws = large ? take(kGemmWorkspaceBytes) : 0;
  const GatherOffsets g = gather ? take_gather(take, M, N, K) : GatherOffsets{};
  if (base != nullptr && s != nullptr) {
    char* b = static_cast<char*>(base);
    s->q = reinterpret_cast<int8_t*>(b + q);
    s->row_scale = reinterpret_cast<float*>(b + rs);
    s->mask = reinterpret_cast<uint8_t*>(b + mask);
    s->outlier_idx = reinterpret_cast<int32_t*>(b + idx);
    s->outlier_count = reinterpret_cast<int32_t*>(b + cnt);
    if (large) {
      s->acc = reinterpret_cast<int32_t*>(b + acc);
      s->outlier_w = reinterpret_cast<float*>(b + ow);
      s->outlier_x = reinterpret_cast<float*>(b + ox);
      s->gemm_ws = b + ws;
      s->gemm_ws_bytes = kGemmWorkspaceBytes;
    }
    if (gather) g.assign(b, s);
  }
  return off;
}

size_t carve_terms_scratch(void* base, int64_t M, int64_t N, int64_t K, DType x_dtype,
                           Device device, TermsScratch* s) {
  if (device != Device::kCUDA || (x_dtype != DType::kF16 && x_dtype != DType::kBF16)) return 0;
  size_t off = 0;
  auto take = [&](size_t bytes) {
    size_t at = off;
    off += align_up(bytes);
    return at;
  };
  size_t idx = take(sizeof(int32_t) * K);
  size_t cnt = take(sizeof(int32_t));
  const GatherOffsets g = take_gather(take, M, N, K);
  if (base != nullptr && s != nullptr) {
    char* b = static_cast<char*>(base);
    s->outlier_idx = reinterpret_cast<int32_t*>(b + idx);
    s->outlier_count = reinterpret_cast<int32_t*>(b + cnt);
    g.assign(b, s);
  }
  return off;
}

size_t add_outlier_terms_workspace_size(int64_t M, int64_t N, int64_t K, DType x_dtype,
                                        Device device) {
  if (M < 0 || N < 0 || K < 0) return 0;
  return carve_terms_scratch(nullptr, M, N, K, x_dtype, device, nullptr);
}

size_t int8_linear_workspace_size(int64_t M, int64_t N, int64_t K, DType x_dtype, float threshold,
                                  Device device) {
  if (M < 0 || N < 0 || K < 0) return 0;
  return carve_linear_scratch(nullptr, M, N, K, x_dtype, threshold, device, nullptr);
}

Status quantize_rows(const Exec& ex, DType x_dtype, const void* x, int64_t M, int64_t K,
                     float threshold, int8_t* q, float* row_scale, uint8_t* outlier_mask) {
  LT8_TRY(check_float(x_dtype, "x"));
  LT8_TRY(check_dims({{"M", M}, {"K", K}}));
  if (!(threshold >= 0.0f)) return Status::Invalid("threshold must be >= 0 and not NaN");
  LT8_TRY(check_ptrs({{"x", x}, {"q", q}}, M * K > 0));
  LT8_TRY(check_ptrs({{"row_scale", row_scale}}, M > 0));
  LT8_TRY(check_ptrs({{"outlier_mask", outlier_mask}}, K > 0));
  LT8_ROUTE(quantize_rows, (x_dtype, x, M, K, threshold, q, row_scale, outlier_mask));
}

Status dequantize_rows(const Exec& ex, const int8_t* q, const float* row_scale, int64_t M,
                       int64_t K, DType out_dtype, void* out) {
  LT8_TRY(check_float(out_dtype, "out"));
  LT8_TRY(check_dims({{"M", M}, {"K", K}}));
  LT8_TRY(check_ptrs({{"q", q}, {"out", out}}, M * K > 0));
  LT8_TRY(check_ptrs({{"row_scale", row_scale}}, M * K > 0));
  LT8_ROUTE(dequantize_rows, (q, row_scale, M, K, out_dtype, out));
}

Status int8_gemm(const Exec& ex, const int8_t* A, const int8_t* B, int64_t M, int64_t N, int64_t K,
                 int32_t* C) {
  LT8_TRY(check_dims({{"M", M}, {"N", N}, {"K", K}}));
  LT8_TRY(check_ptrs({{"A", A}, {"B", B}}, M * N * K > 0));
  LT8_TRY(check_ptrs({{"C", C}}, M * N > 0));
  LT8_ROUTE(int8_gemm, (A, B, M, N, K, C));
}

Status dequant_epilogue(const Exec& ex, const int32_t* C, const float* row_scale,
                        const float* col_scale, DType bias_dtype, const void* bias, int64_t M,
                        int64_t N, DType out_dtype, void* out) {
  LT8_TRY(check_float(out_dtype, "out"));
  if (bias != nullptr) LT8_TRY(check_float(bias_dtype, "bias"));
  LT8_TRY(check_dims({{"M", M}, {"N", N}}));
  LT8_TRY(check_ptrs({{"C", C}, {"row_scale", row_scale}, {"col_scale", col_scale}, {"out", out}},
                     M * N > 0));
  LT8_ROUTE(dequant_epilogue, (C, row_scale, col_scale, bias_dtype, bias, M, N, out_dtype, out));
}

Status transform_layout(const Exec& ex, const int8_t* in, int8_t* out, int64_t rows, int64_t cols,
                        Layout from, Layout to) {
  LT8_TRY(check_dims({{"rows", rows}, {"cols", cols}}));
  if (!is_valid(from) || !is_valid(to)) return Status::Invalid("unknown layout code");
  if (from != Layout::kRow && to != Layout::kRow)
    return Status::Invalid("one side of a layout transform must be row-major");
  LT8_TRY(check_ptrs({{"in", in}, {"out", out}}, rows * cols > 0));
  LT8_ROUTE(transform_layout, (in, out, rows, cols, from, to));
}

Status int8_linear(const Exec& ex, DType x_dtype, const void* x, const int8_t* CB, const float* SCB,
                   DType bias_dtype, const void* bias, int64_t M, int64_t N, int64_t K,
                   float threshold, void* out, void* workspace, size_t workspace_bytes) {
  LT8_TRY(check_float(x_dtype, "x"));
  if (bias != nullptr) LT8_TRY(check_float(bias_dtype, "bias"));
  LT8_TRY(check_dims({{"M", M}, {"N", N}, {"K", K}}));
  if (!(threshold >= 0.0f)) return Status::Invalid("threshold must be >= 0 and not NaN");
  LT8_TRY(check_ptrs({{"out", out}}, M * N > 0));
  LT8_TRY(check_ptrs({{"x", x}, {"CB", CB}, {"SCB", SCB}}, M * N * K > 0));
  if (!is_valid(ex.device)) return Status::Invalid("unknown device code");
  size_t need = int8_linear_workspace_size(M, N, K, x_dtype, threshold, ex.device);
  if (workspace_bytes < need || (need > 0 && workspace == nullptr))
    return Status::Invalid("workspace too small: need " + std::to_string(need) + " bytes, got " +
                           std::to_string(workspace_bytes));
  LinearScratch s;
  carve_linear_scratch(workspace, M, N, K, x_dtype, threshold, ex.device, &s);
  LT8_ROUTE(int8_linear, (x_dtype, x, CB, SCB, bias_dtype, bias, M, N, K, threshold, out, s));
}

Status int8_weight_linear(const Exec& ex, DType x_dtype, const void* x, const int8_t* CB,
                          const float* SCB, DType bias_dtype, const void* bias, int64_t M,
                          int64_t N, int64_t K, void* out) {
  LT8_TRY(check_float(x_dtype, "x"));
  if (bias != nullptr) LT8_TRY(check_float(bias_dtype, "bias"));
  LT8_TRY(check_dims({{"M", M}, {"N", N}, {"K", K}}));
  LT8_TRY(check_ptrs({{"out", out}}, M * N > 0));
  LT8_TRY(check_ptrs({{"x", x}, {"CB", CB}, {"SCB", SCB}}, M * N * K > 0));
  LT8_ROUTE(int8_weight_linear, (x_dtype, x, CB, SCB, bias_dtype, bias, M, N, K, out));
}

Status int8_linear_grad_input(const Exec& ex, DType g_dtype, const void* grad_out, const int8_t* CB,
                              const float* SCB, int64_t M, int64_t N, int64_t K, void* grad_x) {
  LT8_TRY(check_float(g_dtype, "grad_out"));
  LT8_TRY(check_dims({{"M", M}, {"N", N}, {"K", K}}));
  LT8_TRY(check_ptrs({{"grad_x", grad_x}}, M * K > 0));
  LT8_TRY(check_ptrs({{"grad_out", grad_out}, {"CB", CB}, {"SCB", SCB}}, M * N * K > 0));
  LT8_ROUTE(int8_linear_grad_input, (g_dtype, grad_out, CB, SCB, M, N, K, grad_x));
}

Status add_outlier_terms(const Exec& ex, DType x_dtype, const void* x, const uint8_t* outlier_mask,
                         const int8_t* CB, const float* SCB, const float* base, int64_t M,
                         int64_t N, int64_t K, float* out, void* workspace,
                         size_t workspace_bytes) {
  LT8_TRY(check_float(x_dtype, "x"));
  LT8_TRY(check_dims({{"M", M}, {"N", N}, {"K", K}}));
  LT8_TRY(check_ptrs({{"base", base}, {"out", out}, {"SCB", SCB}}, M * N > 0));
  LT8_TRY(check_ptrs({{"x", x}, {"outlier_mask", outlier_mask}, {"CB", CB}}, M * N * K > 0));
  if (!is_valid(ex.device)) return Status::Invalid("unknown device code");
  const size_t need = add_outlier_terms_workspace_size(M, N, K, x_dtype, ex.device);
  if (workspace_bytes < need || (need > 0 && workspace == nullptr))
    return Status::Invalid("workspace too small: need " + std::to_string(need) + " bytes, got " +
                           std::to_string(workspace_bytes));
  if (ex.device == Device::kCUDA) {
    TermsScratch s;
    carve_terms_scratch(workspace, M, N, K, x_dtype, ex.device, &s);
    return LT8_GPU_CALL(add_outlier_terms,
                        (x_dtype, x, outlier_mask, CB, SCB, base, M, N, K, out, s));
  }
  return cpu::add_outlier_terms(x_dtype, x, outlier_mask, CB, SCB, base, M, N, K, out);
}

}  // namespace lt8
