// lt8 launch API: the one kernel source both frontends reach.
//
// Everything here takes raw pointers, sizes, dtype codes and a stream. No Python, no torch,
// no XLA. Every entry point returns a Status (never throws, never exits) so that adapters can
// map it to ValueError/RuntimeError (torch) or ffi::Error (XLA).
//
// Conventions shared by every op:
//   * matrices are dense and row-major (the frontends make inputs contiguous first);
//   * int8 quantization is symmetric, per row: q = rint(x * 127 / absmax), |q| <= 127;
//   * a weight is (N=out, K=in) int8 CB plus float32 SCB (N,), W ~= CB * SCB / 127;
//   * threshold <= 0 disables outlier decomposition.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>
#include <utility>

namespace lt8 {

// The enums of the binding ABI, each listed once as X(enumerator, code, name): the enum, its
// name, its validity check and its Python face (lt8._C.DType/Device/Layout, members named by
// `name`) all come from these lists. The integer codes cross the binding as plain ints: keep them
// stable.
#define LT8_DTYPES(X)        \
  X(kF32, 0, "float32", 4)   \
  X(kF16, 1, "float16", 2)   \
  X(kBF16, 2, "bfloat16", 2) \
  X(kI8, 3, "int8", 1)       \
  X(kI32, 4, "int32", 4)     \
  X(kU8, 5, "uint8", 1)
#define LT8_DEVICES(X) \
  X(kCPU, 0, "cpu")    \
  X(kCUDA, 1, "cuda")
// cuBLASLt's tile orders (cuda/layout/layout_offsets.h says where each puts an element).
#define LT8_LAYOUTS(X)           \
  X(kRow, 0, "row")              \
  X(kCol32, 1, "col32")          \
  X(kColTuring, 2, "col_turing") \
  X(kColAmpere, 3, "col_ampere")

#define LT8_ENUMERATOR_(e, code, ...) e = code,
// Inside is_valid(E): `case E::e: return true;` for every enumerator.
#define LT8_CASE_TRUE_(e, ...) \
  case E::e:                   \
    return true;
enum class DType : int32_t { LT8_DTYPES(LT8_ENUMERATOR_) };
enum class Device : int32_t { LT8_DEVICES(LT8_ENUMERATOR_) };
enum class Layout : int32_t { LT8_LAYOUTS(LT8_ENUMERATOR_) };

// The one validity check of each enum: a code from the binding or from XLA attributes must pass
// it before anything switches on it.
constexpr bool is_valid(DType t) {
  using E = DType;
  switch (t) { LT8_DTYPES(LT8_CASE_TRUE_) }
  return false;
}
constexpr bool is_valid(Device d) {
  using E = Device;
  switch (d) { LT8_DEVICES(LT8_CASE_TRUE_) }
  return false;
}
constexpr bool is_valid(Layout l) {
  using E = Layout;
  switch (l) { LT8_LAYOUTS(LT8_CASE_TRUE_) }
  return false;
}

enum class Code : int32_t {
  kOk = 0,
  kInvalidArgument = 1,  // caller error: shapes, dtypes, null pointers
  kInternal = 2,         // CUDA runtime error
  kUnsupported = 3,      // e.g. a CUDA pointer on a build without CUDA kernels
};

struct Status {
  Code code = Code::kOk;
  std::string message;

