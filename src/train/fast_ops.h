// Float kernels for training, faster than the plain loops of ops.h but bit-for-bit the same arithmetic: every
// output element is summed over the same index in the same ascending order, starting from zero, and then
// added once (bias, or the existing value when accumulating). Work is split across OpenMP threads by output
// rows only, so results never depend on the thread count.
#pragma once

namespace perceiver::train::fast {

// C[m, n] = (or +=, when `accumulate`) sum_k A[m, k] B[k, n]. Row strides lda, ldb, ldc.
void gemm_nn(int M, int N, int K, const float* A, long lda, const float* B, long ldb, float* C, long ldc,
             bool accumulate);

// out[c, r] = in[r, c]; in: [rows, cols].
void transpose(const float* in, int rows, int cols, float* out);

// As ref::linear_forward / ref::linear_backward (same results).
void linear_forward(const float* x, const float* W, const float* b, int M, int N, int K, float* y);
void linear_backward(const float* x, const float* W, const float* dy, int M, int N, int K, float* dx,
                     float* dW, float* db);

}  // namespace perceiver::train::fast
