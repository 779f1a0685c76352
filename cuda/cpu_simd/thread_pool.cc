#include "cpu_simd/thread_pool.h"

#include <pthread.h>
#include <sched.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdlib>
#include <exception>
#include <memory>
#include <mutex>
#include <system_error>
#include <thread>
#include <vector>

namespace lt8::cpu {
namespace {

std::atomic<int> g_threads_override{0};
std::atomic<bool> g_use_openmp{false};
std::atomic<bool> g_forked_child{false};
std::once_flag g_fork_handler_once;

// Registered before the first region of either kind: a fork child forgets both (see below).
void watch_forks() {
  std::call_once(g_fork_handler_once,
                 [] { pthread_atfork(nullptr, nullptr, [] { g_forked_child.store(true); }); });
}

int affinity_cpus() {
#ifdef __linux__
  cpu_set_t set;
  CPU_ZERO(&set);
  if (sched_getaffinity(0, sizeof(set), &set) == 0) return std::max(1, CPU_COUNT(&set));
#endif
  return static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
}

// True on a thread that is running tasks of a pool region (the caller or a worker): a nested
// parallel_for there must not wait for the pool, which it is part of.
thread_local bool t_in_pool_region = false;

class Pool {
 public:
  // Only one region at a time; others (concurrent or nested callers) run serially.
  void begin() { region_.lock(); }
  void end() { region_.unlock(); }

  void run(int64_t tasks, int threads, const std::function<void(int64_t)>& body) {
    const int helpers = ensure_workers(threads - 1);
    {
      std::lock_guard<std::mutex> lock(mu_);
      body_ = &body;
      tasks_ = tasks;
      next_.store(0, std::memory_order_relaxed);
      helpers_ = helpers;
      pending_ = helpers;
      ++generation_;
    }
    start_.notify_all();
    drain();
    std::unique_lock<std::mutex> lock(mu_);
    done_.wait(lock, [&] { return pending_ == 0; });
    body_ = nullptr;
  }

 private:
  void drain() {
    for (int64_t t; (t = next_.fetch_add(1, std::memory_order_relaxed)) < tasks_;) (*body_)(t);
  }

  // Starts workers up to n; returns how many exist (fewer when the system refuses a thread:
  // the caller's thread then does the remaining share, nothing throws).
  int ensure_workers(int n) {
    while (started_ < n) {
      const int index = started_;
      try {
        std::thread([this, index] { worker(index); }).detach();
      } catch (const std::system_error&) {
        break;
      }
      ++started_;
    }
    return std::min(started_, n);
  }

  void worker(int index) {
    t_in_pool_region = true;  // a worker only ever runs tasks of some region
    uint64_t seen = 0;
    std::unique_lock<std::mutex> lock(mu_);
    for (;;) {
      start_.wait(lock, [&] { return generation_ != seen; });
      seen = generation_;
      if (index >= helpers_) continue;
      lock.unlock();
      drain();
      lock.lock();
      if (--pending_ == 0) done_.notify_one();
    }
  }

  std::mutex region_;
  std::mutex mu_;
  std::condition_variable start_, done_;
  const std::function<void(int64_t)>* body_ = nullptr;
  int64_t tasks_ = 0;
  std::atomic<int64_t> next_{0};
  int helpers_ = 0, pending_ = 0, started_ = 0;
  uint64_t generation_ = 0;
};

// Never destroyed: detached workers may still be waiting on its condition variable at exit.
std::atomic<Pool*> g_pool{nullptr};
std::once_flag g_atfork_once;

Pool* pool() {
  std::call_once(g_atfork_once, [] {
    // The child of a fork has none of the workers: forget the pool (leaked, its mutexes may be
    // held by threads that no longer exist) and let the child build its own.
    pthread_atfork(nullptr, nullptr, [] { g_pool.store(nullptr); });
  });
  Pool* p = g_pool.load();
  if (p == nullptr) {
    Pool* fresh = new Pool();
    if (g_pool.compare_exchange_strong(p, fresh)) {
      p = fresh;
    } else {
      delete fresh;
    }
  }
  return p;
}

}  // namespace

int cpu_threads() {
  const int forced = g_threads_override.load(std::memory_order_relaxed);
  if (forced > 0) return forced;
  if (const char* env = std::getenv("OMP_NUM_THREADS")) {
    const int n = std::atoi(env);  // "4,2" (nested levels) reads as 4
    if (n > 0) return n;
  }
  return affinity_cpus();
}

void set_cpu_threads(int n) {
  g_threads_override.store(n > 0 ? n : 0, std::memory_order_relaxed);
}

bool set_openmp_threads(bool on) {
#ifdef _OPENMP
  g_use_openmp.store(on);
  return on;
#else
  (void)on;
  return false;
#endif
}

#ifdef _OPENMP
namespace {
std::mutex g_omp_region;  // one region at a time, as for the pool

// Tasks handed out dynamically to the team; an exception stops the handing out and is rethrown
// on the calling thread (none may leave an OpenMP region).
void omp_run(int64_t tasks, int threads, const std::function<void(int64_t)>& body) {
  std::atomic<int64_t> next{0};
  std::exception_ptr error;
  std::mutex error_mu;
#pragma omp parallel num_threads(threads)
  {
    try {
      for (int64_t t; (t = next.fetch_add(1, std::memory_order_relaxed)) < tasks;) body(t);
    } catch (...) {
      std::lock_guard<std::mutex> lock(error_mu);
      if (!error) error = std::current_exception();
      next.store(tasks, std::memory_order_relaxed);
    }
  }
  if (error) std::rethrow_exception(error);
}
}  // namespace
#endif

// The runner lent to this thread (ScopedTaskRunner), if any.
thread_local TaskRunner* t_runner = nullptr;

namespace {

// parallel_for on a lent runner. Helpers that start late (after the caller drained every task
// itself) find no task left and never touch `body`; `active` counts the helpers inside drain(),
// and the caller returns once none is: every task claimed by a helper has then finished. The
// shared state outlives the call for helpers that have not started yet.
struct RunnerState {
  std::atomic<int64_t> next{0};
  std::atomic<int> active{0};
  int64_t tasks = 0;
  const std::function<void(int64_t)>* body = nullptr;
  std::mutex error_mu;
  std::exception_ptr error;

