// Wall-clock timings of repeated calls for the micro-benchmarks: min and median of the samples.
#pragma once

#include <algorithm>
#include <chrono>
#include <string>
#include <vector>

namespace perceiver::bench {

inline double seconds_now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

struct Timing {
  std::string name;
  std::vector<double> s;  // seconds per call
  double min() const { return *std::min_element(s.begin(), s.end()); }
  double median() const {
    std::vector<double> v = s;
    std::nth_element(v.begin(), v.begin() + v.size() / 2, v.end());
    return v[v.size() / 2];
  }
};

}  // namespace perceiver::bench
