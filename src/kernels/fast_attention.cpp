// Fused multi-head attention, fp32, AVX-512. Computed transposed, so that both products run one register
// tile kernel on packed operands and the softmax runs down columns, with no horizontal reductions:
//
//   per (batch, head), once:  K   packed as 14-key blocks        kp[nk/14][dqk][14]
//                             V^T packed as 14-channel blocks    vp[dv/14][nk][14]
//   per block of 32 queries:  Q^T                                qt[dqk][32]
//                             S^T = K Q^T                        st[nk][32]    (lane l = query l)
//                             P^T = exp(S^T * scale - column max), column sums
//                             O^T = V^T P^T                      ot[dv][32]
//                             out[query, head channels] = O^T column / column sum
//
// The 14 x 32 register tile keeps its 28 accumulators in zmm registers over the whole reduction (dqk for the
// scores, nk for the weighted sum), with one broadcast per row and two vector loads per step. A score panel
// is nk x 32 floats (64 KB for 512 keys, 380 KB for the 3025-pixel cross-attention): it stays in L2, and the
// full [nq, nk] score matrix is never formed.
//
// GCC 12's AVX-512 headers trip -Wuninitialized on their own _mm512_undefined_*() (GCC bug 105593).
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include "kernels/fast_attention.h"

#include <immintrin.h>
#include <omp.h>

#include <algorithm>
#include <cstring>

#include "kernels/avx512_math.h"
#include "kernels/avx512_tile.h"
#include "kernels/fast_kernels.h"

namespace perceiver::fast {
namespace {

using namespace avx512;
constexpr int kRows = kTileRows;    // keys (scores) or value channels (output) per register tile
constexpr int kLanes = kTileLanes;  // queries per register tile
// Fewer queries than this per (batch, head) (the classification decoder has one) skip the register tiles:
// packing the keys would cost more than the products.
constexpr int kFewQueries = 4;
// Sums over more keys than this (the 3025-pixel cross-attention's weighted sum and softmax denominator) are
// made of chunk sums, each from zero: one running fp32 sum over thousands of terms rounds every term at the
// total's size, and its relative error grows with the square root of their number.
constexpr int kKeyChunk = 512;

// Columns of st [n][32]: p = exp(s * scale - max_j(s_j * scale)) in place; returns the column sums in
// sum[32].
PCV_AVX512 void softmax_columns(float* st, int n, float scale, float* sum) {
  const __m512 vs = _mm512_set1_ps(scale);
  __m512 m_lo = _mm512_set1_ps(-__builtin_inff()), m_hi = m_lo;
  for (int j = 0; j < n; ++j) {
    m_lo = _mm512_max_ps(m_lo, _mm512_mul_ps(_mm512_loadu_ps(st + size_t(j) * kLanes), vs));
    m_hi = _mm512_max_ps(m_hi, _mm512_mul_ps(_mm512_loadu_ps(st + size_t(j) * kLanes + 16), vs));
  }
  __m512 s_lo = _mm512_setzero_ps(), s_hi = _mm512_setzero_ps();
  for (int j0 = 0; j0 < n; j0 += kKeyChunk) {
    __m512 c_lo = _mm512_setzero_ps(), c_hi = _mm512_setzero_ps();
    for (int j = j0; j < std::min(n, j0 + kKeyChunk); ++j) {
      float* row = st + size_t(j) * kLanes;
      const __m512 e_lo = avx512::exp512(_mm512_fmsub_ps(_mm512_loadu_ps(row), vs, m_lo));
      const __m512 e_hi = avx512::exp512(_mm512_fmsub_ps(_mm512_loadu_ps(row + 16), vs, m_hi));
      _mm512_storeu_ps(row, e_lo);
      _mm512_storeu_ps(row + 16, e_hi);
      c_lo = _mm512_add_ps(c_lo, e_lo);
      c_hi = _mm512_add_ps(c_hi, e_hi);
    }
    s_lo = _mm512_add_ps(s_lo, c_lo);
    s_hi = _mm512_add_ps(s_hi, c_hi);
  }
  _mm512_storeu_ps(sum, s_lo);
  _mm512_storeu_ps(sum + 16, s_hi);
}

size_t blocks(int n, int size) { return (size_t(n) + size - 1) / size; }

// sum_d x[d] y[d], d < n.
PCV_AVX512 float dot(const float* x, const float* y, int n) {
  __m512 acc = _mm512_setzero_ps();
  for (int d = 0; d < n; d += 16) {
    const __mmask16 m = avx512::tail_mask(std::min(16, n - d));
    acc = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, x + d), _mm512_maskz_loadu_ps(m, y + d), acc);
  }
  return _mm512_reduce_add_ps(acc);
}

