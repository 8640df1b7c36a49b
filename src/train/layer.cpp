#include "train/layer.h"

#include <cstring>
#include <type_traits>

#include "perceiver/error.h"
#include "train/fast_ops.h"
#include "train/ops.h"

namespace perceiver::train {

template <class T>
void linear_forward(const T* x, const T* W, const T* b, int M, int N, int K, T* y) {
  if constexpr (std::is_same_v<T, float>)
    fast::linear_forward(x, W, b, M, N, K, y);
  else
    ref::linear_forward(x, W, b, M, N, K, y);
}

template <class T>
void linear_backward(const T* x, const T* W, const T* dy, int M, int N, int K, T* dx, T* dW, T* db) {
  if constexpr (std::is_same_v<T, float>)
    fast::linear_backward(x, W, dy, M, N, K, dx, dW, db);
  else
    ref::linear_backward(x, W, dy, M, N, K, dx, dW, db);
}

template void linear_forward<float>(const float*, const float*, const float*, int, int, int, float*);
template void linear_forward<double>(const double*, const double*, const double*, int, int, int, double*);
template void linear_backward<float>(const float*, const float*, const float*, int, int, int, float*, float*,
                                     float*);
template void linear_backward<double>(const double*, const double*, const double*, int, int, int, double*,
                                      double*, double*);

namespace {

// Multiply-adds below which a loop stays on the calling thread (see fast_ops.cpp).
constexpr double kParallelWork = 4e6;

template <class T>
void resize(std::vector<T>& v, size_t n) {
  v.resize(n);
}

}  // namespace

template <class T>
PerceiverLayer<T>::PerceiverLayer(const LayerShape& s, const std::string& prefix) : shape_(s) {
  if (s.heads < 1 || s.qk_channels % s.heads || s.v_channels % s.heads)
    throw Error(ErrorKind::internal, "PerceiverLayer: channels not divisible by heads");
  using P = Param<T>;
  const std::string a = prefix + "attention.self.";
  ln1_w_ = make_param<T>(a + "layernorm1.weight", {s.q_dim}, P::norm_scale);
  ln1_b_ = make_param<T>(a + "layernorm1.bias", {s.q_dim}, P::bias);
  if (s.is_cross) {
    ln2_w_ = make_param<T>(a + "layernorm2.weight", {s.kv_dim}, P::norm_scale);
    ln2_b_ = make_param<T>(a + "layernorm2.bias", {s.kv_dim}, P::bias);
  }
  const int kv_dim = s.is_cross ? s.kv_dim : s.q_dim;
  q_w_ = make_param<T>(a + "query.weight", {s.qk_channels, s.q_dim}, P::weight);
  q_b_ = make_param<T>(a + "query.bias", {s.qk_channels}, P::bias);
  k_w_ = make_param<T>(a + "key.weight", {s.qk_channels, kv_dim}, P::weight);
  k_b_ = make_param<T>(a + "key.bias", {s.qk_channels}, P::bias);
  v_w_ = make_param<T>(a + "value.weight", {s.v_channels, kv_dim}, P::weight);
  v_b_ = make_param<T>(a + "value.bias", {s.v_channels}, P::bias);
  o_w_ = make_param<T>(prefix + "attention.output.dense.weight", {s.q_dim, s.v_channels}, P::weight);
  o_b_ = make_param<T>(prefix + "attention.output.dense.bias", {s.q_dim}, P::bias);
  ln3_w_ = make_param<T>(prefix + "layernorm.weight", {s.q_dim}, P::norm_scale);
  ln3_b_ = make_param<T>(prefix + "layernorm.bias", {s.q_dim}, P::bias);
  m1_w_ = make_param<T>(prefix + "mlp.dense1.weight", {s.mlp_hidden, s.q_dim}, P::weight);
  m1_b_ = make_param<T>(prefix + "mlp.dense1.bias", {s.mlp_hidden}, P::bias);
  m2_w_ = make_param<T>(prefix + "mlp.dense2.weight", {s.q_dim, s.mlp_hidden}, P::weight);
  m2_b_ = make_param<T>(prefix + "mlp.dense2.bias", {s.q_dim}, P::bias);
}

template <class T>
std::vector<Param<T>*> PerceiverLayer<T>::params() {
  std::vector<Param<T>*> p;
  p.reserve(18);
  for (Param<T>* q : {&ln1_w_, &ln1_b_, &ln2_w_, &ln2_b_, &q_w_, &q_b_, &k_w_, &k_b_, &v_w_, &v_b_, &o_w_,
                      &o_b_, &ln3_w_, &ln3_b_, &m1_w_, &m1_b_, &m2_w_, &m2_b_})
    if (shape_.is_cross || (q != &ln2_w_ && q != &ln2_b_)) p.push_back(q);
  return p;
}

template <class T>
Param<T>* PerceiverLayer<T>::find(std::string_view suffix) {
  for (Param<T>* p : params())
    if (std::string_view(p->name).ends_with(suffix)) return p;
  return nullptr;
}

template <class T>
void PerceiverLayer<T>::init_hf(Rng& rng, double std) {
  for (Param<T>* p : params()) {
    switch (p->kind) {
      case Param<T>::weight:
      case Param<T>::embedding:
        for (auto& v : p->value) v = static_cast<T>(std * rng.normal());
        break;
      case Param<T>::bias:
        std::fill(p->value.begin(), p->value.end(), T(0));
        break;
      case Param<T>::norm_scale:
        std::fill(p->value.begin(), p->value.end(), T(1));
        break;
    }
  }
}

template <class T>
void PerceiverLayer<T>::forward(const T* x, const T* kv, int batch, int nq, int nk, T* out,
                                Cache* cache) const {
  const LayerShape& s = shape_;
  if (!s.is_cross) {
    kv = nullptr;
    nk = nq;
  } else if (!kv) {
    throw Error(ErrorKind::internal, "PerceiverLayer::forward: cross-attention without key/value input");
  }
  Cache local;
  Cache& c = cache ? *cache : local;
  c.batch = batch;
  c.nq = nq;
  c.nk = nk;
  c.x = x;
  c.kv = kv;
  const int rq = batch * nq, rk = batch * nk;
  const T eps = T(kLayerNormEps);

  resize(c.x_ln, size_t(rq) * s.q_dim);
  resize(c.mean1, rq);
  resize(c.rstd1, rq);
  ref::layer_norm_forward(x, ln1_w_.value.data(), ln1_b_.value.data(), rq, s.q_dim, eps, c.x_ln.data(),
                          c.mean1.data(), c.rstd1.data());
  const T* kv_in = c.x_ln.data();
  int kv_dim = s.q_dim;
  if (s.is_cross) {
    resize(c.kv_ln, size_t(rk) * s.kv_dim);
    resize(c.mean2, rk);
    resize(c.rstd2, rk);
    ref::layer_norm_forward(kv, ln2_w_.value.data(), ln2_b_.value.data(), rk, s.kv_dim, eps, c.kv_ln.data(),
                            c.mean2.data(), c.rstd2.data());
    kv_in = c.kv_ln.data();
    kv_dim = s.kv_dim;
  }
  resize(c.q, size_t(rq) * s.qk_channels);
  linear_forward(c.x_ln.data(), q_w_.value.data(), q_b_.value.data(), rq, s.qk_channels, s.q_dim, c.q.data());
  resize(c.probs, size_t(batch) * s.heads * nq * nk);
  resize(c.ctx, size_t(rq) * s.v_channels);
  c.folded = uses_query_folding(nq);
  if (c.folded) {
    attend_folded(c);
  } else {
    resize(c.k, size_t(rk) * s.qk_channels);
    resize(c.v, size_t(rk) * s.v_channels);
    linear_forward(kv_in, k_w_.value.data(), k_b_.value.data(), rk, s.qk_channels, kv_dim, c.k.data());
    linear_forward(kv_in, v_w_.value.data(), v_b_.value.data(), rk, s.v_channels, kv_dim, c.v.data());
    ref::AttentionShape as{batch,
                           s.heads,
                           nq,
                           nk,
                           s.qk_channels / s.heads,
                           s.v_channels / s.heads,
                           1.0 / std::sqrt(double(s.qk_channels / s.heads))};
    ref::attention_forward(as, c.q.data(), c.k.data(), c.v.data(), c.ctx.data(), c.probs.data());
  }

  resize(c.a, size_t(rq) * s.q_dim);
  linear_forward(c.ctx.data(), o_w_.value.data(), o_b_.value.data(), rq, s.q_dim, s.v_channels, c.a.data());
  if (s.query_residual)
    for (size_t i = 0; i < c.a.size(); ++i) c.a[i] += x[i];

  resize(c.h_ln, size_t(rq) * s.q_dim);
  resize(c.mean3, rq);
  resize(c.rstd3, rq);
  ref::layer_norm_forward(c.a.data(), ln3_w_.value.data(), ln3_b_.value.data(), rq, s.q_dim, eps,
                          c.h_ln.data(), c.mean3.data(), c.rstd3.data());
  resize(c.h1, size_t(rq) * s.mlp_hidden);
  resize(c.g, size_t(rq) * s.mlp_hidden);
  linear_forward(c.h_ln.data(), m1_w_.value.data(), m1_b_.value.data(), rq, s.mlp_hidden, s.q_dim,
                 c.h1.data());
  ref::gelu_forward(c.h1.data(), c.h1.size(), c.g.data());
  linear_forward(c.g.data(), m2_w_.value.data(), m2_b_.value.data(), rq, s.q_dim, s.mlp_hidden, out);
  for (size_t i = 0; i < c.a.size(); ++i) out[i] += c.a[i];
}

template <class T>
void PerceiverLayer<T>::backward(const Cache& c, const T* dout, T* dx, T* dkv) {
  const LayerShape& s = shape_;
  const int rq = c.batch * c.nq, rk = c.batch * c.nk;
  const int kv_dim = s.is_cross ? s.kv_dim : s.q_dim;

  // out = a + mlp(a)
  std::vector<T> da(dout, dout + size_t(rq) * s.q_dim);
  std::vector<T> dg(size_t(rq) * s.mlp_hidden, T(0)), dh1(size_t(rq) * s.mlp_hidden, T(0));
  linear_backward(c.g.data(), m2_w_.value.data(), dout, rq, s.q_dim, s.mlp_hidden, dg.data(),
                  m2_w_.grad.data(), m2_b_.grad.data());
  ref::gelu_backward(c.h1.data(), dg.data(), dg.size(), dh1.data());
  std::vector<T> dh_ln(size_t(rq) * s.q_dim, T(0));
  linear_backward(c.h_ln.data(), m1_w_.value.data(), dh1.data(), rq, s.mlp_hidden, s.q_dim, dh_ln.data(),
                  m1_w_.grad.data(), m1_b_.grad.data());
  ref::layer_norm_backward(c.a.data(), ln3_w_.value.data(), c.mean3.data(), c.rstd3.data(), dh_ln.data(), rq,
                           s.q_dim, da.data(), ln3_w_.grad.data(), ln3_b_.grad.data());

  // a = Wo ctx + bo (+ x)
  if (s.query_residual && dx)
    for (size_t i = 0; i < da.size(); ++i) dx[i] += da[i];
  std::vector<T> dctx(size_t(rq) * s.v_channels, T(0));
  linear_backward(c.ctx.data(), o_w_.value.data(), da.data(), rq, s.q_dim, s.v_channels, dctx.data(),
                  o_w_.grad.data(), o_b_.grad.data());

  std::vector<T> dq(c.q.size(), T(0)), dx_ln(size_t(rq) * s.q_dim, T(0));
  if (c.folded) {
    std::vector<T> dkv_ln(size_t(rk) * kv_dim, T(0));
    attend_folded_backward(c, dctx.data(), dq.data(), dkv_ln.data());
    linear_backward(c.x_ln.data(), q_w_.value.data(), dq.data(), rq, s.qk_channels, s.q_dim, dx_ln.data(),
                    q_w_.grad.data(), q_b_.grad.data());
    ref::layer_norm_backward(c.kv, ln2_w_.value.data(), c.mean2.data(), c.rstd2.data(), dkv_ln.data(), rk,
                             kv_dim, dkv, ln2_w_.grad.data(), ln2_b_.grad.data());
    ref::layer_norm_backward(c.x, ln1_w_.value.data(), c.mean1.data(), c.rstd1.data(), dx_ln.data(), rq,
                             s.q_dim, dx, ln1_w_.grad.data(), ln1_b_.grad.data());
    return;
  }
  ref::AttentionShape as{c.batch,
                         s.heads,
                         c.nq,
                         c.nk,
                         s.qk_channels / s.heads,
                         s.v_channels / s.heads,
                         1.0 / std::sqrt(double(s.qk_channels / s.heads))};
  std::vector<T> dk(c.k.size(), T(0)), dv(c.v.size(), T(0));
  ref::attention_backward(as, c.q.data(), c.k.data(), c.v.data(), c.probs.data(), dctx.data(), dq.data(),
                          dk.data(), dv.data());

  linear_backward(c.x_ln.data(), q_w_.value.data(), dq.data(), rq, s.qk_channels, s.q_dim, dx_ln.data(),
                  q_w_.grad.data(), q_b_.grad.data());
  if (s.is_cross) {
    std::vector<T> dkv_ln(size_t(rk) * kv_dim, T(0));
    linear_backward(c.kv_ln.data(), k_w_.value.data(), dk.data(), rk, s.qk_channels, kv_dim, dkv_ln.data(),
                    k_w_.grad.data(), k_b_.grad.data());
    linear_backward(c.kv_ln.data(), v_w_.value.data(), dv.data(), rk, s.v_channels, kv_dim, dkv_ln.data(),
                    v_w_.grad.data(), v_b_.grad.data());
    ref::layer_norm_backward(c.kv, ln2_w_.value.data(), c.mean2.data(), c.rstd2.data(), dkv_ln.data(), rk,
                             kv_dim, dkv, ln2_w_.grad.data(), ln2_b_.grad.data());
  } else {
    linear_backward(c.x_ln.data(), k_w_.value.data(), dk.data(), rk, s.qk_channels, kv_dim, dx_ln.data(),
                    k_w_.grad.data(), k_b_.grad.data());
    linear_backward(c.x_ln.data(), v_w_.value.data(), dv.data(), rk, s.v_channels, kv_dim, dx_ln.data(),
                    v_w_.grad.data(), v_b_.grad.data());
  }
  ref::layer_norm_backward(c.x, ln1_w_.value.data(), c.mean1.data(), c.rstd1.data(), dx_ln.data(), rq,
                           s.q_dim, dx, ln1_w_.grad.data(), ln1_b_.grad.data());
}

// Folded cross-attention (see uses_query_folding). Per (b, h, i): qt = Wk_h^T q_h, s_j = scale qt . n_j,
// p = softmax(s), nbar = sum_j p_j n_j, ctx_h = Wv_h nbar + bv_h. Parallel over the batch only.
template <class T>
void PerceiverLayer<T>::attend_folded(Cache& c) const {
  const LayerShape& s = shape_;
  const int H = s.heads, dqk = s.qk_channels / H, dv = s.v_channels / H, Dkv = s.kv_dim, nq = c.nq, nk = c.nk;
  const T scale = T(1.0 / std::sqrt(double(dqk)));
  resize(c.qt, size_t(c.batch) * H * nq * Dkv);
  resize(c.nbar, c.qt.size());
  const T* Wk = k_w_.value.data();
  const T* Wv = v_w_.value.data();
  const bool parallel = double(c.batch) * H * nq * (nk + dqk + dv) * Dkv >= kParallelWork;
#pragma omp parallel for schedule(static) if (parallel)
  for (int b = 0; b < c.batch; ++b)
    for (int h = 0; h < H; ++h)
      for (int i = 0; i < nq; ++i) {
        const size_t bhi = (size_t(b) * H + h) * nq + i;
        const T* q = &c.q[(size_t(b) * nq + i) * s.qk_channels + size_t(h) * dqk];
        T* qt = &c.qt[bhi * Dkv];
        std::fill(qt, qt + Dkv, T(0));
        for (int r = 0; r < dqk; ++r) {
          const T* w = Wk + size_t(h * dqk + r) * Dkv;
          for (int d = 0; d < Dkv; ++d) qt[d] += q[r] * w[d];
        }
        T* p = &c.probs[bhi * nk];
        T max_s = -INFINITY;
        for (int j = 0; j < nk; ++j) {
          const T* n = &c.kv_ln[(size_t(b) * nk + j) * Dkv];
          T dot = 0;
          for (int d = 0; d < Dkv; ++d) dot += qt[d] * n[d];
          p[j] = dot * scale;
          max_s = std::max(max_s, p[j]);
        }
        T sum = 0;
        for (int j = 0; j < nk; ++j) sum += (p[j] = std::exp(p[j] - max_s));
        for (int j = 0; j < nk; ++j) p[j] /= sum;
        T* nbar = &c.nbar[bhi * Dkv];
        std::fill(nbar, nbar + Dkv, T(0));
        for (int j = 0; j < nk; ++j) {
          const T* n = &c.kv_ln[(size_t(b) * nk + j) * Dkv];
          for (int d = 0; d < Dkv; ++d) nbar[d] += p[j] * n[d];
        }
        T* ctx = &c.ctx[(size_t(b) * nq + i) * s.v_channels + size_t(h) * dv];
        for (int e = 0; e < dv; ++e) {
          const T* w = Wv + size_t(h * dv + e) * Dkv;
          T acc = 0;
          for (int d = 0; d < Dkv; ++d) acc += w[d] * nbar[d];
          ctx[e] = acc + v_b_.value[h * dv + e];
        }
      }
}

// dctx: [B*nq, v]. Adds into dq [B*nq, qk], dkv_ln [B*nk, kv_dim], Wk/Wv/bv grads (bk's gradient is zero).
template <class T>
void PerceiverLayer<T>::attend_folded_backward(const Cache& c, const T* dctx, T* dq, T* dkv_ln) {
  const LayerShape& s = shape_;
  const int H = s.heads, dqk = s.qk_channels / H, dv = s.v_channels / H, Dkv = s.kv_dim, nq = c.nq, nk = c.nk;
  const T scale = T(1.0 / std::sqrt(double(dqk)));
  const T* Wk = k_w_.value.data();
  const T* Wv = v_w_.value.data();
  std::vector<T> dqt(c.qt.size());  // d loss / d qt, per (b, h, i)
  const bool parallel = double(c.batch) * H * nq * (nk + dqk + dv) * Dkv >= kParallelWork;
#pragma omp parallel if (parallel)
  {
    std::vector<T> dnbar(Dkv), ds(nk);
#pragma omp for schedule(static)
    for (int b = 0; b < c.batch; ++b)
      for (int h = 0; h < H; ++h)
        for (int i = 0; i < nq; ++i) {
          const size_t bhi = (size_t(b) * H + h) * nq + i;
          const T* dctx_h = dctx + (size_t(b) * nq + i) * s.v_channels + size_t(h) * dv;
          std::fill(dnbar.begin(), dnbar.end(), T(0));
          for (int e = 0; e < dv; ++e) {
            const T* w = Wv + size_t(h * dv + e) * Dkv;
            for (int d = 0; d < Dkv; ++d) dnbar[d] += dctx_h[e] * w[d];
          }
          const T* p = &c.probs[bhi * nk];
          const T* qt = &c.qt[bhi * Dkv];
          T dot_pdp = 0;
          for (int j = 0; j < nk; ++j) {
            const T* n = &c.kv_ln[(size_t(b) * nk + j) * Dkv];
            T dp = 0;
            for (int d = 0; d < Dkv; ++d) dp += dnbar[d] * n[d];
            ds[j] = dp;
            dot_pdp += p[j] * dp;
          }
          T* g = &dqt[bhi * Dkv];
          std::fill(g, g + Dkv, T(0));
          for (int j = 0; j < nk; ++j) {
            ds[j] = p[j] * (ds[j] - dot_pdp) * scale;
            const T* n = &c.kv_ln[(size_t(b) * nk + j) * Dkv];
            T* dn = dkv_ln + (size_t(b) * nk + j) * Dkv;
            for (int d = 0; d < Dkv; ++d) {
              g[d] += ds[j] * n[d];
              dn[d] += p[j] * dnbar[d] + ds[j] * qt[d];
            }
          }
          T* dq_h = dq + (size_t(b) * nq + i) * s.qk_channels + size_t(h) * dqk;
          for (int r = 0; r < dqk; ++r) {
            const T* w = Wk + size_t(h * dqk + r) * Dkv;
            T acc = 0;
            for (int d = 0; d < Dkv; ++d) acc += w[d] * g[d];
            dq_h[r] += acc;
          }
        }
  }
  // Weight gradients: sums over (b, i) in a fixed order; rows of the weight in parallel.
  const int rows = c.batch * nq;
#pragma omp parallel for schedule(static) if (parallel)
  for (int r = 0; r < s.qk_channels; ++r) {
    const int h = r / dqk;
    T* gw = &k_w_.grad[size_t(r) * Dkv];
    for (int bi = 0; bi < rows; ++bi) {
      const int b = bi / nq, i = bi % nq;
      const T qr = c.q[size_t(bi) * s.qk_channels + r];
      const T* g = &dqt[((size_t(b) * H + h) * nq + i) * Dkv];
      for (int d = 0; d < Dkv; ++d) gw[d] += qr * g[d];
    }
  }
#pragma omp parallel for schedule(static) if (parallel)
  for (int r = 0; r < s.v_channels; ++r) {
    const int h = r / dv;
    T* gw = &v_w_.grad[size_t(r) * Dkv];
    T gb = 0;
    for (int bi = 0; bi < rows; ++bi) {
      const int b = bi / nq, i = bi % nq;
      const T g = dctx[size_t(bi) * s.v_channels + r];
      const T* nbar = &c.nbar[((size_t(b) * H + h) * nq + i) * Dkv];
      for (int d = 0; d < Dkv; ++d) gw[d] += g * nbar[d];
      gb += g;
    }
    v_b_.grad[r] += gb;
  }
}

template class PerceiverLayer<float>;
template class PerceiverLayer<double>;

}  // namespace perceiver::train
