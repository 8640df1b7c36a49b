// A Perceiver IO model assembled from its modules (src/model/modules.h): preprocessor -> encoder -> decoder,
// as the registry names them for config.json's architecture. Loaded once, immutable; each Context holds the
// activations of its forward passes.
// Shapes: B batch, N input tokens, C input channels, L latents, D latent width.
#include "model/perceiver_model.h"

#include <omp.h>

#include <algorithm>
#include <cstring>

#include "kernels/thread_pinning.h"
#include "model/context.h"

namespace perceiver {
namespace {

// Default bound on the activations of one forward pass (see PerceiverModel::forward).
constexpr size_t kPassActivationBytes = size_t(32) << 20;

std::unique_ptr<Backend> make_backend(const ModelOptions& options) {
  std::unique_ptr<Backend> backend;
  if (options.backend == "reference")
    backend = make_reference_backend(options.threads);
  else if (options.backend == "auto" || options.backend == "fast")
    backend = make_best_backend(options.threads);
  else
    throw Error(ErrorKind::usage, "unknown backend '" + options.backend + "' (auto, fast, reference)");
  if (options.backend == "fast" && backend->name() == "reference")
    throw Error(ErrorKind::usage, "the fast backend is not available on this build or CPU");
  return backend;
}

// A context's activations: the encoder's inputs and latents, the modules' buffers.
struct PerceiverContext final : Context::Impl {
  PreprocessorState preprocessor;
  PerceiverEncoder::Buffers buffers;
  std::vector<float> inputs;   // [B, N, C]
  std::vector<float> latents;  // [B, L, D]
};

}  // namespace

PerceiverModel::PerceiverModel(PerceiverConfig config, WeightReader& reader, const ModelOptions& options)
    : config_(std::move(config)), options_(options), backend_(make_backend(options)) {
  const ArchitectureEntry& arch = find_architecture(config_.architecture_name);
  LinearPacker packer(reader, *backend_, options_);
  // Read in HF's state-dict order: preprocessor, latents and encoder, decoder.
  preprocessor_ = arch.preprocessor(packer, config_);
  encoder_ = std::make_unique<PerceiverEncoder>(packer, config_);
  decoder_ = arch.decoder(packer, config_, config_.d_latents);
  reader.finish();

  info_.architecture = config_.architecture_name;
  info_.backend = backend_->name();
  info_.precision = options_.precision;
  info_.labels = config_.labels;
  info_.num_labels = config_.num_labels();
  info_.num_latents = config_.num_latents;
  info_.d_latents = config_.d_latents;
  if (config_.architecture == Architecture::learned)
    info_.fixed_image_height = info_.fixed_image_width = config_.image_size;
  info_.num_parameters = reader.num_parameters();
  info_.weights_in_place = packer.any_in_place;
}

void PerceiverModel::check_input_size(int height, int width) const {
  auto bad = [&](const std::string& why) {
    throw Error(ErrorKind::bad_input, "input size " + std::to_string(height) + "x" + std::to_string(width) +
                                          " is not admitted by " + config_.architecture_name + ": " + why);
  };
  if (height <= 0 || width <= 0 || height > 8192 || width > 8192) bad("sides must be in 1..8192");
  try {
    preprocessor_->check_input_size(config_, height, width);
  } catch (const Error& e) {
    bad(e.what());
  }
  if (int64_t(preprocessor_->geometry(height, width).tokens()) * preprocessor_->channels() > (int64_t(1) << 31) / 4)
    bad("too many input tokens");
}

double PerceiverModel::flops_per_image(int height, int width) const {
  const int tokens = preprocessor_->geometry(height, width).tokens();
  return 2 * (preprocessor_->macs(height, width) + encoder_->macs(tokens) + decoder_->macs(config_.num_latents));
}

int PerceiverModel::auto_images_per_pass(int height, int width) const {
  // As many images as fit in kPassActivationBytes of activations: one for the ImageNet models (about 40 MB
  // each), dozens for small ones, whose one-image GEMMs are too small to amortise a parallel region each.
  const auto& c = config_;
  const size_t N = preprocessor_->geometry(height, width).tokens(), C = preprocessor_->channels();
  const size_t L = c.num_latents, D = c.d_latents;
  const auto& ec = c.encoder_cross;
  const auto& sa = c.self_attention;
  const size_t qk = std::max({N * ec.qk_channels, L * sa.qk_channels, L * ec.kv_dim});
  const size_t v = std::max(N * ec.v_channels, L * sa.v_channels);
  const size_t per_image_floats = preprocessor_->activation_floats(height, width) + N * C /* inputs */ +
                                  std::max(N * C, L * D) /* LN(kv) */ + qk /* keys */ + v /* values */ +
                                  2 * L * D /* latents, LN */ + qk /* queries */ + L * sa.v_channels +
                                  L * (2 * sa.qk_channels + sa.v_channels) + L * sa.mlp_hidden;
  const size_t per_image = sizeof(float) * per_image_floats;
  const int threads = backend_->threads();
  const size_t by_memory = kPassActivationBytes / std::max<size_t>(per_image, 1);
  return static_cast<int>(std::clamp<size_t>(by_memory, std::max(1, (threads + 7) / 8), 1024));
}

std::unique_ptr<Context::Impl> PerceiverModel::new_context_impl() const {
  auto impl = std::make_unique<PerceiverContext>();
  impl->model = this;
  impl->backend = backend_->clone();
  return impl;
}

void PerceiverModel::forward(Context& context, const ForwardArgs& args) const {
  if (&context.model() != this) throw Error(ErrorKind::internal, "forward: the context belongs to another model");
  if (!args.pixels) throw Error(ErrorKind::internal, "forward: no pixels");
  if (args.batch <= 0) throw Error(ErrorKind::bad_input, "forward: batch size must be positive");
  check_input_size(args.height, args.width);
  // A batch goes through the network a few images at a time (ModelOptions::images_per_pass; by default as
  // many as fit in kPassActivationBytes). On CPUs a bigger pass does not make the GEMMs faster once they have
  // a few hundred rows, while the activations grow with it and spill out of the caches: for the ImageNet
  // model (512 latents) on 2 cores, passes of 1, 2 and 4 images ran within 1% per image of each other and 8
  // 2-3% slower, with twice the memory. Small models (64 latents) need dozens of images per pass to
  // amortise the parallel regions. A traced run keeps its batch (the trace has batch-shaped tensors).
  const int per_pass = args.trace                     ? args.batch
                       : options_.images_per_pass > 0 ? options_.images_per_pass
                                                      : auto_images_per_pass(args.height, args.width);
  auto& ctx = static_cast<PerceiverContext&>(impl_of(context));
  const PinnedThreads pinned(ctx.backend->threads(), options_.pin_threads);
  if (args.batch <= per_pass) return forward_pass(ctx, args);
  const size_t pixels = size_t(3) * args.height * args.width;
  const size_t L = config_.num_latents, D = config_.d_latents, labels = config_.num_labels();
  for (int b0 = 0; b0 < args.batch; b0 += per_pass) {
    ForwardArgs part = args;
    part.batch = std::min(per_pass, args.batch - b0);
    part.pixels = args.pixels + b0 * pixels;
    if (args.logits) part.logits = args.logits + b0 * labels;
    if (args.latents) part.latents = args.latents + b0 * L * D;
    if (args.decoder_features) part.decoder_features = args.decoder_features + b0 * D;
    forward_pass(ctx, part);
  }
}

void PerceiverModel::forward_pass(Context::Impl& impl, const ForwardArgs& args) const {
  auto& ctx = static_cast<PerceiverContext&>(impl);
  Backend& backend = *ctx.backend;
  const int B = args.batch, H = args.height, W = args.width;
  const int N = preprocessor_->geometry(H, W).tokens(), C = preprocessor_->channels();
  const int L = config_.num_latents, D = config_.d_latents;
  const Tracer trace{args.trace, args.trace_attention_probs};
  const Precision precision = options_.precision;

  preprocessor_->prepare(ctx.preprocessor, B, H, W);
  if (ctx.inputs.size() < size_t(B) * N * C) ctx.inputs.resize(size_t(B) * N * C);
  float* latents = args.latents;  // the encoder writes straight into the caller's buffer when it has one
  if (!latents) {
    if (ctx.latents.size() < size_t(B) * L * D) ctx.latents.resize(size_t(B) * L * D);
    latents = ctx.latents.data();
  }
  preprocessor_->run(backend, ctx.preprocessor, args.pixels, B, H, W, ctx.inputs.data(), trace);
  trace("preproc_output", {B, N, C}, ctx.inputs.data());
  encoder_->run(backend, precision, ctx.buffers, ctx.inputs.data(), B, N, latents, trace);
  decoder_->run(backend, precision, ctx.buffers, latents, B, L, args.logits, args.decoder_features, trace);
}

}  // namespace perceiver
