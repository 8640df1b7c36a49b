// Dynamic batching: requests for one model wait in a bounded FIFO queue; each worker (one per instance, each
// with its own runner, i.e. its own Context) takes the oldest request and adds later requests whose images
// have the same size until the pass holds max_batch images or the oldest has waited max_delay; then it runs
// one forward pass and hands every request exactly its own rows of logits.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <future>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

namespace perceiver::server {

class Metrics;

// One request's images, preprocessed. The submitter sizes `logits` before submitting (the worker allocates
// nothing per request); the worker fills it, or sets `error`, then fulfils `done`.
struct BatchJob {
  std::vector<float> pixels;  // [images, 3, height, width]
  int images = 0, height = 0, width = 0;
  std::vector<float> logits;  // [images, num_labels]
  std::string error;          // non-empty: the forward pass failed
  std::promise<void> done;
  std::atomic<bool> abandoned{false};  // the client gave up (timeout): skip it if not yet started
  std::chrono::steady_clock::time_point enqueued;
};

// pixels: [batch, 3, height, width] -> logits: [batch, num_labels]. One per worker; called from its thread
// only.
using BatchRunner = std::function<void(const float* pixels, int batch, int height, int width, float* logits)>;

struct BatcherOptions {
  std::string model_name;  // metrics label
  int num_labels = 0;
  int max_batch = 8;  // images per forward pass (a single larger request runs alone)
  std::chrono::microseconds max_delay{5000};
  int max_queue = 256;  // requests waiting; more are refused
};

class Batcher {
 public:
  // One worker thread per runner. `metrics` may be null.
  Batcher(BatcherOptions options, std::vector<BatchRunner> runners, Metrics* metrics);
  ~Batcher();  // stop()
  Batcher(const Batcher&) = delete;
  Batcher& operator=(const Batcher&) = delete;

  // Queues `job`; false (and nothing queued) when the queue is full or the batcher is stopping.
  bool submit(const std::shared_ptr<BatchJob>& job);
  // Finishes every queued job, then joins the workers. Idempotent.
  void stop();
  int64_t queued() const;

 private:
  void work(size_t worker);
  // Takes from the queue (lock held) the jobs of one pass, oldest first.
  void gather(std::unique_lock<std::mutex>& lock, std::vector<std::shared_ptr<BatchJob>>& batch);
  void publish_depth_locked();

  BatcherOptions options_;
  std::vector<BatchRunner> runners_;
  Metrics* metrics_;
  mutable std::mutex mutex_;
  std::condition_variable wake_;
  std::deque<std::shared_ptr<BatchJob>> queue_;
  bool stopping_ = false;
  std::vector<std::thread> workers_;
};

}  // namespace perceiver::server
