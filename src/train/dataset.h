// Labelled image sets for training and evaluation, and the encoder features computed from them.
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <string>
#include <vector>

#include "image/image.h"
#include "image/preprocess.h"
#include "perceiver/perceiver.h"
#include "perceiver/train.h"

namespace perceiver::train {

// Stratified split: per class, a seeded shuffle puts round(fraction * n) images (at least one when fraction >
// 0 and the class has two or more) in validation. Both lists come back in ascending index order.
void split_train_val(const std::vector<int>& labels, int num_classes, double fraction, uint64_t seed,
                     std::vector<int64_t>* train, std::vector<int64_t>* val);

// Per-image feature rows (e.g. encoder latents [L, D] flattened), in memory or, when they would take more
// than `max_memory_bytes`, in an unlinked memory-mapped temporary file in `cache_dir` (paged by the OS).
class FeatureStore {
 public:
  FeatureStore() = default;
  FeatureStore(int64_t count, int64_t row_floats, uint64_t max_memory_bytes = uint64_t(4) << 30,
               const std::filesystem::path& cache_dir = {});
  ~FeatureStore();
  FeatureStore(FeatureStore&& other) noexcept;
  FeatureStore& operator=(FeatureStore&& other) noexcept;
  FeatureStore(const FeatureStore&) = delete;
  FeatureStore& operator=(const FeatureStore&) = delete;

  int64_t count() const { return count_; }
  int64_t row_floats() const { return row_floats_; }
  bool file_backed() const { return mapped_ != nullptr; }
  float* row(int64_t i) { return data_ + size_t(i) * size_t(row_floats_); }
  const float* row(int64_t i) const { return data_ + size_t(i) * size_t(row_floats_); }

 private:
  void release();
  int64_t count_ = 0, row_floats_ = 0;
  std::vector<float> memory_;
  void* mapped_ = nullptr;
  size_t mapped_bytes_ = 0;
  float* data_ = nullptr;
};

// An image source: image `i` of `count`, already decoded to 8-bit RGB. Called from several threads at once.
using ImageSource = std::function<ImageU8(int64_t index)>;

// Runs the model's encoder on every image (its image pipeline, Context::run_images: `batch` at a time,
// decoding in parallel) and stores the latents [num_latents * d_latents] per image. `progress` shows a bar
// labelled `label` on stderr.
FeatureStore encode_latents(const Model& model, int64_t count,
                            const ImageSource& source, int batch, bool progress,
                            const std::string& label = "encoding",
                            uint64_t max_memory_bytes = uint64_t(4) << 30,
                            const std::filesystem::path& cache_dir = {});

// ImageSource over files (load_image with default decode options).
ImageSource file_source(const std::vector<std::filesystem::path>& files);

}  // namespace perceiver::train
