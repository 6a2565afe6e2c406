// Splits [0, n) into one contiguous chunk per hardware thread (the machines this runs on have few
// cores, so the split is coarse and threads are started per call).
#pragma once
#include <algorithm>
#include <cstdint>
#include <thread>
#include <vector>

namespace svdq {

template <class F>
void parallelFor(int64_t n, F f) {
  const unsigned T = std::max(1u, std::min(std::thread::hardware_concurrency(), 16u));
  if (n < 64 || T == 1) return f(int64_t{0}, n);
  std::vector<std::thread> ts;
  const int64_t chunk = (n + T - 1) / T;
  for (unsigned t = 0; t < T; ++t) {
    const int64_t a = t * chunk, b = std::min(n, a + chunk);
    if (a < b) ts.emplace_back([=] { f(a, b); });
  }
  for (auto& t : ts) t.join();
}

}  // namespace svdq
