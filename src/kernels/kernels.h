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

const char* precision_name(Precision precision);  // "fp32", "bf16"

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

class Backend {
 public:
  virtual ~Backend() = default;
  virtual std::string name() const = 0;

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
};

// threads <= 0: use every core the process may run on.
std::unique_ptr<Backend> make_reference_backend(int threads);
// The fast backend when it is compiled in and the CPU supports it, else the reference one.
std::unique_ptr<Backend> make_best_backend(int threads);

}  // namespace perceiver