  bool ok() const { return code == Code::kOk; }
  static Status Ok() { return {}; }
  static Status Invalid(std::string m) { return {Code::kInvalidArgument, std::move(m)}; }
  static Status Internal(std::string m) { return {Code::kInternal, std::move(m)}; }
  static Status Unsupported(std::string m) { return {Code::kUnsupported, std::move(m)}; }
};

// Where an op runs. `stream` is a cudaStream_t (nullptr = legacy default stream) for CUDA and
// ignored on the CPU. `device_index` >= 0 makes the CUDA launch run on that device (the caller's
// current device is restored); -1 means "the current device".
struct Exec {
  Device device = Device::kCPU;
  void* stream = nullptr;
  int device_index = -1;
};

// True when this build contains CUDA kernels; `cuda_archs` lists them ("75;80;...", "" if none).
bool cuda_built();
const char* cuda_archs();
// True when this build carries the Hopper (sm_90a) outlier GEMM built from CUTLASS's headers.
bool cutlass_sm90_built();

// Rows up to which the fused linear op takes the GPU's memory-bound decode GEMV (16, or less
// through the environment variable LT8_GEMV_MAX_ROWS, read once); larger batches the int8 GEMM.
int small_batch_rows();

// The int8 GEMM engine of the CUDA kernels for batches of more than 16 rows: cuBLASLt's
// tensor-core kernels when a libcublasLt can be loaded at run time (the default), else lt8's
// own dp4a GEMM. Both are exact (int32 accumulation), so results are identical either way.
// Disabling is for tests and benchmarks (also: environment LT8_DISABLE_CUBLASLT=1); it also
// keeps the Hopper CUTLASS int8 GEMM of the many-outlier path off.
void set_cublaslt_enabled(bool enabled);
bool cublaslt_available();  // false on CPU-only builds and where no libcublasLt loads

// Threads of the CPU kernels: n > 0 uses n (the torch frontend passes torch.get_num_threads()
// before each CPU call); n <= 0 restores the default, OMP_NUM_THREADS when set, else the CPUs in
// the process's affinity mask. cpu_threads() is the count the next CPU call will use.
void set_cpu_threads(int n);
int cpu_threads();
// on = true: the CPU kernels' threads run in OpenMP regions, which share torch's libgomp team
// (the torch frontend asks for it); false: lt8's own pool. Returns whether OpenMP is now used
// (never on builds without OpenMP).
bool use_openmp_threads(bool on);
// The instruction set the CPU kernels use now ("scalar", "neondot", "avx2", "avxvnni",
// "avx512vnni", "amx"): detected once, lowered by the environment variable LT8_CPU_ISA.
const char* cpu_isa();

// A framework's own intra-op thread pool, lent to lt8's kernels for one call (the XLA FFI
// handlers lend XLA's when LT8_XLA_THREAD_POOL=1: xla_ffi/handlers_cpu.cc). While a
// ScopedTaskRunner is alive on a thread, parallel_for calls made on that thread hand their
// helper tasks to it instead of lt8's pool.
class TaskRunner {
 public:
  virtual ~TaskRunner() = default;
  // Threads the runner may run at once (< 1: none, parallel_for then uses lt8's pool).
  virtual int threads() const = 0;
  // Runs task on one of its threads at some point (or inline, when it has none free).
  virtual void schedule(std::function<void()> task) = 0;
};

class ScopedTaskRunner {
 public:
  explicit ScopedTaskRunner(TaskRunner* runner);
  ~ScopedTaskRunner();
  ScopedTaskRunner(const ScopedTaskRunner&) = delete;
  ScopedTaskRunner& operator=(const ScopedTaskRunner&) = delete;

