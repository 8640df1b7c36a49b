#include "metrics.h"

#include <algorithm>
#include <cstdio>

namespace perceiver::server {
namespace {

const std::vector<double> kSecondsBounds = {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                                            0.25,  0.5,    1,     2.5,  5,     10,   30};
const std::vector<double> kBatchBounds = {1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 128};

std::string number(double v) {
  char buf[40];
  std::snprintf(buf, sizeof buf, "%.10g", v);
  return buf;
}

}  // namespace

std::string escape_label(const std::string& value) {
  std::string out;
  for (char ch : value) {
    if (ch == '\\')
      out += "\\\\";
    else if (ch == '"')
      out += "\\\"";
    else if (ch == '\n')
      out += "\\n";
    else
      out += ch;
  }
  return out;
}

Histogram::Histogram(std::vector<double> bounds) : bounds_(std::move(bounds)), counts_(bounds_.size(), 0) {}

void Histogram::observe(double value) {
  const size_t bucket = size_t(std::lower_bound(bounds_.begin(), bounds_.end(), value) - bounds_.begin());
  if (bucket < counts_.size()) ++counts_[bucket];
  ++count_;
  sum_ += value;
}

void Histogram::render(std::string& out, const std::string& name, const std::string& labels) const {
  uint64_t cumulative = 0;
  for (size_t i = 0; i < bounds_.size(); ++i) {
    cumulative += counts_[i];
    out += name + "_bucket{" + labels + "le=\"" + number(bounds_[i]) + "\"} " + std::to_string(cumulative) +
           "\n";
  }
  out += name + "_bucket{" + labels + "le=\"+Inf\"} " + std::to_string(count_) + "\n";
  std::string plain = labels;
  if (!plain.empty() && plain.back() == ',') plain.pop_back();
  const std::string braces = plain.empty() ? "" : "{" + plain + "}";
  out += name + "_sum" + braces + " " + number(sum_) + "\n";
  out += name + "_count" + braces + " " + std::to_string(count_) + "\n";
}

Metrics::Metrics() : request_seconds_(kSecondsBounds) {}

void Metrics::request_done(const std::string& model, int status, double seconds) {
  std::lock_guard<std::mutex> lock(mutex_);
  ++requests_[{model, status}];
  request_seconds_.observe(seconds);
}

void Metrics::batch_done(const std::string& model, int images, double seconds) {
  std::lock_guard<std::mutex> lock(mutex_);
  batch_sizes_.try_emplace(model, kBatchBounds).first->second.observe(images);
  inference_seconds_.try_emplace(model, kSecondsBounds).first->second.observe(seconds);
}

void Metrics::set_queue_depth(const std::string& model, int64_t depth) {
  std::lock_guard<std::mutex> lock(mutex_);
  queue_depth_[model] = depth;
}

std::string Metrics::render() const {
  std::lock_guard<std::mutex> lock(mutex_);
  std::string out;
  out += "# HELP perceiver_requests_total HTTP requests answered, by model and status code.\n";
  out += "# TYPE perceiver_requests_total counter\n";
  for (const auto& [key, count] : requests_)
    out += "perceiver_requests_total{model=\"" + escape_label(key.first) + "\",code=\"" +
           std::to_string(key.second) + "\"} " + std::to_string(count) + "\n";
  out += "# HELP perceiver_request_duration_seconds Time from a request's routing to its answer.\n";
  out += "# TYPE perceiver_request_duration_seconds histogram\n";
  request_seconds_.render(out, "perceiver_request_duration_seconds", "");
  out += "# HELP perceiver_batch_size Images per forward pass.\n";
  out += "# TYPE perceiver_batch_size histogram\n";
  for (const auto& [model, histogram] : batch_sizes_)
    histogram.render(out, "perceiver_batch_size", "model=\"" + escape_label(model) + "\",");
  out += "# HELP perceiver_queue_depth Images waiting for a forward pass.\n";
  out += "# TYPE perceiver_queue_depth gauge\n";
  for (const auto& [model, depth] : queue_depth_)
    out += "perceiver_queue_depth{model=\"" + escape_label(model) + "\"} " + std::to_string(depth) + "\n";
  out += "# HELP perceiver_inference_seconds Time of one forward pass.\n";
  out += "# TYPE perceiver_inference_seconds histogram\n";
  for (const auto& [model, histogram] : inference_seconds_)
    histogram.render(out, "perceiver_inference_seconds", "model=\"" + escape_label(model) + "\",");
  return out;
}

}  // namespace perceiver::server
