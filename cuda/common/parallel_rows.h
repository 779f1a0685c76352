// The CPU kernels' only threading: rows split over std::threads when the work is large enough.
#pragma once

#include <algorithm>
#include <cstdint>
#include <thread>
#include <vector>

namespace lt8::cpu {

// Runs body(begin, end) over [0, n) on up to hardware_concurrency threads when `work` is big.
template <typename Body>
inline void parallel_rows(int64_t n, double work, Body&& body) {
  unsigned hw = std::max(1u, std::thread::hardware_concurrency());
  int64_t threads = std::min<int64_t>({static_cast<int64_t>(hw), n, 16});
  if (threads <= 1 || work < 4e6) {
    body(int64_t{0}, n);
    return;
  }
  std::vector<std::thread> pool;
  int64_t chunk = (n + threads - 1) / threads;
  for (int64_t t = 0; t < threads; ++t) {
    int64_t b = t * chunk, e = std::min(n, b + chunk);
    if (b < e) pool.emplace_back([&body, b, e] { body(b, e); });
  }
  for (auto& th : pool) th.join();
}

}  // namespace lt8::cpu
