// cuBLASLt int8 GEMM, loaded with dlopen. See cublaslt_gemm.h for why it is not linked.
#include "gemm/cublaslt_gemm.h"

#include <dlfcn.h>

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <string>
#include <tuple>
#include <unordered_map>

#include "common/cuda_check.cuh"

namespace lt8 {
namespace gpu {
namespace {

// --- the part of the cuBLASLt C API used here --------------------------------------------------
// Values are those of the public cublasLt.h; this subset is ABI-stable across CUDA 11-13.
using LtHandle = void*;
using LtDesc = void*;
using LtLayout = void*;
using LtPref = void*;
struct LtAlgo {
  uint64_t data[8];
};
struct LtHeuristic {
  LtAlgo algo;
  size_t workspace_size;
  int state;
  float waves_count;
  int reserved[4];
};
constexpr int kLtSuccess = 0;
constexpr int kLtNotSupported = 15;   // CUBLAS_STATUS_NOT_SUPPORTED (nothing was enqueued)
constexpr int kCompute32I = 72;       // CUBLAS_COMPUTE_32I
constexpr int kDescTransA = 3;        // CUBLASLT_MATMUL_DESC_TRANSA
constexpr int kOpT = 1;               // CUBLAS_OP_T
constexpr int kPrefMaxWorkspace = 1;  // CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES
constexpr int kPrefMinAlignA = 5;     // ..._MIN_ALIGNMENT_A_BYTES (B, C, D follow: 6, 7, 8)

struct LtApi {
  int (*create)(LtHandle*);
  int (*desc_create)(LtDesc*, int compute, cudaDataType scale);
  int (*desc_destroy)(LtDesc);
  int (*desc_set)(LtDesc, int attr, const void* buf, size_t size);
  int (*layout_create)(LtLayout*, cudaDataType type, uint64_t rows, uint64_t cols, int64_t ld);
  int (*layout_destroy)(LtLayout);
  int (*pref_create)(LtPref*);
  int (*pref_destroy)(LtPref);
  int (*pref_set)(LtPref, int attr, const void* buf, size_t size);
  int (*heuristic)(LtHandle, LtDesc, LtLayout, LtLayout, LtLayout, LtLayout, LtPref, int,
                   LtHeuristic*, int*);
  int (*matmul)(LtHandle, LtDesc, const void* alpha, const void* A, LtLayout, const void* B,
                LtLayout, const void* beta, const void* C, LtLayout, void* D, LtLayout,
                const LtAlgo*, void* workspace, size_t workspace_bytes, cudaStream_t);
  bool ok = false;
};

template <typename F>
bool bind(void* lib, const char* name, F* fn) {
  *fn = reinterpret_cast<F>(dlsym(lib, name));
  return *fn != nullptr;
}

// Prefers a libcublasLt that the process already has (torch's or jaxlib's), then loads one.
LtApi load_api() {
  LtApi api;
  const char* off = std::getenv("LT8_DISABLE_CUBLASLT");
  if (off != nullptr && off[0] != '\0' && std::strcmp(off, "0") != 0) return api;
  static const char* kNames[] = {"libcublasLt.so.13", "libcublasLt.so.12", "libcublasLt.so.11",
                                 "libcublasLt.so"};
  void* lib = nullptr;
  for (int pass = 0; pass < 2 && lib == nullptr; ++pass)
    for (const char* name : kNames) {
      lib = dlopen(name, RTLD_NOW | RTLD_LOCAL | (pass == 0 ? RTLD_NOLOAD : 0));
      if (lib != nullptr) break;
    }
  if (lib == nullptr) return api;
  api.ok = bind(lib, "cublasLtCreate", &api.create) &&
           bind(lib, "cublasLtMatmulDescCreate", &api.desc_create) &&
           bind(lib, "cublasLtMatmulDescDestroy", &api.desc_destroy) &&
           bind(lib, "cublasLtMatmulDescSetAttribute", &api.desc_set) &&
           bind(lib, "cublasLtMatrixLayoutCreate", &api.layout_create) &&
           bind(lib, "cublasLtMatrixLayoutDestroy", &api.layout_destroy) &&
           bind(lib, "cublasLtMatmulPreferenceCreate", &api.pref_create) &&
           bind(lib, "cublasLtMatmulPreferenceDestroy", &api.pref_destroy) &&
           bind(lib, "cublasLtMatmulPreferenceSetAttribute", &api.pref_set) &&
           bind(lib, "cublasLtMatmulAlgoGetHeuristic", &api.heuristic) &&
           bind(lib, "cublasLtMatmul", &api.matmul);
  return api;  // the library stays loaded for the life of the process
}

const LtApi& api() {
  static const LtApi instance = load_api();  // thread-safe one-time initialisation
  return instance;
}

std::atomic<bool> g_enabled{true};

// One problem's plan: descriptors and the algorithm cuBLASLt's heuristic picked.
struct Plan {
  bool ok = false;
  LtDesc desc = nullptr;
  LtLayout a = nullptr, b = nullptr, c = nullptr;
  LtAlgo algo{};
};

// Largest power of two (<= 256) that divides the address: what cuBLASLt may assume of it.
uint32_t alignment_of(const void* p) {
  const auto v = reinterpret_cast<uintptr_t>(p);
  uint32_t a = 256;
  while (a > 1 && v % a != 0) a >>= 1;
  return a;
}

using PlanKey = std::tuple<int, int64_t, int64_t, int64_t, size_t, uint32_t>;
struct PlanKeyHash {
  size_t operator()(const PlanKey& k) const {
    size_t h = 0;
    auto mix = [&h](uint64_t v) {
      h ^= std::hash<uint64_t>()(v) + 0x9e3779b97f4a7c15ull + (h << 6) + (h >> 2);
    };
    mix(static_cast<uint64_t>(std::get<0>(k)));
    mix(static_cast<uint64_t>(std::get<1>(k)));
    mix(static_cast<uint64_t>(std::get<2>(k)));
    mix(static_cast<uint64_t>(std::get<3>(k)));
    mix(std::get<4>(k));
    mix(std::get<5>(k));
    return h;
  }
};

// Handles and plans are per thread (and per device inside): no locks on the hot path, and no
// two threads ever share a handle. They are intentionally never destroyed: at process exit the
// library may already be gone.
struct ThreadState {
  std::unordered_map<int, LtHandle> handles;
  std::unordered_map<PlanKey, Plan, PlanKeyHash> plans;
};
thread_local ThreadState t_state;
constexpr size_t kMaxPlans = 512;

LtHandle handle_for(int device) {
  auto it = t_state.handles.find(device);
  if (it != t_state.handles.end()) return it->second;
  LtHandle h = nullptr;
  if (api().create(&h) != kLtSuccess) h = nullptr;
  t_state.handles.emplace(device, h);
  return h;
}

// C^T (N, M) col-major = op_T(A_w) (N, K) x B_x (K, M): lt8's row-major "x @ W^T" in cuBLAS's
// column-major terms, the "TN" form that int8 tensor-core kernels require.
Plan make_plan(LtHandle h, int64_t M, int64_t N, int64_t K, size_t ws_bytes, uint32_t align) {
  const LtApi& lt = api();
  Plan p;
  if (lt.desc_create(&p.desc, kCompute32I, CUDA_R_32I) != kLtSuccess) return p;
  const int32_t trans = kOpT;
  LtPref pref = nullptr;
  bool ok = lt.desc_set(p.desc, kDescTransA, &trans, sizeof(trans)) == kLtSuccess &&
            lt.layout_create(&p.a, CUDA_R_8I, K, N, K) == kLtSuccess &&
            lt.layout_create(&p.b, CUDA_R_8I, K, M, K) == kLtSuccess &&
            lt.layout_create(&p.c, CUDA_R_32I, N, M, N) == kLtSuccess &&
            lt.pref_create(&pref) == kLtSuccess &&
            lt.pref_set(pref, kPrefMaxWorkspace, &ws_bytes, sizeof(ws_bytes)) == kLtSuccess;
  // align packs the alignments of A, B, C (= D) one byte each as log2.
  for (int i = 0; ok && i < 4; ++i) {
    const uint32_t a = 1u << ((align >> (8 * (i < 3 ? i : 2))) & 0xff);
    ok = lt.pref_set(pref, kPrefMinAlignA + i, &a, sizeof(a)) == kLtSuccess;
  }
  LtHeuristic result{};
  int found = 0;
  ok = ok && lt.heuristic(h, p.desc, p.a, p.b, p.c, p.c, pref, 1, &result, &found) == kLtSuccess &&
       found > 0 && result.state == kLtSuccess && result.workspace_size <= ws_bytes;
  if (pref != nullptr) lt.pref_destroy(pref);
  if (ok) {
    p.algo = result.algo;
    p.ok = true;
  } else {  // keep the failed plan (ok = false) so the heuristic is not asked again
    if (p.a) lt.layout_destroy(p.a);
    if (p.b) lt.layout_destroy(p.b);
    if (p.c) lt.layout_destroy(p.c);
    if (p.desc) lt.desc_destroy(p.desc);
    p = Plan{};
  }
  return p;
}

uint32_t log2_of(uint32_t a) {
  uint32_t l = 0;
  while ((1u << l) < a) ++l;
  return l;
}

}  // namespace

void set_cublaslt_enabled(bool enabled) {
  g_enabled.store(enabled);
}
bool cublaslt_enabled() {
  return g_enabled.load(std::memory_order_relaxed);
}
bool cublaslt_available() {
  return api().ok;
}

bool cublaslt_int8_gemm(cudaStream_t stream, const int8_t* A, const int8_t* B, int64_t M, int64_t N,
                        int64_t K, int32_t* C, void* workspace, size_t workspace_bytes,
                        Status* err) {
  // int32 accumulation is exact only while K * 127 * 128 < 2^31; cuBLASLt also wants K % 4 == 0.
  if (!g_enabled.load(std::memory_order_relaxed) || !api().ok || M <= 0 || N <= 0 || K % 4 != 0 ||
      K <= 0 || K > (int64_t{1} << 17))
    return false;
  if (workspace == nullptr) workspace_bytes = 0;
  int device = 0;
  if (cudaGetDevice(&device) != cudaSuccess) return false;
  LtHandle h = handle_for(device);
  if (h == nullptr) return false;
  const uint32_t align =
      log2_of(alignment_of(B)) | (log2_of(alignment_of(A)) << 8) | (log2_of(alignment_of(C)) << 16);
  const PlanKey key{device, M, N, K, workspace_bytes, align};
  auto it = t_state.plans.find(key);
  // Pointers that are not even 4-byte aligned (offset views) go to lt8's own GEMM.
  if (alignment_of(A) < 4 || alignment_of(B) < 4 || alignment_of(C) < 4) return false;
  if (it == t_state.plans.end()) {
    if (t_state.plans.size() >= kMaxPlans) t_state.plans.clear();  // leaks a few descriptors; rare
    it = t_state.plans.emplace(key, make_plan(h, M, N, K, workspace_bytes, align)).first;
  }
  Plan& p = it->second;
  if (!p.ok) return false;
  const int32_t one = 1, zero = 0;
  // cuBLAS's A is lt8's weight B (N, K), cuBLAS's B is lt8's activations A (M, K).
  const int st = api().matmul(h, p.desc, &one, B, p.a, A, p.b, &zero, C, p.c, C, p.c, &p.algo,
                              workspace, workspace_bytes, stream);
  if (st == kLtNotSupported) {  // the heuristic's pick declined these operands: never again
    p.ok = false;
    return false;
  }
  if (st != kLtSuccess) {
    *err = Status::Internal("cublasLtMatmul failed with status " + std::to_string(st));
    return false;
  }
  return true;
}

}  // namespace gpu
}  // namespace lt8
