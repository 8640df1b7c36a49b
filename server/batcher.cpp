#include "batcher.h"

#include <algorithm>
#include <cstring>

#include "metrics.h"

namespace perceiver::server {

Batcher::Batcher(BatcherOptions options, std::vector<BatchRunner> runners, Metrics* metrics)
    : options_(std::move(options)), runners_(std::move(runners)), metrics_(metrics) {
  options_.max_batch = std::max(1, options_.max_batch);
  if (metrics_) metrics_->set_queue_depth(options_.model_name, 0);
  for (size_t i = 0; i < runners_.size(); ++i) workers_.emplace_back([this, i] { work(i); });
}

Batcher::~Batcher() { stop(); }

bool Batcher::submit(const std::shared_ptr<BatchJob>& job) {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    if (stopping_ || int64_t(queue_.size()) >= options_.max_queue) return false;
    job->enqueued = std::chrono::steady_clock::now();
    queue_.push_back(job);
    publish_depth_locked();
  }
  wake_.notify_all();
  return true;
}

void Batcher::stop() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stopping_ = true;
  }
  wake_.notify_all();
  for (std::thread& t : workers_)
    if (t.joinable()) t.join();
}

int64_t Batcher::queued() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return int64_t(queue_.size());
}

void Batcher::publish_depth_locked() {
  if (metrics_) metrics_->set_queue_depth(options_.model_name, int64_t(queue_.size()));
}

void Batcher::gather(std::unique_lock<std::mutex>& lock, std::vector<std::shared_ptr<BatchJob>>& batch) {
  batch.push_back(queue_.front());
  queue_.pop_front();
  const BatchJob& first = *batch.front();
  int images = first.images;
  const auto deadline = first.enqueued + options_.max_delay;
  while (images < options_.max_batch) {
    // The oldest queued job of the same image size that still fits in this pass.
    auto it = std::find_if(queue_.begin(), queue_.end(), [&](const std::shared_ptr<BatchJob>& job) {
      return job->height == first.height && job->width == first.width &&
             images + job->images <= options_.max_batch;
    });
    if (it != queue_.end()) {
      images += (*it)->images;
      batch.push_back(*it);
      queue_.erase(it);
      continue;
    }
    if (stopping_ || std::chrono::steady_clock::now() >= deadline) break;
    wake_.wait_until(lock, deadline);
  }
  publish_depth_locked();
}

void Batcher::work(size_t worker) {
  BatchRunner& run = runners_[worker];
  std::vector<std::shared_ptr<BatchJob>> batch, live;
  std::vector<float> pixels, logits;  // the pass's inputs and outputs, reused (grow only)
  const size_t num_labels = size_t(options_.num_labels);
  for (;;) {
    batch.clear();
    {
      std::unique_lock<std::mutex> lock(mutex_);
      wake_.wait(lock, [&] { return stopping_ || !queue_.empty(); });
      if (queue_.empty()) return;  // stopping, and nothing left to answer
      gather(lock, batch);
    }
    // Jobs whose client has gone (timed out) are answered with an error and not run.
    live.clear();
    for (auto& job : batch) {
      if (job->abandoned.load()) {
        job->error = "abandoned";
        job->done.set_value();
      } else {
        live.push_back(job);
      }
    }
    if (live.empty()) continue;
    const BatchJob& first = *live.front();
    int images = 0;
    for (auto& job : live) images += job->images;
    const size_t image_floats = size_t(3) * size_t(first.height) * size_t(first.width);
    const float* input = first.pixels.data();
    float* output = nullptr;
    if (live.size() > 1) {
      pixels.resize(size_t(images) * image_floats);
      size_t offset = 0;
      for (auto& job : live) {
        std::memcpy(pixels.data() + offset, job->pixels.data(), job->pixels.size() * sizeof(float));
        offset += job->pixels.size();
      }
      input = pixels.data();
      logits.resize(size_t(images) * num_labels);
      output = logits.data();
    } else {
      output = live.front()->logits.data();  // a lone request: straight into its own result
    }
    const auto start = std::chrono::steady_clock::now();
    std::string error;
    try {
      run(input, images, first.height, first.width, output);
    } catch (const std::exception& e) {
      error = e.what();
      if (error.empty()) error = "forward pass failed";
    }
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    if (metrics_) metrics_->batch_done(options_.model_name, images, seconds);
    size_t row = 0;
    for (auto& job : live) {
      if (!error.empty()) {
        job->error = error;
      } else if (live.size() > 1) {
        std::memcpy(job->logits.data(), logits.data() + row * num_labels,
                    size_t(job->images) * num_labels * sizeof(float));
      }
      row += size_t(job->images);
      job->done.set_value();
    }
  }
}

}  // namespace perceiver::server
