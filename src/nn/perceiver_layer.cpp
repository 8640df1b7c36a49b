#include "nn/perceiver_layer.h"

#include <algorithm>
#include <cmath>
#include <cstring>

namespace perceiver::nn {
namespace {

// fold_constant_queries computes for up to this many queries directly, for more with the backend's GEMMs.
constexpr int kDirectFoldQueries = 8;

// Grows a buffer to at least n floats (never shrinks: a later call of the same shape allocates nothing).
float* ensure(std::vector<float>& buffer, size_t n) {
  if (buffer.size() < n) buffer.resize(n);
  return buffer.data();
}

}  // namespace

LayerNormWeights load_layer_norm(WeightReader& reader, const std::string& prefix, int width) {
  return {reader.get(prefix + ".weight", {width}).vec(), reader.get(prefix + ".bias", {width}).vec()};
}

PerceiverLayer::PerceiverLayer(LinearPacker& packer, const std::string& prefix, const LayerShape& s,
                               const float* constant_queries, int nq)
    : shape_(s) {
  WeightReader& reader = packer.reader;
  const Precision precision = packer.options.precision;
  ln_query_ = load_layer_norm(reader, prefix + "attention.self.layernorm1", s.q_dim);
  if (s.is_cross) {
    ln_kv_ = load_layer_norm(reader, prefix + "attention.self.layernorm2", s.kv_dim);
    if (constant_queries && s.heads == 1) {
      fold_constant_queries(packer, prefix, constant_queries, nq);
    } else {
      query_ = packer.linear(prefix + "attention.self.query", s.qk_channels, s.q_dim);
      key_ = packer.linear(prefix + "attention.self.key", s.qk_channels, s.kv_dim);
    }
    value_ = packer.linear(prefix + "attention.self.value", s.v_channels, s.kv_dim);
  } else {  // Q, K and V all read LN(x): one GEMM with the three weight matrices stacked
    std::vector<Weight> weights, biases;
    for (const auto& [name, rows] : {std::pair<const char*, int>{"query", s.qk_channels},
                                     {"key", s.qk_channels},
                                     {"value", s.v_channels}}) {
      weights.push_back(reader.get(prefix + "attention.self." + name + ".weight", {rows, s.q_dim}));
      biases.push_back(reader.get(prefix + "attention.self." + name + ".bias", {rows}));
    }
    // Weights read in place from the file stay three GEMMs with dense outputs: oneDNN runs unpacked weights
    // 15% slower when it writes into the strided [Q | K | V] rows. Packed, they are one stacked GEMM.
    if (packer.in_place({&weights[0], &weights[1], &weights[2]})) {
      query_ = packer.pack({&weights[0]}, {&biases[0]}, s.q_dim, precision);
      key_ = packer.pack({&weights[1]}, {&biases[1]}, s.q_dim, precision);
      value_ = packer.pack({&weights[2]}, {&biases[2]}, s.q_dim, precision);
    } else {
      qkv_ = packer.pack({&weights[0], &weights[1], &weights[2]}, {&biases[0], &biases[1], &biases[2]}, s.q_dim,
                         precision);
    }
  }
  output_ = packer.linear(prefix + "attention.output.dense", s.q_dim, s.v_channels);
  ln_mlp_ = load_layer_norm(reader, prefix + "layernorm", s.q_dim);
  mlp1_ = packer.linear(prefix + "mlp.dense1", s.mlp_hidden, s.q_dim);
  mlp2_ = packer.linear(prefix + "mlp.dense2", s.q_dim, s.mlp_hidden);
}

void PerceiverLayer::fold_constant_queries(LinearPacker& packer, const std::string& prefix, const float* x,
                                           int nq) {
  const LayerShape& s = shape_;
  WeightReader& reader = packer.reader;
  Backend& backend = packer.backend;
  const int qk = s.qk_channels, kv = s.kv_dim;
  std::vector<float> x_norm(size_t(nq) * s.q_dim), q(size_t(nq) * qk);
  folded_queries_.assign(size_t(nq) * kv, 0.0f);
  backend.layer_norm(x, nq, s.q_dim, ln_query_.gamma.data(), ln_query_.beta.data(), kLayerNormEps,
                     x_norm.data());
  auto wq = reader.get(prefix + "attention.self.query.weight", {qk, s.q_dim});
  auto bq = reader.get(prefix + "attention.self.query.bias", {qk});
  auto wk = reader.get(prefix + "attention.self.key.weight", {qk, kv});
  reader.skip(prefix + "attention.self.key.bias", {qk});  // part of the model, drops out of the softmax
  if (nq <= kDirectFoldQueries) {
    // A few queries (a decoder's one): both products directly, in double, reading the weights as they lie;
    // packing them for a GEMM would take longer.
    std::vector<double> qi(qk), fi(kv);
    for (int i = 0; i < nq; ++i) {
      const float* xi = &x_norm[size_t(i) * s.q_dim];
      for (int c = 0; c < qk; ++c) {
        const float* w = wq.data + size_t(c) * s.q_dim;
        double sum = bq[c];
        for (int d = 0; d < s.q_dim; ++d) sum += double(xi[d]) * w[d];
        qi[c] = sum;
      }
      std::fill(fi.begin(), fi.end(), 0.0);
      for (int c = 0; c < qk; ++c) {
        const float* w = wk.data + size_t(c) * kv;
        for (int j = 0; j < kv; ++j) fi[j] += qi[c] * w[j];
      }
      for (int j = 0; j < kv; ++j) folded_queries_[size_t(i) * kv + j] = float(fi[j]);
    }
    reader.release(wq);
    reader.release(wk);
    return;
  }
  auto query = backend.pack_linear(wq.data, bq.data, qk, s.q_dim, Precision::fp32);
  reader.release(wq, *query);
  backend.linear(*query, x_norm.data(), s.q_dim, nq, q.data(), qk, Activation::none, nullptr);
  std::vector<float> wk_t(size_t(kv) * qk);  // Wk^T [kv, qk], in 32 x 32 blocks
  for (int i0 = 0; i0 < qk; i0 += 32)
    for (int j0 = 0; j0 < kv; j0 += 32)
      for (int i = i0; i < std::min(qk, i0 + 32); ++i)
        for (int j = j0; j < std::min(kv, j0 + 32); ++j) wk_t[size_t(j) * qk + i] = wk[size_t(i) * kv + j];
  reader.release(wk);
  backend.linear(*backend.pack_linear(wk_t.data(), nullptr, kv, qk, Precision::fp32), q.data(), qk, nq,
                 folded_queries_.data(), kv, Activation::none, nullptr);
}

void PerceiverLayer::run(Backend& backend, Precision precision, LayerBuffers& w, float* x, int batch, int nq,
                         const float* kv_raw, int nk, float* probs,
                         const std::function<void(const float*)>& attention_out) const {
  const LayerShape& s = shape_;
  const size_t rows_q = size_t(batch) * nq, rows_kv = size_t(batch) * nk;
  float* x_norm = ensure(w.x_norm, rows_q * s.q_dim);
  float* context = ensure(w.context, rows_q * s.v_channels);
  float* hidden = ensure(w.hidden, rows_q * s.mlp_hidden);
  backend.layer_norm(x, int(rows_q), s.q_dim, ln_query_.gamma.data(), ln_query_.beta.data(), kLayerNormEps,
                     x_norm);
  AttentionArgs a;
  a.dqk = s.qk_channels / s.heads;
  a.dv = s.v_channels / s.heads;
  a.ldo = s.v_channels;
  a.out = context;
  const bool is_folded = kv_raw && folded();
  float* weighted_kv = nullptr;  // folded: P LN(kv) [rows_q, kv_dim]
  if (is_folded) {  // constant queries, one head: attend over LN(kv_raw) itself (fold_constant_queries)
    float* kv_norm = ensure(w.kv_norm, rows_kv * s.kv_dim);
    float* queries = ensure(w.queries, rows_q * s.kv_dim);
    weighted_kv = ensure(w.keys, rows_q * s.kv_dim);
    backend.layer_norm(kv_raw, int(rows_kv), s.kv_dim, ln_kv_.gamma.data(), ln_kv_.beta.data(), kLayerNormEps,
                       kv_norm);
    for (int b = 0; b < batch; ++b)
      std::memcpy(queries + size_t(b) * folded_queries_.size(), folded_queries_.data(),
                  sizeof(float) * folded_queries_.size());
    a.q = queries;
    a.k = a.v = kv_norm;
    a.ldq = a.ldk = a.ldv = a.ldo = s.kv_dim;
    a.dqk = a.dv = s.kv_dim;  // the scale below stays that of the original head width
    a.out = weighted_kv;
  } else if (kv_raw) {  // cross-attention: queries from LN(x), keys and values from LN(kv_raw)
    float* kv = ensure(w.kv_norm, rows_kv * s.kv_dim);
    float* queries = ensure(w.queries, rows_q * s.qk_channels);
    float* keys = ensure(w.keys, rows_kv * s.qk_channels);
    float* values = ensure(w.values, rows_kv * s.v_channels);
    backend.layer_norm(kv_raw, int(rows_kv), s.kv_dim, ln_kv_.gamma.data(), ln_kv_.beta.data(), kLayerNormEps,
                       kv);
    backend.linear(*query_, x_norm, s.q_dim, int(rows_q), queries, s.qk_channels, Activation::none, nullptr);
    backend.linear(*key_, kv, s.kv_dim, int(rows_kv), keys, s.qk_channels, Activation::none, nullptr);
    backend.linear(*value_, kv, s.kv_dim, int(rows_kv), values, s.v_channels, Activation::none, nullptr);
    a.q = queries;
    a.k = keys;
    a.v = values;
    a.ldq = a.ldk = s.qk_channels;
    a.ldv = s.v_channels;
  } else if (qkv_) {  // self-attention: [Q | K | V] = LN(x) [Wq | Wk | Wv]^T in one GEMM
    const int n = 2 * s.qk_channels + s.v_channels;
    float* qkv = ensure(w.qkv, rows_q * n);
    backend.linear(*qkv_, x_norm, s.q_dim, int(rows_q), qkv, n, Activation::none, nullptr);
    a.q = qkv;
    a.k = qkv + s.qk_channels;
    a.v = qkv + 2 * s.qk_channels;
    a.ldq = a.ldk = a.ldv = n;
  } else {  // self-attention, three GEMMs: Q, K and V dense one after another in the same buffer
    float* q = ensure(w.qkv, rows_q * (2 * s.qk_channels + s.v_channels));
    float* k = q + rows_q * s.qk_channels;
    float* v = k + rows_q * s.qk_channels;
    backend.linear(*query_, x_norm, s.q_dim, int(rows_q), q, s.qk_channels, Activation::none, nullptr);
    backend.linear(*key_, x_norm, s.q_dim, int(rows_q), k, s.qk_channels, Activation::none, nullptr);
    backend.linear(*value_, x_norm, s.q_dim, int(rows_q), v, s.v_channels, Activation::none, nullptr);
    a.q = q;
    a.k = k;
    a.v = v;
    a.ldq = a.ldk = s.qk_channels;
    a.ldv = s.v_channels;
  }
  a.probs = probs;
  a.batch = batch;
  a.heads = s.heads;
  a.nq = nq;
  a.nk = nk;
  a.scale = static_cast<float>(1.0 / std::sqrt(double(s.qk_channels / s.heads)));
  a.precision = precision;
  backend.attention(a);
  if (is_folded)  // context = (P LN(kv)) Wv^T + bv
    backend.linear(*value_, weighted_kv, s.kv_dim, int(rows_q), context, s.v_channels, Activation::none,
                   nullptr);

  // Output projection; the query residual adds the un-normalised input.
  if (s.query_residual) {
    backend.linear(*output_, context, s.v_channels, int(rows_q), x, s.q_dim, Activation::none, x);
  } else {
    backend.linear(*output_, context, s.v_channels, int(rows_q), x_norm, s.q_dim, Activation::none, nullptr);
    std::memcpy(x, x_norm, sizeof(float) * rows_q * s.q_dim);
  }
  if (attention_out) attention_out(x);
  // x += MLP(LN(x))
  backend.layer_norm(x, int(rows_q), s.q_dim, ln_mlp_.gamma.data(), ln_mlp_.beta.data(), kLayerNormEps, x_norm);
  backend.linear(*mlp1_, x_norm, s.q_dim, int(rows_q), hidden, s.mlp_hidden, Activation::gelu, nullptr);
  backend.linear(*mlp2_, hidden, s.mlp_hidden, int(rows_q), x, s.q_dim, Activation::none, x);
}

}  // namespace perceiver::nn
