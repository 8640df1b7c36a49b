// A trainable PerceiverLayer (HF modeling_perceiver.py): pre-LayerNorm attention (cross or self, any number
// of heads, optional query residual) followed by a pre-LayerNorm GELU MLP with a residual:
//
//   xq = LN1(x);  kv' = LN2(kv) (cross) or xq (self)
//   a  = Wo attention(Wq xq, Wk kv', Wv kv') + bo  (+ x when query_residual)
//   out = a + W2 gelu(W1 LN3(a) + b1) + b2
//
// forward() keeps what backward() needs in a Cache; backward() adds the gradients of every parameter into its
// Param::grad and, on request, into the gradients of both inputs. The decoder of an image classifier is one
// of these; so is every encoder layer, so un-freezing more of the network reuses this pair.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "model/config.h"
#include "train/rng.h"

namespace perceiver::train {

template <class T>
struct Param {
  std::string name;  // Hugging Face state-dict name
  std::vector<int64_t> shape;
  std::vector<T> value, grad;
  enum Kind { weight, bias, norm_scale, embedding } kind = weight;

  size_t size() const { return value.size(); }
};

// A zero-filled parameter (LayerNorm scales start at 1); initialisation proper is the trainer's job.
template <class T>
inline Param<T> make_param(const std::string& name, std::vector<int64_t> shape,
                           typename Param<T>::Kind kind) {
  Param<T> p;
  p.name = name;
  p.shape = std::move(shape);
  size_t n = 1;
  for (auto d : p.shape) n *= size_t(d);
  p.value.assign(n, kind == Param<T>::norm_scale ? T(1) : T(0));
  p.grad.assign(n, T(0));
  p.kind = kind;
  return p;
}

// nn.LayerNorm's default; HF's PerceiverLayer never passes config.layer_norm_eps.
constexpr double kLayerNormEps = 1e-5;

template <class T>
class PerceiverLayer {
 public:
  // prefix: the layer's HF name prefix, e.g. "perceiver.decoder.decoder.decoding_cross_attention."
  PerceiverLayer(const LayerShape& shape, const std::string& prefix);
  PerceiverLayer(const PerceiverLayer&) = delete;  // params() hands out pointers into this object
  PerceiverLayer& operator=(const PerceiverLayer&) = delete;

  const LayerShape& shape() const { return shape_; }
  // Every parameter, in a fixed order (the order HF's state dict lists them).
  std::vector<Param<T>*> params();
  Param<T>* find(std::string_view name_suffix);

  // HF's _init_weights: Linear weights ~ normal(0, std), biases 0, LayerNorm weight 1 / bias 0; draws in
  // params() order.
  void init_hf(Rng& rng, double std);

  // Cross-attention with few queries (the decoder: one) never forms keys and values: with n_j = LN2(kv_j),
  //   q . (Wk n_j + bk) = (Wk^T q) . n_j + const   and   sum_j p_j (Wv n_j + bv) = Wv (sum_j p_j n_j) + bv,
  // which costs O(nk * kv_dim) per query and head instead of O(nk * kv_dim * (qk + v)) per image. The same
  // function up to rounding; the gradient of the key bias is then exactly zero (as it is mathematically).
  // Used when nq * heads * 4 <= qk_channels + v_channels, unless disabled (tests compare both paths).
  void set_query_folding(bool allowed) { allow_folding_ = allowed; }
  bool uses_query_folding(int nq) const {
    return allow_folding_ && shape_.is_cross &&
           nq * shape_.heads * 4 <= shape_.qk_channels + shape_.v_channels;
  }

  struct Cache {
    bool folded = false;
    std::vector<T> qt, nbar;  // folded path: Wk_h^T q_h and sum_j p_j n_j, [batch, heads, nq, kv_dim]
    int batch = 0, nq = 0, nk = 0;
    const T* x = nullptr;  // the caller's inputs: must stay unchanged until backward()
    const T* kv = nullptr;
    std::vector<T> x_ln, mean1, rstd1;            // LN1
    std::vector<T> kv_ln, mean2, rstd2;           // LN2 (cross only)
    std::vector<T> q, k, v, probs, ctx;           // attention
    std::vector<T> a, h_ln, mean3, rstd3, h1, g;  // MLP
  };

  // x: [batch * nq, q_dim]; kv: [batch * nk, kv_dim] for cross-attention (ignored for self-attention, where
  // nk must equal nq). out: [batch * nq, q_dim], may not alias x. cache: filled for backward(), or null.
  void forward(const T* x, const T* kv, int batch, int nq, int nk, T* out, Cache* cache) const;

  // dout: [batch * nq, q_dim]. Adds into dx [batch * nq, q_dim] and dkv [batch * nk, kv_dim] (either null
  // when not needed) and into every Param::grad.
  void backward(const Cache& cache, const T* dout, T* dx, T* dkv);

 private:
  void attend_folded(Cache& c) const;
  void attend_folded_backward(const Cache& c, const T* dctx, T* dq, T* dkv_ln);

  LayerShape shape_;
  bool allow_folding_ = true;
  Param<T> ln1_w_, ln1_b_, ln2_w_, ln2_b_, q_w_, q_b_, k_w_, k_b_, v_w_, v_b_, o_w_, o_b_, ln3_w_, ln3_b_,
      m1_w_, m1_b_, m2_w_, m2_b_;
};

// Linear / LayerNorm dispatch: the fast float kernels for float, the plain loops for double.
template <class T>
void linear_forward(const T* x, const T* W, const T* b, int M, int N, int K, T* y);
template <class T>
void linear_backward(const T* x, const T* W, const T* dy, int M, int N, int K, T* dx, T* dW, T* db);

extern template class PerceiverLayer<float>;
extern template class PerceiverLayer<double>;

}  // namespace perceiver::train
