// The compute interface the model is written against. A backend implements it; the model never knows which.
//   reference: plain loops, the readable definition of every op (src/kernels/reference.cpp)
//   fast:      oneDNN GEMMs, fused attention, run-time ISA dispatch (src/kernels/fast_*.cpp)
// All tensors are row-major float32; "ld" arguments are row strides in elements.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "perceiver/perceiver.h"

namespace perceiver {

// A linear layer's weights in whatever layout the backend's GEMM wants, packed once at load time.
class PackedLinear {
 public:
  virtual ~PackedLinear() = default;
  int in_features = 0;          // K
  int out_features = 0;         // N
  bool reads_in_place = false;  // the backend reads the caller's weights (pack_linear's in_place) directly
};

enum class Activation { none, gelu };  // gelu is the exact erf form: 0.5 x (1 + erf(x / sqrt 2))

// Multi-head scaled dot-product attention, heads split as contiguous channel blocks.
//   q:   [batch, nq, heads * dqk]   (row stride ldq)
//   k:   [batch, nk, heads * dqk]   (row stride ldk)
//   v:   [batch, nk, heads * dv]    (row stride ldv)
//   out: [batch, nq, heads * dv]    (row stride ldo)
//   probs (optional, for tests/debugging): [batch, heads, nq, nk] softmax probabilities.
struct AttentionArgs {
  const float* q = nullptr;
  const float* k = nullptr;
  const float* v = nullptr;
  float* out = nullptr;
  float* probs = nullptr;
  int batch = 1, heads = 1, nq = 0, nk = 0, dqk = 0, dv = 0;
  long ldq = 0, ldk = 0, ldv = 0, ldo = 0;
  float scale = 1.0f;  // applied to q.k after the dot product (as HF divides the scores)
  // bf16: q, k, v and the unnormalised probabilities exp(s - max) enter the two products as bf16, with fp32
  // accumulation; the softmax itself (max, exp, sum, the final 1/sum) stays fp32. probs are always fp32.
  Precision precision = Precision::fp32;
};

// One block of output rows of a linear layer: weight [rows, in_features] (PyTorch layout), bias [rows] or
// nullptr. A layer may stack several (the self-attention's query, key and value projections).
struct LinearPart {
  const float* weight = nullptr;
  const float* bias = nullptr;
  int rows = 0;
};

// A backend is two things: the packer of weights (pack_linear; what it packs is immutable and may be shared
// by any number of threads) and an executor of ops, which owns mutable per-call state (scratch buffers,
// primitive caches, streams). One Backend object executes on one thread at a time; clone() makes another
// executor of the same kind and thread count for another thread, able to run what this one packed.
class Backend {
 public:
  virtual ~Backend() = default;
  virtual std::string name() const = 0;
  // A fresh executor for another thread: same kernels and thread count, its own scratch, no shared mutable
  // state; it runs every PackedLinear this backend (or any of its clones) made.
  virtual std::unique_ptr<Backend> clone() const = 0;
  virtual int threads() const = 0;

  // The layer whose weight is the parts stacked by rows ([sum of rows, in_features]) and whose bias is theirs
  // stacked (a part without bias counts as zeros). in_place: the weights stay valid and unchanged as long as
  // the result lives (a mapped weights file), so the backend may read them where they are instead of copying
  // (the fast backend does for one fp32 part). Biases are always copied.
  virtual std::unique_ptr<PackedLinear> pack_linear(const std::vector<LinearPart>& parts, int in_features,
                                                    Precision precision, bool in_place) = 0;
  // Whether pack_linear(..., in_place = true) reads the weights in place at this precision.
  virtual bool reads_in_place(Precision) const { return false; }
  // One part: weight [out_features, in_features], bias [out_features] or nullptr.
  std::unique_ptr<PackedLinear> pack_linear(const float* weight, const float* bias, int out_features,
                                            int in_features, Precision precision, bool in_place = false) {
    return pack_linear(std::vector<LinearPart>{{weight, bias, out_features}}, in_features, precision,
                       in_place);
  }

  // y[m, :] = act(x[m, :] W^T + b) + residual[m, :]   for m < rows.
  // x: [rows, K] (row stride ldx), y: [rows, N] (row stride ldy), residual: [rows, N] with stride ldy or
  // nullptr. y may alias residual (in-place residual add); y must not alias x.
  virtual void linear(const PackedLinear& w, const float* x, long ldx, int rows, float* y, long ldy,
                      Activation act, const float* residual) = 0;

  // y[m, :] = (x[m, :] - mean) / sqrt(var + eps) * gamma + beta, biased variance. y may alias x.
  virtual void layer_norm(const float* x, int rows, int cols, const float* gamma, const float* beta,
                          float eps, float* y) = 0;

  virtual void attention(const AttentionArgs& args) = 0;

  // Image ops of the conv stem, activations channels-last: plain loops over threads() (image_ops.cpp) for
  // every backend unless one overrides them.
  // im2col of a zero-padded k x k, stride-s convolution for output rows [row0, row0 + rows) of the
  // batch-stacked output (row r = b * out_h + y): col [rows * out_w, channels * k * k], column c * k*k + ky * k
  // + kx (PyTorch's OIHW weight flattened). image: [batch, channels, height, width].
  virtual void im2col(const float* image, int channels, int height, int width, int kernel, int stride, int pad,
                      int out_h, int out_w, int row0, int rows, float* col);
  // x[t, c] = max(0, x[t, c] * scale[c] + shift[c]) for t < tokens: eval-mode BatchNorm folded, then ReLU.
  virtual void scale_shift_relu(float* x, long tokens, int channels, const float* scale, const float* shift);
  // k x k, stride-s max-pool without padding. x: [batch, height, width, channels]; out: token t = y * out_w + x
  // of image b at out + (b * out_h * out_w + t) * out_ld, `channels` floats (out_ld >= channels).
  virtual void max_pool(const float* x, int batch, int height, int width, int channels, int kernel, int stride,
                        float* out, long out_ld);
};

// threads <= 0: use every core the process may run on.
std::unique_ptr<Backend> make_reference_backend(int threads);
// The fast backend when it is compiled in and the CPU supports it, else the reference one.
std::unique_ptr<Backend> make_best_backend(int threads);

}  // namespace perceiver
