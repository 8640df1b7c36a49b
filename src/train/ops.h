// Forward and backward of every op in a PerceiverLayer, as plain loops: the readable definition that the
// finite-difference and PyTorch tests check, and that the fast float kernels (fast_ops.h) must reproduce.
// Templates over float and double (double for the finite-difference checks). All tensors are row-major and
// contiguous. Convention: every backward ADDS into its gradient outputs (dx, dW, ...), so shared weights and
// residual branches accumulate; callers zero them first. A null gradient pointer means "not needed".
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <vector>

namespace perceiver::train::ref {

// y[m, n] = sum_k x[m, k] W[n, k] + b[n]      x: [M, K], W: [N, K] (PyTorch layout), b: [N] or null
template <class T>
void linear_forward(const T* x, const T* W, const T* b, int M, int N, int K, T* y) {
  for (int m = 0; m < M; ++m)
    for (int n = 0; n < N; ++n) {
      T acc = 0;
      for (int k = 0; k < K; ++k) acc += x[size_t(m) * K + k] * W[size_t(n) * K + k];
      y[size_t(m) * N + n] = acc + (b ? b[n] : T(0));
    }
}

// dx += dy W;  dW += dy^T x;  db += sum_m dy
template <class T>
void linear_backward(const T* x, const T* W, const T* dy, int M, int N, int K, T* dx, T* dW, T* db) {
  if (dx)
    for (int m = 0; m < M; ++m)
      for (int k = 0; k < K; ++k) {
        T acc = 0;
        for (int n = 0; n < N; ++n) acc += dy[size_t(m) * N + n] * W[size_t(n) * K + k];
        dx[size_t(m) * K + k] += acc;
      }
  if (dW)
    for (int n = 0; n < N; ++n)
      for (int k = 0; k < K; ++k) {
        T acc = 0;
        for (int m = 0; m < M; ++m) acc += dy[size_t(m) * N + n] * x[size_t(m) * K + k];
        dW[size_t(n) * K + k] += acc;
      }
  if (db)
    for (int n = 0; n < N; ++n) {
      T acc = 0;
      for (int m = 0; m < M; ++m) acc += dy[size_t(m) * N + n];
      db[n] += acc;
    }
}

// LayerNorm over the last axis, biased variance: y = (x - mean) * rstd * gamma + beta, rstd = 1/sqrt(var +
// eps). mean, rstd: [M], kept for the backward pass.
template <class T>
void layer_norm_forward(const T* x, const T* gamma, const T* beta, int M, int C, T eps, T* y, T* mean,
                        T* rstd) {
  for (int m = 0; m < M; ++m) {
    const T* xr = x + size_t(m) * C;
    T mu = 0;
    for (int c = 0; c < C; ++c) mu += xr[c];
    mu /= C;
    T var = 0;
    for (int c = 0; c < C; ++c) var += (xr[c] - mu) * (xr[c] - mu);
    var /= C;
    const T r = T(1) / std::sqrt(var + eps);
    mean[m] = mu;
    rstd[m] = r;
    for (int c = 0; c < C; ++c) y[size_t(m) * C + c] = (xr[c] - mu) * r * gamma[c] + beta[c];
  }
}

// xhat = (x - mean) rstd;  dgamma += sum_m dy xhat;  dbeta += sum_m dy;
// dx += rstd (g - mean_c(g) - xhat mean_c(g xhat))  with g = dy gamma.
template <class T>
void layer_norm_backward(const T* x, const T* gamma, const T* mean, const T* rstd, const T* dy, int M, int C,
                         T* dx, T* dgamma, T* dbeta) {
  for (int m = 0; m < M; ++m) {
    const T* xr = x + size_t(m) * C;
    const T* dyr = dy + size_t(m) * C;
    T sum_g = 0, sum_gx = 0;
    for (int c = 0; c < C; ++c) {
      const T xhat = (xr[c] - mean[m]) * rstd[m];
      const T g = dyr[c] * gamma[c];
      sum_g += g;
      sum_gx += g * xhat;
      if (dgamma) dgamma[c] += dyr[c] * xhat;
      if (dbeta) dbeta[c] += dyr[c];
    }
    if (!dx) continue;
    const T mean_g = sum_g / C, mean_gx = sum_gx / C;
    for (int c = 0; c < C; ++c) {
      const T xhat = (xr[c] - mean[m]) * rstd[m];
      dx[size_t(m) * C + c] += rstd[m] * (dyr[c] * gamma[c] - mean_g - xhat * mean_gx);
    }
  }
}

// Exact GELU (erf form) and its derivative.
template <class T>
T gelu(T x) {
  return T(0.5) * x * (T(1) + std::erf(x * T(0.70710678118654752440)));
}
template <class T>
T gelu_grad(T x) {
  return T(0.5) * (T(1) + std::erf(x * T(0.70710678118654752440))) +
         x * std::exp(T(-0.5) * x * x) * T(0.39894228040143267794);
}

template <class T>
void gelu_forward(const T* x, size_t n, T* y) {
  for (size_t i = 0; i < n; ++i) y[i] = gelu(x[i]);
}
// dx += dy gelu'(x)
template <class T>
void gelu_backward(const T* x, const T* dy, size_t n, T* dx) {
  for (size_t i = 0; i < n; ++i) dx[i] += dy[i] * gelu_grad(x[i]);
}

// Multi-head scaled dot-product attention, heads as contiguous channel blocks (as HF splits them).
//   q: [B, nq, H*dqk], k: [B, nk, H*dqk], v: [B, nk, H*dv] -> out: [B, nq, H*dv]; probs: [B, H, nq, nk]
//   (kept).
struct AttentionShape {
  int batch = 1, heads = 1, nq = 0, nk = 0, dqk = 0, dv = 0;
  double scale = 1.0;  // multiplies q.k
};

template <class T>
void attention_forward(const AttentionShape& s, const T* q, const T* k, const T* v, T* out, T* probs) {
  const int H = s.heads, QK = s.heads * s.dqk, V = s.heads * s.dv;
  for (int b = 0; b < s.batch; ++b)
    for (int h = 0; h < H; ++h)
      for (int i = 0; i < s.nq; ++i) {
        T* p = probs + ((size_t(b) * H + h) * s.nq + i) * s.nk;
        const T* qi = q + (size_t(b) * s.nq + i) * QK + size_t(h) * s.dqk;
        T max_s = -INFINITY;
        for (int j = 0; j < s.nk; ++j) {
          const T* kj = k + (size_t(b) * s.nk + j) * QK + size_t(h) * s.dqk;
          T dot = 0;
          for (int d = 0; d < s.dqk; ++d) dot += qi[d] * kj[d];
          p[j] = dot * T(s.scale);
          max_s = std::max(max_s, p[j]);
        }
        T sum = 0;
        for (int j = 0; j < s.nk; ++j) sum += (p[j] = std::exp(p[j] - max_s));
        for (int j = 0; j < s.nk; ++j) p[j] /= sum;
        T* oi = out + (size_t(b) * s.nq + i) * V + size_t(h) * s.dv;
        for (int d = 0; d < s.dv; ++d) {
          T acc = 0;
          for (int j = 0; j < s.nk; ++j) acc += p[j] * v[(size_t(b) * s.nk + j) * V + size_t(h) * s.dv + d];
          oi[d] = acc;
        }
      }
}

// dP_ij = dout_i . v_j;  dS_ij = P_ij (dP_ij - sum_j' P_ij' dP_ij');
// dq_i += scale sum_j dS_ij k_j;  dk_j += scale sum_i dS_ij q_i;  dv_j += sum_i P_ij dout_i.
template <class T>
void attention_backward(const AttentionShape& s, const T* q, const T* k, const T* v, const T* probs,
                        const T* dout, T* dq, T* dk, T* dv) {
  const int H = s.heads, QK = s.heads * s.dqk, V = s.heads * s.dv;
  std::vector<T> ds(s.nk);
  for (int b = 0; b < s.batch; ++b)
    for (int h = 0; h < H; ++h)
      for (int i = 0; i < s.nq; ++i) {
        const T* p = probs + ((size_t(b) * H + h) * s.nq + i) * s.nk;
        const T* doi = dout + (size_t(b) * s.nq + i) * V + size_t(h) * s.dv;
        T dot_pdp = 0;
        for (int j = 0; j < s.nk; ++j) {
          const T* vj = v + (size_t(b) * s.nk + j) * V + size_t(h) * s.dv;
          T dp = 0;
          for (int d = 0; d < s.dv; ++d) dp += doi[d] * vj[d];
          ds[j] = dp;
          dot_pdp += p[j] * dp;
        }
        for (int j = 0; j < s.nk; ++j) ds[j] = p[j] * (ds[j] - dot_pdp) * T(s.scale);
        const T* qi = q + (size_t(b) * s.nq + i) * QK + size_t(h) * s.dqk;
        for (int j = 0; j < s.nk; ++j) {
          const size_t kj = (size_t(b) * s.nk + j) * QK + size_t(h) * s.dqk;
          const size_t vj = (size_t(b) * s.nk + j) * V + size_t(h) * s.dv;
          if (dq)
            for (int d = 0; d < s.dqk; ++d)
              dq[(size_t(b) * s.nq + i) * QK + size_t(h) * s.dqk + d] += ds[j] * k[kj + d];
          if (dk)
            for (int d = 0; d < s.dqk; ++d) dk[kj + d] += ds[j] * qi[d];
          if (dv)
            for (int d = 0; d < s.dv; ++d) dv[vj + d] += p[j] * doi[d];
        }
      }
}

// Mean softmax cross-entropy over M rows of C logits; labels in [0, C). Returns the loss; dlogits (if not
// null) gets ADDED (softmax - onehot) / M.
template <class T>
T softmax_cross_entropy(const T* logits, const int* labels, int M, int C, T* dlogits) {
  T total = 0;
  for (int m = 0; m < M; ++m) {
    const T* z = logits + size_t(m) * C;
    const T max_z = *std::max_element(z, z + C);
    T sum = 0;
    for (int c = 0; c < C; ++c) sum += std::exp(z[c] - max_z);
    const T log_sum = std::log(sum) + max_z;
    total += log_sum - z[labels[m]];
    if (dlogits)
      for (int c = 0; c < C; ++c)
        dlogits[size_t(m) * C + c] += (std::exp(z[c] - log_sum) - (c == labels[m] ? T(1) : T(0))) / T(M);
  }
  return total / T(M);
}

}  // namespace perceiver::train::ref
