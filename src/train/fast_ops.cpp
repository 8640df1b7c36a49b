#include "train/fast_ops.h"

#include <omp.h>

#include <algorithm>
#include <cstring>
#include <vector>

namespace perceiver::train::fast {
namespace {

// Below this many multiply-adds a kernel runs on the calling thread: waking a team costs more than it saves,
// and much more on a loaded machine where a descheduled thread stalls every barrier.
constexpr double kParallelWork = 4e6;

typedef float v4 __attribute__((vector_size(16)));

inline v4 load4(const float* p) {
  v4 v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
inline void store4(float* p, v4 v) { std::memcpy(p, &v, sizeof v); }

// Rows [m0, m0 + R) x columns [n0, n0 + 8): R x 8 accumulators in registers, k ascending.
template <int R>
inline void block_r8(int m0, int n0, int K, const float* A, long lda, const float* B, long ldb, float* C,
                     long ldc, bool accumulate) {
  v4 acc[R][2] = {};
  for (int k = 0; k < K; ++k) {
    const v4 b0 = load4(B + long(k) * ldb + n0), b1 = load4(B + long(k) * ldb + n0 + 4);
    for (int r = 0; r < R; ++r) {
      const float a = A[long(m0 + r) * lda + k];
      acc[r][0] += a * b0;
      acc[r][1] += a * b1;
    }
  }
  for (int r = 0; r < R; ++r) {
    float* c = C + long(m0 + r) * ldc + n0;
    if (accumulate) {
      store4(c, load4(c) + acc[r][0]);
      store4(c + 4, load4(c + 4) + acc[r][1]);
    } else {
      store4(c, acc[r][0]);
      store4(c + 4, acc[r][1]);
    }
  }
}

}  // namespace

void gemm_nn(int M, int N, int K, const float* A, long lda, const float* B, long ldb, float* C, long ldc,
             bool accumulate) {
  constexpr int MB = 4;
  const int blocks = (M + MB - 1) / MB;
#pragma omp parallel for schedule(static) if (double(M) * N * K >= kParallelWork)
  for (int blk = 0; blk < blocks; ++blk) {
    const int m0 = blk * MB, rows = std::min(MB, M - m0);
    int n0 = 0;
    for (; n0 + 8 <= N; n0 += 8) {
      switch (rows) {
        case 4:
          block_r8<4>(m0, n0, K, A, lda, B, ldb, C, ldc, accumulate);
          break;
        case 3:
          block_r8<3>(m0, n0, K, A, lda, B, ldb, C, ldc, accumulate);
          break;
        case 2:
          block_r8<2>(m0, n0, K, A, lda, B, ldb, C, ldc, accumulate);
          break;
        default:
          block_r8<1>(m0, n0, K, A, lda, B, ldb, C, ldc, accumulate);
          break;
      }
    }
    for (int m = m0; m < m0 + rows; ++m)
      for (int n = n0; n < N; ++n) {
        float acc = 0;
        for (int k = 0; k < K; ++k) acc += A[long(m) * lda + k] * B[long(k) * ldb + n];
        float& c = C[long(m) * ldc + n];
        c = accumulate ? c + acc : acc;
      }
  }
}

void transpose(const float* in, int rows, int cols, float* out) {
  constexpr int T = 32;
#pragma omp parallel for schedule(static) if (double(rows) * cols >= 16 * kParallelWork)
  for (int c0 = 0; c0 < cols; c0 += T)
    for (int r0 = 0; r0 < rows; r0 += T)
      for (int c = c0; c < std::min(cols, c0 + T); ++c)
        for (int r = r0; r < std::min(rows, r0 + T); ++r)
          out[size_t(c) * rows + r] = in[size_t(r) * cols + c];
}

void linear_forward(const float* x, const float* W, const float* b, int M, int N, int K, float* y) {
  std::vector<float> wt(size_t(N) * K);
  transpose(W, N, K, wt.data());  // [K, N]
  gemm_nn(M, N, K, x, K, wt.data(), N, y, N, false);
  if (b)
    for (int m = 0; m < M; ++m)
      for (int n = 0; n < N; ++n) y[size_t(m) * N + n] += b[n];
}

void linear_backward(const float* x, const float* W, const float* dy, int M, int N, int K, float* dx,
                     float* dW, float* db) {
  if (dx) gemm_nn(M, K, N, dy, N, W, K, dx, K, true);
  if (dW) {
    std::vector<float> dyt(size_t(N) * M);
    transpose(dy, M, N, dyt.data());  // [N, M]
    gemm_nn(N, K, M, dyt.data(), M, x, K, dW, K, true);
  }
  if (db) {
    std::vector<float> acc(N, 0.0f);
    for (int m = 0; m < M; ++m)
      for (int n = 0; n < N; ++n) acc[n] += dy[size_t(m) * N + n];
    for (int n = 0; n < N; ++n) db[n] += acc[n];
  }
}

}  // namespace perceiver::train::fast
