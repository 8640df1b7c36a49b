#include <cstring>

#include "model/modules.h"

namespace perceiver {
namespace {

// Multiply-adds of one PerceiverLayer call with nq queries over nk keys (HF's arithmetic: key and value
// projections counted even where query folding skips them).
double layer_macs(const LayerShape& s, double nq, double nk) {
  return nq * s.q_dim * s.qk_channels + 2 * nk * s.kv_dim * (s.qk_channels + s.v_channels) / 2 +
         nq * nk * (s.qk_channels + s.v_channels) + nq * s.v_channels * s.q_dim + 2 * nq * s.q_dim * s.mlp_hidden;
}

std::vector<float> read_latents(WeightReader& reader, const PerceiverConfig& c) {
  return reader.get("perceiver.embeddings.latents", {c.num_latents, c.d_latents}).vec();
}

}  // namespace

double perceiver_layer_macs(const LayerShape& s, double nq, double nk) { return layer_macs(s, nq, nk); }

PerceiverEncoder::PerceiverEncoder(LinearPacker& packer, const PerceiverConfig& c)
    : num_latents_(c.num_latents),
      d_latents_(c.d_latents),
      num_blocks_(c.num_blocks),
      latents_(read_latents(packer.reader, c)),
      cross_attention_(packer, "perceiver.encoder.cross_attention.", c.encoder_cross, latents_.data(),
                       c.num_latents) {
  self_attends_.reserve(c.num_self_attends_per_block);
  for (int i = 0; i < c.num_self_attends_per_block; ++i)
    self_attends_.emplace_back(packer, "perceiver.encoder.self_attends." + std::to_string(i) + ".",
                               c.self_attention);
}

double PerceiverEncoder::macs(int tokens) const {
  double m = layer_macs(cross_attention_.shape(), num_latents_, tokens);
  for (const auto& layer : self_attends_)
    m += num_blocks_ * layer_macs(layer.shape(), num_latents_, num_latents_);
  return m;
}

void PerceiverEncoder::run(Backend& backend, Precision precision, Buffers& buffers, const float* inputs,
                           int B, int N, float* x, const Tracer& trace) const {
  const int L = num_latents_, D = d_latents_;
  for (int b = 0; b < B; ++b) std::memcpy(&x[size_t(b) * L * D], latents_.data(), sizeof(float) * L * D);
  trace("latents_init", {B, L, D}, x);
  auto probs_for = [&](int heads, int nq, int nk) -> float* {
    if (!trace || !trace.probs) return nullptr;
    buffers.probs.resize(size_t(B) * heads * nq * nk);
    return buffers.probs.data();
  };

  // Cross-attention: latents [B, L, D] attend to the inputs [B, N, C].
  const int cross_heads = cross_attention_.shape().heads;
  float* probs = probs_for(cross_heads, L, N);
  std::function<void(const float*)> attention_out;
  if (trace) attention_out = [&](const float* y) { trace("cross_attn_attention_out", {B, L, D}, y); };
  cross_attention_.run(backend, precision, buffers.layer, x, B, L, inputs, N, probs, attention_out);
  if (probs) trace("cross_attn_probs", {B, cross_heads, L, N}, probs);
  trace("latents_after_cross_attn", {B, L, D}, x);

  for (int block = 0; block < num_blocks_; ++block)
    for (size_t i = 0; i < self_attends_.size(); ++i) {
      const int heads = self_attends_[i].shape().heads;
      probs = probs_for(heads, L, L);
      self_attends_[i].run(backend, precision, buffers.layer, x, B, L, nullptr, L, probs);
      if (!trace) continue;
      const std::string suffix = "_b" + std::to_string(block) + "_l" + std::to_string(i);
      if (probs) trace("self_attn_probs" + suffix, {B, heads, L, L}, probs);
      trace("latents_after_self_attn" + suffix, {B, L, D}, x);
    }
}

}  // namespace perceiver
