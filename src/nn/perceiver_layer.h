// HF's PerceiverLayer for inference: pre-LayerNorm attention (cross or self, optional query residual) and a
// pre-LayerNorm GELU MLP with a residual, on a backend:
//
//   xq = LN1(x);  kv' = LN2(kv) (cross) or xq (self)
//   a  = Wo attention(Wq xq, Wk kv', Wv kv') + bo  (+ x when query_residual)
//   out = a + W2 gelu(W1 LN3(a) + b1) + b2
//
// Every Perceiver IO module (encoder cross-attention, latent self-attention blocks, decoders) is one of these.
// The trainable twin with its backward pass is train::PerceiverLayer (src/nn/trainable_layer.h).
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "kernels/kernels.h"
#include "model/config.h"
#include "model/weights.h"

namespace perceiver::nn {

// nn.LayerNorm's default; HF's PerceiverLayer never passes config.layer_norm_eps.
constexpr float kLayerNormEps = 1e-5f;

struct LayerNormWeights {
  std::vector<float> gamma, beta;
};

// Activation buffers of one layer call; grown on first use, then reused (no allocation for the same shapes).
struct LayerBuffers {
  std::vector<float> x_norm;            // [rows_q, q_dim]
  std::vector<float> kv_norm;           // [rows_kv, kv_dim]
  std::vector<float> queries, keys;     // [rows_q, qk] / [rows_kv, qk]; keys also holds P LN(kv) when folded
  std::vector<float> values, context;   // [rows_kv, v] / [rows_q, v]
  std::vector<float> qkv;               // self-attention [rows_q, 2 qk + v]
  std::vector<float> hidden;            // [rows_q, mlp_hidden]
  std::vector<float> decoder_x;         // a decoder's query stream [B, nq, q_dim]
};


class PerceiverLayer {
 public:
  // Reads the layer's weights under `prefix` (e.g. "perceiver.encoder.cross_attention."). constant_queries:
  // the layer's query input [nq, q_dim] when it does not depend on the input (the encoder's latents, a
  // decoder's query array): then, with one head, the query and key projections are folded at load
  // (fold_constant_queries below).
  PerceiverLayer(LinearPacker& packer, const std::string& prefix, const LayerShape& shape,
                 const float* constant_queries = nullptr, int nq = 0);

  const LayerShape& shape() const { return shape_; }
  bool folded() const { return !folded_queries_.empty(); }

  // x: [batch * nq, q_dim], updated in place. kv: [batch * nk, kv_dim] for cross-attention, nullptr for
  // self-attention (nk = nq). probs: [batch, heads, nq, nk] softmax probabilities, or nullptr.
  // attention_out: called with x after the attention block (before the MLP), or empty.
  void run(Backend& backend, Precision precision, LayerBuffers& buffers, float* x, int batch, int nq,
           const float* kv, int nk, float* probs,
           const std::function<void(const float* x)>& attention_out = nullptr) const;

 private:
  // Cross-attention whose queries do not depend on the input, with one head. The scores are
  //   q K^T = (LN(x) Wq^T + bq) (LN(kv) Wk^T + bk)^T = (q Wk) LN(kv)^T + (q . bk)
  // and the last term is the same for every key of a query, which softmax ignores: so q Wk [nq, kv_dim] is
  // computed once at load, and per input the scores come from LN(kv) itself, without the key projection.
  // The value projection moves after the weighted sum (the probabilities sum to 1, so the bias passes
  // through): P (LN(kv) Wv^T + bv) = (P LN(kv)) Wv^T + bv. In fp32 whatever the model's precision.
  void fold_constant_queries(LinearPacker& packer, const std::string& prefix, const float* x, int nq);

  LayerShape shape_;
  LayerNormWeights ln_query_, ln_kv_, ln_mlp_;  // ln_kv_: cross-attention only
  // Self-attention: one GEMM for Q, K and V (weights stacked, output [rows, 2 qk + v]) when packed, or three
  // (query, key, value) when the weights are read in place; cross-attention: query from the query stream, key
  // and value from the key/value stream.
  std::unique_ptr<PackedLinear> qkv_, query_, key_, value_, output_, mlp1_, mlp2_;
  std::vector<float> folded_queries_;  // folded: (LN(x) Wq^T + bq) Wk, [nq, kv_dim]; else empty
};

LayerNormWeights load_layer_norm(WeightReader& reader, const std::string& prefix, int width);

}  // namespace perceiver::nn
