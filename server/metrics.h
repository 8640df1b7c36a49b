// The server's Prometheus metrics (text exposition format 0.0.4): request counts by model and status,
// request latency, images per forward pass, queue depth and forward-pass time. Thread-safe.
#pragma once

#include <cstdint>
#include <map>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

namespace perceiver::server {

// A cumulative histogram with fixed upper bounds (the +Inf bucket is implied).
class Histogram {
 public:
  explicit Histogram(std::vector<double> bounds = {});
  void observe(double value);
  // Lines "<name>_bucket{<labels>le="..."} n", "_sum", "_count"; `labels` is "" or `model="x",`-style.
  void render(std::string& out, const std::string& name, const std::string& labels) const;
  uint64_t count() const { return count_; }
  double sum() const { return sum_; }

 private:
  std::vector<double> bounds_;
  std::vector<uint64_t> counts_;  // per bound, not cumulative
  uint64_t count_ = 0;
  double sum_ = 0;
};

class Metrics {
 public:
  Metrics();
  // One answered HTTP request; `model` empty for routes that name no model.
  void request_done(const std::string& model, int status, double seconds);
  // One forward pass of `images` images that took `seconds`.
  void batch_done(const std::string& model, int images, double seconds);
  // Images waiting in a model's queue (not yet in a forward pass).
  void set_queue_depth(const std::string& model, int64_t depth);

  std::string render() const;  // the /metrics body

 private:
  mutable std::mutex mutex_;
  std::map<std::pair<std::string, int>, uint64_t> requests_;
  Histogram request_seconds_;
  std::map<std::string, Histogram> batch_sizes_;
  std::map<std::string, Histogram> inference_seconds_;
  std::map<std::string, int64_t> queue_depth_;
};

// A Prometheus label value: backslash, double quote and newline escaped.
std::string escape_label(const std::string& value);

}  // namespace perceiver::server
