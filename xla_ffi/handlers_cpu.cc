// XLA FFI handlers for platform "cpu": one per op of cuda/ops.def.
#include <cstdlib>
#include <functional>
#include <utility>

#include "handlers.h"
#include "registry.h"

namespace lt8::ffi {
namespace {
const Exec kCpu{};

// XLA's intra-op thread pool, lent to the kernels for the call (lt8::TaskRunner): XLA runs
// independent thunks concurrently on it, and lt8's helper tasks then queue there too instead of
// starting threads of lt8's own pool beside it (benchmarks/NOTES.md, "CPU: XLA's thread pool").
class XlaRunner final : public TaskRunner {
 public:
  explicit XlaRunner(xffi::ThreadPool pool) : pool_(pool) {}
  int threads() const override { return static_cast<int>(pool_.num_threads()); }
  void schedule(std::function<void()> task) override { pool_.Schedule(std::move(task)); }

 private:
  mutable xffi::ThreadPool pool_;
};

// LT8_XLA_THREAD_POOL=0: the kernels keep lt8's own pool under XLA too. Read on every call
// (~0.1 us), so that a benchmark can alternate both in one process.
bool lend_xla_pool() {
  const char* v = std::getenv("LT8_XLA_THREAD_POOL");
  return v == nullptr || v[0] != '0';
}

auto cpu_bind() {
  return xffi::Ffi::Bind().Ctx<xffi::ThreadPool>();
}
}  // namespace

// The lambdas lend XLA's pool to the kernels, then prepend the CPU execution context to the
// decoded arguments.
#define LT8_OP(name, Camel)                           \
  XLA_FFI_DEFINE_HANDLER_SYMBOL(                      \
      lt8_##name##_cpu,                               \
      [](xffi::ThreadPool pool, auto... a) {          \
        XlaRunner runner(pool);                       \
        ScopedTaskRunner lent(lend_xla_pool() ? &runner : nullptr); \
        return Camel##Impl(kCpu, a...);               \
      },                                              \
      Bind##Camel(cpu_bind()));
#include "ops.def"

std::vector<Target> cpu_targets() {
  return {
#define LT8_OP(name, Camel) {#name, reinterpret_cast<void*>(lt8_##name##_cpu)},
#include "ops.def"
  };
}

}  // namespace lt8::ffi