  void drain() {
    try {
      for (int64_t t; (t = next.fetch_add(1)) < tasks;) (*body)(t);
    } catch (...) {  // stop handing out tasks; the caller rethrows
      std::lock_guard<std::mutex> lock(error_mu);
      if (!error) error = std::current_exception();
      next.store(tasks);
    }
  }
};

void runner_run(TaskRunner* runner, int64_t tasks, int threads,
                const std::function<void(int64_t)>& body) {
  auto state = std::make_shared<RunnerState>();
  state->tasks = tasks;
  state->body = &body;
  for (int h = 1; h < threads; ++h) {
    runner->schedule([state] {
      state->active.fetch_add(1);
      state->drain();
      state->active.fetch_sub(1);
    });
  }
  state->drain();
  while (state->active.load() != 0) std::this_thread::yield();
  if (state->error) std::rethrow_exception(state->error);
}
}  // namespace

}  // namespace lt8::cpu

namespace lt8 {
ScopedTaskRunner::ScopedTaskRunner(TaskRunner* runner) : previous_(cpu::t_runner) {
  cpu::t_runner = runner;
}
ScopedTaskRunner::~ScopedTaskRunner() {
  cpu::t_runner = previous_;
}
}  // namespace lt8

namespace lt8::cpu {

void parallel_for(int64_t tasks, int threads, const std::function<void(int64_t)>& body) {
  threads = static_cast<int>(std::min<int64_t>(threads, tasks));
  if (TaskRunner* runner = t_runner; runner != nullptr && runner->threads() >= 1) {
    threads = std::min(threads, runner->threads());
    if (threads > 1) {
      runner_run(runner, tasks, threads, body);
      return;
    }
  }
  if (threads <= 1) {
    for (int64_t t = 0; t < tasks; ++t) body(t);
    return;
  }
  watch_forks();
#ifdef _OPENMP
  if (g_use_openmp.load(std::memory_order_relaxed) && !g_forked_child.load()) {
    std::unique_lock<std::mutex> region(g_omp_region, std::defer_lock);
    // Inside someone's OpenMP region (torch's parallel_for), or while another caller's region
    // runs: serially on this thread, as for the pool.
    if (omp_in_parallel() || !region.try_lock()) {
      for (int64_t t = 0; t < tasks; ++t) body(t);
      return;
    }
    omp_run(tasks, threads, body);
    return;
  }
#endif
  Pool* p = pool();
  if (t_in_pool_region) {  // nested inside a body: serially on this thread
    for (int64_t t = 0; t < tasks; ++t) body(t);
    return;
  }
  // Another thread's region (XLA runs independent calls at the same time): wait for the pool
  // instead of running beside it, which would put one thread more than the pool's on the CPUs.
  struct Region {
    Pool* pool;
    explicit Region(Pool* q) : pool(q) {
      pool->begin();
      t_in_pool_region = true;
    }
    ~Region() {  // also when a task throws: the next caller must not wait forever
      t_in_pool_region = false;
      pool->end();
    }
  } region(p);
  p->run(tasks, threads, body);
}

}  // namespace lt8::cpu
