// Reference kernels: the plain, readable definition of every op the model uses. Double accumulation where it
// costs nothing in clarity, so this backend is the accuracy yardstick for the fast one.
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "kernels/int8_gemm.h"
#include "kernels/kernels.h"
#include "kernels/numerics.h"

namespace perceiver {

namespace {

class ReferenceLinear : public PackedLinear {
 public:
  std::vector<float> weight;  // [N, K], bf16-rounded when precision is bf16
  std::vector<float> bias;    // [N] or empty
  Precision precision = Precision::fp32;
  std::unique_ptr<int8::Int8Weights> int8;  // int8: quantised weights, run by the plain int8 kernel
};

class ReferenceBackend : public Backend {
 public:
  explicit ReferenceBackend(int threads) : threads_(threads > 0 ? threads : omp_get_num_procs()) {}
  std::string name() const override { return "reference"; }
  std::unique_ptr<Backend> clone() const override { return std::make_unique<ReferenceBackend>(threads_); }
  int threads() const override { return threads_; }

  using Backend::pack_linear;
  std::unique_ptr<PackedLinear> pack_linear(const std::vector<LinearPart>& parts, int in_features,
                                            Precision precision, bool /*in_place: always copies*/) override {
    auto w = std::make_unique<ReferenceLinear>();
    w->in_features = in_features;
    w->precision = precision;
    if (precision == Precision::int8) {
      for (const auto& p : parts) w->out_features += p.rows;
      w->int8 = std::make_unique<int8::Int8Weights>(parts, in_features, threads_);
      return w;
    }
    const bool any_bias = std::any_of(parts.begin(), parts.end(), [](const LinearPart& p) { return p.bias; });
    for (const auto& p : parts) {
      w->out_features += p.rows;
      w->weight.insert(w->weight.end(), p.weight, p.weight + size_t(p.rows) * in_features);
      if (any_bias)
        for (int i = 0; i < p.rows; ++i) w->bias.push_back(p.bias ? p.bias[i] : 0.0f);
    }
    if (precision == Precision::bf16)
      for (float& x : w->weight) x = round_to_bf16(x);
    return w;
  }

  // y = act(x W^T + b) + residual; bf16 mode rounds x to bf16 as the fast GEMM does, accumulates in fp32+.
  void linear(const PackedLinear& packed, const float* x, long ldx, int rows, float* y, long ldy,
              Activation act, const float* residual) override {
    const auto& w = static_cast<const ReferenceLinear&>(packed);
    if (w.int8) {  // int8_gemm.h: the plain int8 kernel, the definition the fast ones reproduce
      int8::linear(int8::Kernel::plain, *w.int8, x, ldx, rows, y, ldy, act == Activation::gelu, residual,
                   threads_, int8_scratch_);
      return;
    }
    const int n_out = w.out_features, k_in = w.in_features;
#pragma omp parallel num_threads(threads_)
    {
      std::vector<float> xrow(k_in);
#pragma omp for schedule(static)
      for (int m = 0; m < rows; ++m) {
        for (int k = 0; k < k_in; ++k)
          xrow[k] = w.precision == Precision::bf16 ? round_to_bf16(x[m * ldx + k]) : x[m * ldx + k];
        for (int n = 0; n < n_out; ++n) {
          const float* wrow = &w.weight[size_t(n) * k_in];
          double acc = 0;
          for (int k = 0; k < k_in; ++k) acc += double(xrow[k]) * double(wrow[k]);
          float v = static_cast<float>(acc) + (w.bias.empty() ? 0.0f : w.bias[n]);
          if (act == Activation::gelu) v = gelu_erf(v);
          if (residual) v += residual[m * ldy + n];
          y[m * ldy + n] = v;
        }
      }
    }
  }

  void layer_norm(const float* x, int rows, int cols, const float* gamma, const float* beta, float eps,
                  float* y) override {
#pragma omp parallel for num_threads(threads_) schedule(static)
    for (int m = 0; m < rows; ++m) {
      const float* xr = x + size_t(m) * cols;
      double mean = 0, var = 0;
      for (int c = 0; c < cols; ++c) mean += xr[c];
      mean /= cols;
      for (int c = 0; c < cols; ++c) var += (xr[c] - mean) * (xr[c] - mean);
      var /= cols;
      const double inv_std = 1.0 / std::sqrt(var + eps);
      float* yr = y + size_t(m) * cols;
      for (int c = 0; c < cols; ++c)
        yr[c] = static_cast<float>((xr[c] - mean) * inv_std) * gamma[c] + beta[c];
    }
  }

  // For each (batch, head, query): scores over all keys, softmax, weighted sum of values. In bf16 mode q, k,
  // v and the unnormalised probabilities are rounded to bf16 before their products, as the fast backend does.
  void attention(const AttentionArgs& a) override {
    const bool bf16 = a.precision == Precision::bf16;
    auto in = [bf16](float x) { return bf16 ? double(round_to_bf16(x)) : double(x); };
#pragma omp parallel num_threads(threads_)
    {
      std::vector<double> p(a.nk);
#pragma omp for collapse(3) schedule(static)
      for (int b = 0; b < a.batch; ++b)
        for (int h = 0; h < a.heads; ++h)
          for (int i = 0; i < a.nq; ++i) {
            const float* q = a.q + (long(b) * a.nq + i) * a.ldq + long(h) * a.dqk;
            double max_s = -INFINITY;
            for (int j = 0; j < a.nk; ++j) {
              const float* k = a.k + (long(b) * a.nk + j) * a.ldk + long(h) * a.dqk;
              double s = 0;
              for (int d = 0; d < a.dqk; ++d) s += in(q[d]) * in(k[d]);
              p[j] = s * a.scale;
              max_s = std::max(max_s, p[j]);
            }
            double sum = 0;
            for (int j = 0; j < a.nk; ++j) sum += (p[j] = std::exp(p[j] - max_s));
            if (a.probs) {
              float* pr = a.probs + ((long(b) * a.heads + h) * a.nq + i) * long(a.nk);
              for (int j = 0; j < a.nk; ++j) pr[j] = static_cast<float>(p[j] / sum);
            }
            if (bf16)
              for (int j = 0; j < a.nk; ++j) p[j] = round_to_bf16(static_cast<float>(p[j]));
            float* out = a.out + (long(b) * a.nq + i) * a.ldo + long(h) * a.dv;
            for (int d = 0; d < a.dv; ++d) {
              double acc = 0;
              for (int j = 0; j < a.nk; ++j)
                acc += p[j] * in(a.v[(long(b) * a.nk + j) * a.ldv + long(h) * a.dv + d]);
              out[d] = static_cast<float>(acc / sum);
            }
          }
    }
  }


 private:
  int threads_;
  Scratch int8_scratch_;  // quantised GEMM inputs of int8 layers
};

}  // namespace

std::unique_ptr<Backend> make_reference_backend(int threads) {
  return std::make_unique<ReferenceBackend>(threads);
}

}  // namespace perceiver
