// What a Context holds: the backend executor of its thread and the model's activation buffers.
#pragma once

#include <memory>

#include "kernels/kernels.h"
#include "perceiver/perceiver.h"

namespace perceiver {

struct Context::Impl {
  virtual ~Impl() = default;
  const Model* model = nullptr;
  std::unique_ptr<Backend> backend;  // a clone of the model's: its own scratch and primitive caches
  // The pipeline's buffers (src/api/pipeline.cpp): a batch's pixels [B, 3, H, W] and outputs.
  std::vector<float> pixels, logits, latents, features;
};

}  // namespace perceiver
