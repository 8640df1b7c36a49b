// The public Model and Context calls that do not depend on the architecture.
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <mutex>
#include <numeric>

#include <nlohmann/json.hpp>

#include "model/context.h"
#include "perceiver/perceiver.h"

namespace perceiver {

const char* precision_name(Precision precision) {
  switch (precision) {
    case Precision::fp32:
      return "fp32";
    case Precision::bf16:
      return "bf16";
    case Precision::int8:
      return "int8";
  }
  return "?";
}

Precision parse_precision(const std::string& name) {
  if (name == "fp32") return Precision::fp32;
  if (name == "bf16") return Precision::bf16;
  if (name == "int8") return Precision::int8;
  throw Error(ErrorKind::usage, "precision '" + name + "': expected fp32, bf16 or int8");
}

ThreadPinning parse_thread_pinning(const std::string& name) {
  if (name == "auto") return ThreadPinning::automatic;
  if (name == "on") return ThreadPinning::on;
  if (name == "off") return ThreadPinning::off;
  throw Error(ErrorKind::usage, "pin_threads '" + name + "': expected auto, on or off");
}

std::string vision_perceiver_conv_config_json() {
  nlohmann::json j;
  j["architectures"] = {"PerceiverForImageClassificationConvProcessing"};
  j["model_type"] = "perceiver";
  j["num_latents"] = 512;
  j["d_latents"] = 1024;
  j["d_model"] = 322;
  j["num_blocks"] = 8;
  j["num_self_attends_per_block"] = 6;
  j["num_self_attention_heads"] = 8;
  j["num_cross_attention_heads"] = 1;
  j["qk_channels"] = nullptr;
  j["v_channels"] = nullptr;
  j["cross_attention_shape_for_attention"] = "kv";
  j["self_attention_widening_factor"] = 1;
  j["cross_attention_widening_factor"] = 1;
  j["hidden_act"] = "gelu";
  j["use_query_residual"] = true;
  j["image_size"] = 56;
  j["num_labels"] = 1000;
  return j.dump();
}

Pool parse_pool(const std::string& name) {
  if (name == "mean") return Pool::mean;
  if (name == "latents") return Pool::latents;
  if (name == "decoder") return Pool::decoder;
  throw Error(ErrorKind::usage, "pool '" + name + "': expected mean, latents or decoder");
}

std::vector<Prediction> top_k(const float* logits, const std::vector<std::string>& labels, int k) {
  const int n = static_cast<int>(labels.size());
  if (n == 0 || k <= 0) return {};
  const double max_logit = *std::max_element(logits, logits + n);
  std::vector<double> p(n);
  double sum = 0;
  for (int i = 0; i < n; ++i) sum += (p[i] = std::exp(double(logits[i]) - max_logit));
  std::vector<int> order(n);
  std::iota(order.begin(), order.end(), 0);
  k = std::min(k, n);
  std::partial_sort(order.begin(), order.begin() + k, order.end(),
                    [&](int a, int b) { return p[a] > p[b] || (p[a] == p[b] && a < b); });
  std::vector<Prediction> out(k);
  for (int i = 0; i < k; ++i) out[i] = {order[i], labels[order[i]], float(p[order[i]] / sum)};
  return out;
}

// The model's own context for its convenience calls, behind a mutex.
struct Model::Shared {
  std::mutex mutex;
  std::unique_ptr<Context> context;
};

Model::Model() : shared_(std::make_unique<Shared>()) {}
Model::~Model() = default;

std::unique_ptr<Context> Model::create_context() const {
  return std::unique_ptr<Context>(new Context(new_context_impl()));
}

void Model::forward(const ForwardArgs& args) {
  std::lock_guard<std::mutex> lock(shared_->mutex);
  if (!shared_->context) shared_->context = create_context();
  forward(*shared_->context, args);
}

void Model::classify(const float* pixels, int batch, int height, int width, float* logits) {
  ForwardArgs args;
  args.pixels = pixels;
  args.batch = batch;
  args.height = height;
  args.width = width;
  args.logits = logits;
  forward(args);
}

Tensor Model::preprocess(const Image& image) const {
  Tensor t;
  int h = 0, w = 0;
  preprocessed_size(image, &h, &w);
  t.shape = {1, 3, h, w};
  t.data.resize(size_t(3) * h * w);
  preprocess(image, t.data.data());
  return t;
}

Context::Context(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Context::~Context() = default;

const Model& Context::model() const { return *impl_->model; }

void Context::forward(const ForwardArgs& args) { impl_->model->forward(*this, args); }

void Context::logits(const float* pixels, int batch, int height, int width, float* logits) {
  ForwardArgs args;
  args.pixels = pixels;
  args.batch = batch;
  args.height = height;
  args.width = width;
  args.logits = logits;
  forward(args);
}

}  // namespace perceiver
