// XLA FFI handlers for platform "cpu": one per op of cuda/ops.def.
#include <cstdlib>
#include <functional>
#include <utility>

#include "handlers.h"
#include "registry.h"

namespace lt8::ffi {
namespace {
const Exec kCpu{};

// XLA's intra-op thread pool, lent to the kernels for the call (lt8::TaskRunner) when
// LT8_XLA_THREAD_POOL=1: lt8's helper tasks then queue on the pool where XLA runs independent
// thunks. Opt-in, because measured on 2 CPUs it helped only many small concurrent calls (6
// MiniLM-sized blocks 0.95x the time) and hurt single large ones (a 128x1024x4096 layer 0.60x ->
// 0.85x of float32 Dense): benchmarks/NOTES.md, "CPU: ... XLA's thread pool".
class XlaRunner final : public TaskRunner {
 public:
  explicit XlaRunner(xffi::ThreadPool pool) : pool_(pool) {}
  int threads() const override { return static_cast<int>(pool_.num_threads()); }
  void schedule(std::function<void()> task) override { pool_.Schedule(std::move(task)); }

 private:
  mutable xffi::ThreadPool pool_;
};

// Read on every call (~0.1 us), so that a benchmark can alternate both in one process.
bool lend_xla_pool() {
  const char* v = std::getenv("LT8_XLA_THREAD_POOL");
  return v != nullptr && v[0] == '1';
}

auto cpu_bind() {
  return xffi::Ffi::Bind().Ctx<xffi::ThreadPool>();
}
}  // namespace

// The lambdas lend XLA's pool to the kernels when asked, then prepend the CPU execution context to
// the decoded arguments.
#define LT8_OP(name, Camel)                                         \
  XLA_FFI_DEFINE_HANDLER_SYMBOL(                                    \
      lt8_##name##_cpu,                                             \
      [](xffi::ThreadPool pool, auto... a) {                        \
        XlaRunner runner(pool);                                     \
        ScopedTaskRunner lent(lend_xla_pool() ? &runner : nullptr); \
        return Camel##Impl(kCpu, a...);                             \
      },                                                            \
      Bind##Camel(cpu_bind()));
#include "ops.def"

std::vector<Target> cpu_targets() {
  return {
#define LT8_OP(name, Camel) {#name, reinterpret_cast<void*>(lt8_##name##_cpu)},
#include "ops.def"
  };
}

}  // namespace lt8::ffi
