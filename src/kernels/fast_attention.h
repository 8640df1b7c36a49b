// Fused multi-head attention in fp32 for CPUs with AVX-512, hand-written (see fast_attention.cpp for the
// scheme). The fast backend uses it for fp32 when fast::use_avx512(); bf16 and other CPUs use oneDNN tiles.
#pragma once

#include <vector>

#include "kernels/kernels.h"
#include "kernels/scratch.h"

namespace perceiver::fast {

class AttentionFp32 {
 public:
  // Same contract as Backend::attention (a.precision is ignored: fp32). Runs on `threads` OpenMP threads.
  // Buffers grow to the largest shape seen and are reused: no allocation for a shape seen before.
  void run(const AttentionArgs& a, int threads);

 private:
  Scratch packed_;                   // K blocks and V^T blocks of every (batch, head)
  std::vector<Scratch> per_thread_;  // Q^T panel, S^T / P^T panel, O^T panel
};

}  // namespace perceiver::fast
