// Hand-written AVX-512 fp32 GEMM for linear layers, y = x W^T + b (+ y): the fp32 path of the fast backend
// on AVX-512 CPUs. The plain reference is ReferenceBackend::linear (reference.cpp); tests compare the two.
//
// Why not oneDNN here: on the model's linears (512x1024x1024 and x3072), 2 threads, weights coming from
// memory as in the model, this kernel ran 4-9% faster than oneDNN 2.6's f32 matmul with weights it packed
// itself and 11-13% faster than with weights read in place, side by side (build/bin/bench_gemm --weight-sets
// 24, bench/README.md).
#pragma once

#include <algorithm>
#include <cstddef>
#include <vector>

#include "kernels/scratch.h"

namespace perceiver::fast {

// Cache blocking of gemm_f32, from this CPU's cache sizes (sysconf; defaults where it reports none).
struct GemmBlocking {
  int kc = 1024;             // most rows of K per block: a 6 x kc strip of x fills at most half of L1d
  int panels_per_block = 2;  // panels of W (kc x 64 floats each) that stay in L2 while row strips pass
};
const GemmBlocking& gemm_blocking();

// W [N, K] (PyTorch layout) packed for gemm_f32: K in blocks of up to kc_max rows; within a block, panels of
// 64 output columns (the last one narrower, padded with zeros to a multiple of 16), each panel [kc][width].
// The k-blocking does not change the results: every output sums its products in k order. Denormal weights
// and biases are packed as 0 (they would make the FMAs take microcode assists; their products are < 1e-33).
class GemmWeights {
 public:
  static constexpr int kPanel = 64;  // output columns per panel (4 zmm vectors)

  // weight_rows: the parts of W stacked by rows (pointers to [rows_i, K] row-major blocks); bias likewise,
  // nullptr entries are zeros. threads: for the packing loop. kc_max: 0 for gemm_blocking().kc.
  GemmWeights(const std::vector<const float*>& parts, const std::vector<int>& part_rows,
              const std::vector<const float*>& biases, int k, int threads, int kc_max = 0);

  int n() const { return n_; }
  int k() const { return k_; }
  int padded_n() const { return n_pad_; }
  int k_blocks() const { return static_cast<int>(k_begin_.size()) - 1; }
  int k_begin(int block) const { return k_begin_[block]; }
  // Panel p of k-block kb: [kc][width], width = min(64, padded_n - 64 p).
  const float* panel(int kb, int p) const {
    const int k0 = k_begin_[kb], kc = k_begin_[kb + 1] - k0;
    return data_.as<float>() + size_t(k0) * n_pad_ + size_t(kc) * kPanel * p;
  }
  // Floats per row of panel p.
  int panel_width(int p) const { return std::min(kPanel, n_pad_ - kPanel * p); }
  const float* bias() const { return has_bias_ ? bias_.as<float>() : nullptr; }  // [padded_n]
  size_t bytes() const { return sizeof(float) * (size_t(k_) * n_pad_ + (has_bias_ ? n_pad_ : 0)); }

 private:
  int n_ = 0, k_ = 0, n_pad_ = 0;
  bool has_bias_ = false;
  std::vector<int> k_begin_;  // k-block boundaries, k_blocks() + 1 entries
  Scratch data_, bias_;
};

// y[m, :N] = x[m, :K] W^T + bias (+ y[m, :N] when accumulate; else GELU of it when gelu), m < rows. x rows
// ldx apart, y rows ldy apart. scratch: the caller's, grown here when a residual GEMM with several k-blocks
// needs room for its partial sums (then the same shape allocates nothing again). Needs AVX-512
// (use_avx512()).
void gemm_f32(const GemmWeights& w, const float* x, long ldx, int rows, float* y, long ldy, bool accumulate,
              bool gelu, int threads, Scratch& scratch);

}  // namespace perceiver::fast
