// The CPU kernels' worker threads. One persistent pool, created on first use: workers sleep on a
// condition variable between calls (no spinning, so they do not compete with torch's or XLA's
// own pools), are detached and never joined (they cannot keep the process alive or abort it at
// exit), and are forgotten in a fork child (which then starts a fresh pool on its first call).
#pragma once

#include <cstdint>
#include <functional>

#include "lt8.h"

namespace lt8::cpu {

// Threads the kernels use: the count given to set_cpu_threads() when positive, else
// OMP_NUM_THREADS when set, else the CPUs in this process's affinity mask.
int cpu_threads();
// n > 0 pins the count (the torch frontend passes torch.get_num_threads()); n <= 0 goes back to
// the environment / affinity default.
void set_cpu_threads(int n);

// Runs body(t) for t in [0, tasks) on up to `threads` threads (the caller is one of them) and
// returns when all are done. A call nested inside a body runs its tasks serially on the calling
// thread (no deadlock); a call from another thread while a region runs (XLA runs independent
// lt8 calls at the same time) waits for the pool, so concurrent callers never put more threads
// on the CPUs than the pool's (running beside it instead made 8 independent JAX calls on 2 CPUs
// 1.4x slower than 8 in a row: benchmarks/NOTES.md, CPU session 7).
void parallel_for(int64_t tasks, int threads, const std::function<void(int64_t)>& body);

// body(r0, r1, c0, c1) for each block of a grid of row_block x col_block blocks over
// [0, rows) x [0, cols), one task per block; on several threads only when `work` (about the
// multiply-adds) pays for waking them.
template <typename Body>
inline void parallel_blocks(int64_t rows, int64_t row_block, int64_t cols, int64_t col_block,
                            double work, Body&& body) {
  const int64_t rb = (rows + row_block - 1) / row_block;
  const int64_t cb = (cols + col_block - 1) / col_block;
  parallel_for(rb * cb, work < 4e6 ? 1 : cpu_threads(), [&](int64_t t) {
    const int64_t r0 = (t / cb) * row_block, c0 = (t % cb) * col_block;
    body(r0, r0 + row_block < rows ? r0 + row_block : rows, c0,
         c0 + col_block < cols ? c0 + col_block : cols);
  });
}

// parallel_for hands its helper tasks to the TaskRunner that a framework lent this thread
// (lt8::ScopedTaskRunner, lt8.h), when there is one, instead of the pool below.

// With on = true (and a build with OpenMP) parallel_for runs its tasks in an OpenMP parallel
// region instead of the pool above: next to torch, whose CPU ops use OpenMP from the same
// libgomp, the two then share one team of threads. (torch's OpenMP workers spin for a while after
// each of its ops; with a second pool beside them lt8's workers lost their cores to that spinning
// and a layer after a torch op ran ~2x slower on 2 cores: benchmarks/NOTES.md, CPU.) The torch
// frontend turns it on at import; in a fork child the pool above is used again (libgomp's team
// does not survive fork). Returns whether OpenMP is used from now on.
bool set_openmp_threads(bool on);

}  // namespace lt8::cpu