// One query of one (batch, head), its keys and values read where they are (rows of K and V): scores as dot
// products, softmax, then the weighted sum of value rows. scores: [nk] scratch.
PCV_AVX512 void attend_one_query(const AttentionArgs& a, size_t b, size_t h, size_t i, float* scores) {
  const int nk = a.nk, dqk = a.dqk, dv = a.dv;
  const float* q = a.q + (b * a.nq + i) * a.ldq + h * dqk;
  for (int j = 0; j < nk; ++j) scores[j] = dot(q, a.k + (b * nk + j) * a.ldk + h * dqk, dqk);
  const float sum = exp_scaled_shifted_sum(scores, nk, a.scale, row_max_scaled(scores, nk, a.scale));
  // out = sum_j e_j v_j / sum, value rows in order (each row read once, sequentially)
  float* out = a.out + (b * a.nq + i) * a.ldo + h * dv;
  std::fill_n(out, dv, 0.0f);
  for (int j = 0; j < nk; ++j) {
    const float* v = a.v + (b * nk + j) * a.ldv + h * dv;
    const __m512 e = _mm512_set1_ps(scores[j]);
    for (int c = 0; c < dv; c += 16) {
      const __mmask16 m = avx512::tail_mask(std::min(16, dv - c));
      _mm512_mask_storeu_ps(
          out + c, m, _mm512_fmadd_ps(e, _mm512_maskz_loadu_ps(m, v + c), _mm512_maskz_loadu_ps(m, out + c)));
    }
  }
  const __m512 inv = _mm512_set1_ps(1.0f / sum);
  for (int c = 0; c < dv; c += 16) {
    const __mmask16 m = avx512::tail_mask(std::min(16, dv - c));
    _mm512_mask_storeu_ps(out + c, m, _mm512_mul_ps(_mm512_maskz_loadu_ps(m, out + c), inv));
  }
  if (a.probs) {
    float* p = a.probs + ((b * a.heads + h) * a.nq + i) * size_t(nk);
    for (int j = 0; j < nk; ++j) p[j] = scores[j] / sum;
  }
}

}  // namespace

