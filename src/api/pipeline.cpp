// The image pipeline of a Context: decode (by the caller's source) and preprocess in parallel, batch images
// of equal preprocessed size, run the network, hand each pass's rows to the caller.
#include <omp.h>

#include <algorithm>
#include <cstring>
#include <exception>

#include "model/context.h"
#include "perceiver/perceiver.h"

namespace perceiver {

void Context::run_images(int64_t count, const std::function<Image(int64_t)>& source, int batch_size,
                         unsigned outputs, const std::function<void(const ImageBatch&)>& sink,
                         const std::function<std::string(int64_t)>& name) {
  // An error about image i, named as the caller names it (unless the message names it already).
  auto named = [&](int64_t i, const Error& e) {
    if (!name) return e;
    const std::string n = name(i), what = e.what();
    return what.rfind(n, 0) == 0 ? e : Error(e.kind(), n + ": " + what);
  };
  const Model& m = model();
  const ModelInfo& info = m.info();
  if (!info.has_preprocessor) {
    int h, w;
    m.preprocessed_size(Image{}, &h, &w);  // throws the model's "no preprocessor" error
  }
  batch_size = std::max(1, batch_size);
  const size_t L = info.num_latents, D = info.d_latents, labels = info.num_labels;
  std::vector<std::vector<float>> pixels(batch_size);
  std::vector<int> heights(batch_size), widths(batch_size);
  std::vector<float>& packed = impl_->pixels;
  const int threads = std::max(1, impl_->backend->threads());
  for (int64_t start = 0; start < count; start += batch_size) {
    const int n = static_cast<int>(std::min<int64_t>(batch_size, count - start));
    std::vector<std::exception_ptr> errors(n);
#pragma omp parallel for schedule(dynamic) num_threads(threads)
    for (int i = 0; i < n; ++i) {
      try {
        try {
          const Image image = source(start + i);
          m.preprocessed_size(image, &heights[i], &widths[i]);
          m.check_input_size(heights[i], widths[i]);
          pixels[i].resize(size_t(3) * heights[i] * widths[i]);
          m.preprocess(image, pixels[i].data());
        } catch (const Error& e) {
          throw named(start + i, e);
        }
      } catch (...) {
        errors[i] = std::current_exception();
      }
    }
    for (auto& e : errors)  // the first failing image in order, whichever thread saw it first
      if (e) std::rethrow_exception(e);
    // Consecutive runs of equally sized images go through the network together.
    for (int i = 0; i < n;) {
      int j = i + 1;
      while (j < n && heights[j] == heights[i] && widths[j] == widths[i]) ++j;
      const int H = heights[i], W = widths[i], k = j - i;
      const size_t image_floats = size_t(3) * H * W;
      packed.resize(size_t(k) * image_floats);
      for (int t = 0; t < k; ++t)
        std::memcpy(&packed[size_t(t) * image_floats], pixels[i + t].data(), sizeof(float) * image_floats);
      ForwardArgs args;
      args.pixels = packed.data();
      args.batch = k;
      args.height = H;
      args.width = W;
      ImageBatch batch;
      batch.first = start + i;
      batch.count = k;
      if (outputs & ImageBatch::logits_output) {
        impl_->logits.resize(size_t(k) * labels);
        batch.logits = args.logits = impl_->logits.data();
      }
      if (outputs & ImageBatch::latents_output) {
        impl_->latents.resize(size_t(k) * L * D);
        batch.latents = args.latents = impl_->latents.data();
      }
      if (outputs & ImageBatch::decoder_features_output) {
        impl_->features.resize(size_t(k) * D);
        batch.decoder_features = args.decoder_features = impl_->features.data();
      }
      forward(args);
      sink(batch);
      i = j;
    }
  }
}

Tensor Context::logits(const std::vector<Image>& images, int batch_size) {
  const int64_t labels = model().info().num_labels;
  Tensor out;
  out.shape = {int64_t(images.size()), labels};
  out.data.resize(images.size() * size_t(labels));
  run_images(
      int64_t(images.size()), [&](int64_t i) { return images[size_t(i)]; }, batch_size,
      ImageBatch::logits_output, [&](const ImageBatch& b) {
        std::memcpy(&out.data[size_t(b.first) * labels], b.logits, sizeof(float) * b.count * labels);
      });
  return out;
}

std::vector<std::vector<Prediction>> Context::classify(const std::vector<Image>& images, int k, int batch_size) {
  const Tensor l = logits(images, batch_size);
  const auto& labels = model().info().labels;
  std::vector<std::vector<Prediction>> out;
  for (size_t i = 0; i < images.size(); ++i) out.push_back(top_k(&l.data[i * labels.size()], labels, k));
  return out;
}

Tensor Context::embed(const std::vector<Image>& images, Pool pool, int batch_size) {
  const ModelInfo& info = model().info();
  const int64_t n = int64_t(images.size()), L = info.num_latents, D = info.d_latents;
  Tensor out;
  out.shape = pool == Pool::latents ? std::vector<int64_t>{n, L, D} : std::vector<int64_t>{n, D};
  out.data.resize(size_t(n) * (pool == Pool::latents ? L * D : D));
  const unsigned what = pool == Pool::decoder ? ImageBatch::decoder_features_output : ImageBatch::latents_output;
  run_images(
      n, [&](int64_t i) { return images[size_t(i)]; }, batch_size, what, [&](const ImageBatch& b) {
        for (int t = 0; t < b.count; ++t) {
          float* dst = &out.data[size_t(b.first + t) * (pool == Pool::latents ? L * D : D)];
          if (pool == Pool::decoder) {
            std::memcpy(dst, b.decoder_features + size_t(t) * D, sizeof(float) * D);
          } else if (pool == Pool::latents) {
            std::memcpy(dst, b.latents + size_t(t) * L * D, sizeof(float) * L * D);
          } else {  // mean over the latents, in double
            const float* z = b.latents + size_t(t) * L * D;
            for (int64_t d = 0; d < D; ++d) {
              double sum = 0;
              for (int64_t l = 0; l < L; ++l) sum += z[l * D + d];
              dst[d] = float(sum / L);
            }
          }
        }
      });
  return out;
}

}  // namespace perceiver