 private:
  TaskRunner* previous_;
};

size_t dtype_size(DType t);
const char* dtype_name(DType t);

// The ops: one documented function lt8::<op> per row of ops.def (the list of ops).

// ---------------------------------------------------------------------------------------------
// 1. Row-wise int8 quantization with outlier columns.
//    x: (M, K) of f32/f16/bf16. Column k is an outlier column when threshold > 0 and any
//    |x[m, k]| >= threshold. Outputs (all fully written):
//      q (M, K) int8        rint(x * 127 / absmax_m), outlier columns set to 0
//      row_scale (M,) f32   absmax_m over the non-outlier columns (0 for an all-zero row)
//      outlier_mask (K,) u8 1 for outlier columns, else 0
Status quantize_rows(const Exec& ex, DType x_dtype, const void* x, int64_t M, int64_t K,
                     float threshold, int8_t* q, float* row_scale, uint8_t* outlier_mask);

// out (M, K) of out_dtype = q * row_scale / 127.
Status dequantize_rows(const Exec& ex, const int8_t* q, const float* row_scale, int64_t M,
                       int64_t K, DType out_dtype, void* out);

// ---------------------------------------------------------------------------------------------
// 2. C (M, N) int32 = A (M, K) int8 @ B (N, K) int8 ^T ("TN", both row-major), exact.
Status int8_gemm(const Exec& ex, const int8_t* A, const int8_t* B, int64_t M, int64_t N, int64_t K,
                 int32_t* C);

// 3. out (M, N) of out_dtype = C * row_scale[m] * col_scale[n] / 127^2 (+ bias[n]).
//    bias may be null; its dtype is independent of out_dtype.
Status dequant_epilogue(const Exec& ex, const int32_t* C, const float* row_scale,
                        const float* col_scale, DType bias_dtype, const void* bias, int64_t M,
                        int64_t N, DType out_dtype, void* out);

// ---------------------------------------------------------------------------------------------
// 4. Layout transforms between row-major and cuBLASLt's tiled orders, for int8 matrices.
//    A tiled matrix of logical shape (rows, cols) occupies padded_rows * padded_cols bytes.
//    Padding bytes are written as 0. Exactly one of `from`/`to` may be a tiled order, or both kRow.
void layout_padded_shape(Layout layout, int64_t rows, int64_t cols, int64_t* padded_rows,
                         int64_t* padded_cols);
Status transform_layout(const Exec& ex, const int8_t* in, int8_t* out, int64_t rows, int64_t cols,
                        Layout from, Layout to);

// ---------------------------------------------------------------------------------------------
// 5. The fused LLM.int8() linear op:
//      out (M, N) = dequant(int8(x_regular) @ CB^T) + x_outlier @ W_outlier^T + bias
//    where outlier columns are found on the device (no host sync) and W = CB * SCB / 127.
//    out has x's dtype. `workspace` is caller-provided scratch (graph/XLA friendly) of at least
//    int8_linear_workspace_size(M, N, K, x_dtype, threshold, device) bytes (the same arguments
//    as the call; kCUDA's size also serves a CPU call); its content on entry does not matter.
size_t int8_linear_workspace_size(int64_t M, int64_t N, int64_t K, DType x_dtype, float threshold,
                                  Device device);
Status int8_linear(const Exec& ex, DType x_dtype, const void* x, const int8_t* CB, const float* SCB,
                   DType bias_dtype, const void* bias, int64_t M, int64_t N, int64_t K,
                   float threshold, void* out, void* workspace, size_t workspace_bytes);

// Weight-only int8 linear (bitsandbytes' `force_no_igemmlt` path): activations stay in their
// floating-point dtype and multiply the dequantized weight, accumulating in float32:
//   out (M, N) = (x @ CB^T) * SCB / 127 + bias, in x's dtype.
Status int8_weight_linear(const Exec& ex, DType x_dtype, const void* x, const int8_t* CB,
                          const float* SCB, DType bias_dtype, const void* bias, int64_t M,
                          int64_t N, int64_t K, void* out);

// Input gradient of the linear op with a frozen int8 weight:
//   grad_x (M, K) = grad_out (M, N) @ W,  W = CB * SCB / 127, without materialising W.
//   grad_x has grad_out's dtype; accumulation is float32.
Status int8_linear_grad_input(const Exec& ex, DType g_dtype, const void* grad_out, const int8_t* CB,
                              const float* SCB, int64_t M, int64_t N, int64_t K, void* grad_x);

// The outlier columns' float terms of the fused op, added onto a float32 base in the fused
// epilogue's order (the sharded linear ops of lt8.jax build the fused op from its pieces):
//   out (M, N) f32 = base (M, N) f32 + x[m, k] * (CB[n, k] * SCB[n] / 127) for each k with
//   outlier_mask[k] != 0, ascending, one rounding per multiply and per add.
// With base = dequant_epilogue(int8_gemm(q, CB)) in float32, out + bias rounded to x's dtype is
// the fused int8_linear. x (M, K) f32/f16/bf16; out may be base.
// Above kStagedOutliers (64) outlier columns, 16-bit x on a CUDA device of sm_80+ takes the
// fused op's tensor-core outlier path (float32 sums in the hardware's order, as the fused op
// then does); `workspace` is caller-provided scratch of at least
// add_outlier_terms_workspace_size(M, N, K, x_dtype, device) bytes (kCUDA's size serves a CPU
// call too).
size_t add_outlier_terms_workspace_size(int64_t M, int64_t N, int64_t K, DType x_dtype,
                                        Device device);
Status add_outlier_terms(const Exec& ex, DType x_dtype, const void* x, const uint8_t* outlier_mask,
                         const int8_t* CB, const float* SCB, const float* base, int64_t M,
                         int64_t N, int64_t K, float* out, void* workspace, size_t workspace_bytes);

}  // namespace lt8
