// The register tile kernel and the transposes of the hand-written AVX-512 kernels (attention, GEMM).
// Include after <immintrin.h>, only from files whose AVX-512 code carries PCV_AVX512.
#pragma once

#include <immintrin.h>

#include <cstddef>

#include "kernels/avx512_math.h"

namespace perceiver::fast::avx512 {

constexpr int kTileRows = 14;   // rows of a register tile (one broadcast each per step)
constexpr int kTileLanes = 32;  // columns of a register tile (two zmm vectors)

#define PCV_TILE_ROWS(X) X(0) X(1) X(2) X(3) X(4) X(5) X(6) X(7) X(8) X(9) X(10) X(11) X(12) X(13)

// c[i][l] = sum_k a[k][i] b[k][l] (+ c[i][l] when add)  for i < R, l < 32.   a: [n][14] (row i of the tile is
// lane i), b: [n][32], c: [R][32] dense.
template <int R>
PCV_AVX512 inline void tile_kernel(const float* a, const float* b, int n, float* c, bool add) {
#define PCV_DECLARE(i) [[maybe_unused]] __m512 c##i##lo = _mm512_setzero_ps(), c##i##hi = _mm512_setzero_ps();
  PCV_TILE_ROWS(PCV_DECLARE)
#undef PCV_DECLARE
  // Unrolled: +10% on the attention (fewer loop branches between the 28 FMAs of a step).
#pragma GCC unroll 4
  for (int k = 0; k < n; ++k) {
    const __m512 b_lo = _mm512_loadu_ps(b + size_t(k) * kTileLanes);
    const __m512 b_hi = _mm512_loadu_ps(b + size_t(k) * kTileLanes + 16);
    const float* ak = a + size_t(k) * kTileRows;
#define PCV_STEP(i)                                 \
  if constexpr (i < R) {                            \
    const __m512 ai = _mm512_set1_ps(ak[i]);        \
    c##i##lo = _mm512_fmadd_ps(ai, b_lo, c##i##lo); \
    c##i##hi = _mm512_fmadd_ps(ai, b_hi, c##i##hi); \
  }
    PCV_TILE_ROWS(PCV_STEP)
#undef PCV_STEP
  }
#define PCV_ADD(i)                                                                \
  if constexpr (i < R) {                                                          \
    c##i##lo = _mm512_add_ps(c##i##lo, _mm512_loadu_ps(c + (i)*kTileLanes));      \
    c##i##hi = _mm512_add_ps(c##i##hi, _mm512_loadu_ps(c + (i)*kTileLanes + 16)); \
  }
  if (add) {
    PCV_TILE_ROWS(PCV_ADD)
  }
#undef PCV_ADD
#define PCV_STORE(i)                                     \
  if constexpr (i < R) {                                 \
    _mm512_storeu_ps(c + (i)*kTileLanes, c##i##lo);      \
    _mm512_storeu_ps(c + (i)*kTileLanes + 16, c##i##hi); \
  }
  PCV_TILE_ROWS(PCV_STORE)
#undef PCV_STORE
}

PCV_AVX512 inline void tile(int rows, const float* a, const float* b, int n, float* c, bool add = false) {
  switch (rows) {
    case 14:
      return tile_kernel<14>(a, b, n, c, add);
    case 13:
      return tile_kernel<13>(a, b, n, c, add);
    case 12:
      return tile_kernel<12>(a, b, n, c, add);
    case 11:
      return tile_kernel<11>(a, b, n, c, add);
    case 10:
      return tile_kernel<10>(a, b, n, c, add);
    case 9:
      return tile_kernel<9>(a, b, n, c, add);
    case 8:
      return tile_kernel<8>(a, b, n, c, add);
    case 7:
      return tile_kernel<7>(a, b, n, c, add);
    case 6:
      return tile_kernel<6>(a, b, n, c, add);
    case 5:
      return tile_kernel<5>(a, b, n, c, add);
    case 4:
      return tile_kernel<4>(a, b, n, c, add);
    case 3:
      return tile_kernel<3>(a, b, n, c, add);
    case 2:
      return tile_kernel<2>(a, b, n, c, add);
    case 1:
      return tile_kernel<1>(a, b, n, c, add);
    default:
      return;
  }
}

PCV_AVX512 inline __m512 unpacklo_pd(__m512 a, __m512 b) {
  return _mm512_castpd_ps(_mm512_unpacklo_pd(_mm512_castps_pd(a), _mm512_castps_pd(b)));
}
PCV_AVX512 inline __m512 unpackhi_pd(__m512 a, __m512 b) {
  return _mm512_castpd_ps(_mm512_unpackhi_pd(_mm512_castps_pd(a), _mm512_castps_pd(b)));
}

// In-register 16 x 16 transpose: 32-bit, then 64-bit interleaves, then two rounds of 128-bit lane shuffles.
PCV_AVX512 inline void transpose16(__m512* r) {
  __m512 t[16];
  for (int i = 0; i < 16; i += 2) {
    t[i] = _mm512_unpacklo_ps(r[i], r[i + 1]);
    t[i + 1] = _mm512_unpackhi_ps(r[i], r[i + 1]);
  }
  for (int i = 0; i < 16; i += 4) {
    r[i] = unpacklo_pd(t[i], t[i + 2]);
    r[i + 1] = unpackhi_pd(t[i], t[i + 2]);
    r[i + 2] = unpacklo_pd(t[i + 1], t[i + 3]);
    r[i + 3] = unpackhi_pd(t[i + 1], t[i + 3]);
  }
  for (int i = 0; i < 16; i += 8)
    for (int j = 0; j < 4; ++j) {
      t[i + j] = _mm512_shuffle_f32x4(r[i + j], r[i + j + 4], 0x88);
      t[i + j + 4] = _mm512_shuffle_f32x4(r[i + j], r[i + j + 4], 0xdd);
    }
  for (int j = 0; j < 8; ++j) {
    r[j] = _mm512_shuffle_f32x4(t[j], t[j + 8], 0x88);
    r[j + 8] = _mm512_shuffle_f32x4(t[j], t[j + 8], 0xdd);
  }
}

// dst[j * 14 + i] = src[j * src_stride + i] for i < cols (<= 14), 0 for cols <= i < 14, over n rows.
PCV_AVX512 inline void copy_rows(const float* src, long src_stride, int n, int cols, float* dst,
                                 int dst_stride) {
  const __mmask16 load_mask = avx512::tail_mask(cols), store_mask = avx512::tail_mask(dst_stride);
  for (int j = 0; j < n; ++j)
    _mm512_mask_storeu_ps(dst + size_t(j) * dst_stride, store_mask,
                          _mm512_maskz_loadu_ps(load_mask, src + j * src_stride));
}

// dst[c * dst_stride + i] = src[i * src_stride + c] * (dst_scale ? dst_scale[c] : 1)   for c < cols, i <
// lanes, where source rows i >= rows read as 0. rows, cols, lanes <= 16.
PCV_AVX512 inline void transpose_block(const float* src, long src_stride, int rows, int cols, float* dst,
                                       long dst_stride, int lanes, const float* dst_scale = nullptr) {
  __m512 r[16];
  const __mmask16 col_mask = avx512::tail_mask(cols);
  for (int i = 0; i < 16; ++i)
    r[i] = i < rows ? _mm512_maskz_loadu_ps(col_mask, src + i * src_stride) : _mm512_setzero_ps();
  transpose16(r);
  const __mmask16 lane_mask = avx512::tail_mask(lanes);
  for (int c = 0; c < cols; ++c) {
    const __m512 v = dst_scale ? _mm512_mul_ps(r[c], _mm512_set1_ps(dst_scale[c])) : r[c];
    _mm512_mask_storeu_ps(dst + c * dst_stride, lane_mask, v);
  }
}

}  // namespace perceiver::fast::avx512