void AttentionFp32::run(const AttentionArgs& a, int threads) {
  const int B = a.batch, H = a.heads, nq = a.nq, nk = a.nk, dqk = a.dqk, dv = a.dv;
  if (B <= 0 || H <= 0 || nq <= 0) return;
  if (nk <= 0 || dqk <= 0 || dv <= 0) {  // nothing to attend to (not produced by any model): zeros
    for (long r = 0; r < long(B) * nq; ++r)
      for (int h = 0; h < H; ++h) std::fill_n(a.out + r * a.ldo + long(h) * dv, std::max(dv, 0), 0.0f);
    return;
  }
  if (nq < kFewQueries) {  // packing K would cost more than the products: read K and V in place
    if (int(per_thread_.size()) < threads) per_thread_.resize(threads);
    for (int t = 0; t < threads; ++t) per_thread_[t].reserve(sizeof(float) * nk);
    const long tasks = long(B) * H * nq;
#pragma omp parallel for num_threads(int(std::min <long>(threads, tasks))) schedule(static)
    for (long task = 0; task < tasks; ++task)
      attend_one_query(a, size_t(task) / nq / H, size_t(task) / nq % H, size_t(task) % nq,
                       per_thread_[omp_get_thread_num()].as<float>());
    return;
  }
  const size_t key_blocks = blocks(nk, kRows), channel_blocks = blocks(dv, kRows),
               query_blocks = blocks(nq, kLanes);
  const size_t k_head = key_blocks * dqk * kRows;     // floats of one head's packed K
  const size_t v_head = channel_blocks * nk * kRows;  // floats of one head's packed V^T
  const size_t heads = size_t(B) * H;
  packed_.reserve(sizeof(float) * heads * (k_head + v_head));
  float* const kp = packed_.as<float>();
  float* const vp = kp + heads * k_head;

  const size_t qt_floats = size_t(dqk) * kLanes, st_floats = key_blocks * kRows * kLanes,
               ot_floats = channel_blocks * kRows * kLanes;
  if (int(per_thread_.size()) < threads) per_thread_.resize(threads);
  for (int t = 0; t < threads; ++t)
    per_thread_[t].reserve(sizeof(float) * (qt_floats + st_floats + ot_floats + kLanes));

#pragma omp parallel num_threads(threads)
  {
    // Pack K: block kb of head (b, h) holds keys [14 kb, 14 kb + 14) as lanes, dqk rows; missing keys are 0.
#pragma omp for schedule(static) nowait
    for (long u = 0; u < long(heads * key_blocks); ++u) {
      const size_t bh = size_t(u) / key_blocks, kb = size_t(u) % key_blocks;
      const size_t b = bh / H, h = bh % H;
      float* dst = kp + bh * k_head + kb * dqk * kRows;
      const int j0 = int(kb) * kRows, rows = std::min(kRows, nk - j0);
      const float* src = a.k + (b * nk + j0) * a.ldk + h * dqk;
      for (int d0 = 0; d0 < dqk; d0 += 16)
        transpose_block(src + d0, a.ldk, rows, std::min(16, dqk - d0), dst + size_t(d0) * kRows, kRows,
                        kRows);
    }
    // Pack V^T: block cb of head (b, h) holds channels [14 cb, 14 cb + 14) as lanes, one row per key.
#pragma omp for schedule(static)
    for (long u = 0; u < long(heads * channel_blocks); ++u) {
      const size_t bh = size_t(u) / channel_blocks, cb = size_t(u) % channel_blocks;
      const size_t b = bh / H, h = bh % H;
      float* dst = vp + bh * v_head + cb * nk * kRows;
      const int c0 = int(cb) * kRows, cols = std::min(kRows, dv - c0);
      copy_rows(a.v + b * nk * a.ldv + h * dv + c0, a.ldv, nk, cols, dst, kRows);
    }
    // (the barrier at the end of this loop publishes both packings)

    float* const qt = per_thread_[omp_get_thread_num()].as<float>();
    float* const st = qt + qt_floats;
    float* const ot = st + st_floats;
    float* const col_sum = ot + ot_floats;
#pragma omp for schedule(dynamic, 1)
    for (long task = 0; task < long(heads * query_blocks); ++task) {
      const size_t bh = size_t(task) / query_blocks, qb = size_t(task) % query_blocks;
      const size_t b = bh / H, h = bh % H;
      const int q0 = int(qb) * kLanes, queries = std::min(kLanes, nq - q0);
      // Q^T panel; lanes past the last query are 0 (their scores are 0 and their outputs are dropped).
      for (int half = 0; half < kLanes / 16; ++half) {
        const int rows = std::clamp(queries - half * 16, 0, 16);  // 0: the half is all padding (zeros)
        const float* src = rows > 0 ? a.q + (b * nq + q0 + half * 16) * a.ldq + h * dqk : a.q;
        for (int d0 = 0; d0 < dqk; d0 += 16)
          transpose_block(src + d0, a.ldq, rows, std::min(16, dqk - d0), qt + size_t(d0) * kLanes + half * 16,
                          kLanes, 16);
      }
      const float* k_blocks = kp + bh * k_head;
      for (size_t kb = 0; kb < key_blocks; ++kb)
        tile(std::min(kRows, nk - int(kb) * kRows), k_blocks + kb * dqk * kRows, qt, dqk,
             st + kb * kRows * kLanes);
      softmax_columns(st, nk, a.scale, col_sum);
      const float* v_blocks = vp + bh * v_head;
      for (size_t cb = 0; cb < channel_blocks; ++cb)
        for (int j0 = 0; j0 < nk; j0 += kKeyChunk)
          tile(std::min(kRows, dv - int(cb) * kRows), v_blocks + (cb * nk + j0) * kRows,
               st + size_t(j0) * kLanes, std::min(kKeyChunk, nk - j0), ot + cb * kRows * kLanes, j0 > 0);
      float inv[kLanes];
      for (int l = 0; l < kLanes; ++l) inv[l] = 1.0f / col_sum[l];
      for (int half = 0; half * 16 < queries; ++half) {
        float* out = a.out + (b * nq + q0 + half * 16) * a.ldo + h * dv;
        for (int c0 = 0; c0 < dv; c0 += 16)
          transpose_block(ot + size_t(c0) * kLanes + half * 16, kLanes, std::min(16, dv - c0),
                          std::min(16, queries - half * 16), out + c0, a.ldo, std::min(16, dv - c0),
                          inv + half * 16);
      }
      if (a.probs)
        for (int l = 0; l < queries; ++l) {
          float* p = a.probs + (bh * nq + q0 + l) * size_t(nk);
          for (int j = 0; j < nk; ++j) p[j] = st[size_t(j) * kLanes + l] * inv[l];
        }
    }
  }
}

}  // namespace perceiver::fast
