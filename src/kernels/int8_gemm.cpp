// int8 linear layers (see int8_gemm.h): packing, the plain kernels that define the results, and the
// AMX-INT8, AVX-512 VNNI and AVX-VNNI kernels that reproduce them bit for bit.
//
// Fast kernels: register tiles of 6 rows x 64 columns (AVX-512: 24 zmm int32 accumulators, 4 zmm of W, one
// broadcast of 4 bytes of x per row and k-group; AVX-VNNI: 6 x 16 in 12 ymm). No k-blocking: a panel of W for
// K = 1024 is 64 KB (a quarter of fp32's) and stays in L2 while all row strips pass over it, a strip of x
// (6 x K bytes) stays in L1, and int32 sums need no partial-sum bookkeeping. Threads take blocks of panels
// (or row strips when there are fewer panels than threads), after quantising a share of the rows each.
//
// AMX: 2 x 2 tiles of int32 sums (32 rows x 32 columns) from 2 tiles of x (16 rows x 64 k, u8) and 2 of W
// (16 k-groups x 16 columns x 4 k, s8: the panel layout as it is, rows width * 4 bytes apart); the sums go
// through a 4 KB buffer into the AVX-512 epilogue. x is quantised with rows padded to 64 k (zeros), and
// 32 extra zero rows, so that every tile load stays inside the buffers.
//
// Bit-exactness: the integer sums are exact in any order; the epilogue is the same IEEE operations in the
// same order in every kernel (fma, a true division in GELU instead of vrcp14ps, 2^k built from its bits), and
// this project compiles in ISO C++ mode, where GCC does not contract a * b + c into an FMA on its own.
#include "kernels/int8_gemm.h"

// GCC 12's AVX-512 headers trip -Wuninitialized on their own _mm512_undefined_*() (GCC bug 105593).
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

#include <immintrin.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>

#include "kernels/fast_kernels.h"
#include "perceiver/error.h"

#define PCV_VNNI512 __attribute__((target("avx512f,avx512bw,avx512dq,avx512vl,avx512vnni,fma")))
#define PCV_AVXVNNI __attribute__((target("avx2,fma,avxvnni")))
#define PCV_AMX __attribute__((target("avx512f,avx512bw,avx512dq,avx512vl,avx512vnni,fma,amx-tile,amx-int8")))

namespace perceiver::int8 {
namespace {

constexpr int kRows = 6;  // rows of a register tile
constexpr int kPanel = Int8Weights::kPanel;
constexpr int kPanelsPerBlock = 4;  // panels of W a thread's task covers (4 x 64 KB at K = 1024: in L2)

// Constants of the epilogue's GELU and exp (shared by the scalar and vector forms).
constexpr float kInvSqrt2 = 0.70710678118654752f;
constexpr float kErfP = 0.3275911f, kErfA1 = 0.254829592f, kErfA2 = -0.284496736f, kErfA3 = 1.421413741f,
                kErfA4 = -1.453152027f, kErfA5 = 1.061405429f;
constexpr float kLog2e = 1.44269504088896341f, kLn2Hi = 0.693145751953125f,
                kLn2Lo = 1.42860682030941723212e-6f;
constexpr float kExpClamp = -100.0f, kExpFlush = -86.0f;  // exp(x) = 0 below -86 (no denormals)

float bits_to_float(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
uint32_t float_to_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}

// exp(x) for x <= 0: 2^k e^r, r = x - k ln 2, degree-6 Taylor polynomial; 0 below -86.
float exp_nonpositive(float x) {
  const bool normal = x >= kExpFlush;
  x = x > kExpClamp ? x : kExpClamp;
  const float k = std::nearbyint(x * kLog2e);
  float r = std::fma(-k, kLn2Hi, x);
  r = std::fma(-k, kLn2Lo, r);
  float p = 1.0f / 720;
  p = std::fma(p, r, 1.0f / 120);
  p = std::fma(p, r, 1.0f / 24);
  p = std::fma(p, r, 1.0f / 6);
  p = std::fma(p, r, 0.5f);
  p = std::fma(p, r, 1.0f);
  p = std::fma(p, r, 1.0f);
  if (!normal) return 0.0f;
  return p * bits_to_float(uint32_t(int32_t(k) + 127) << 23);
}

// Xq of one value: clamp(nearbyint(x / scale) + zero, 0, 255).
float quantize_value(float x, const RowQuant& r) {
  float t = std::nearbyint(x * r.inverse) + float(r.zero);
  t = t < 255.0f ? t : 255.0f;
  return t > 0.0f ? t : 0.0f;
}

// What every kernel does with one int32 sum.
float epilogue(int32_t acc, const RowQuant& row, int32_t column_sum, float w_scale, float bias, bool gelu_on,
               const float* residual) {
  const int32_t exact = acc - row.zero * column_sum;
  float v = std::fma(float(exact), row.scale * w_scale, bias);
  if (gelu_on) v = gelu(v);
  if (residual) v = v + *residual;
  return v;
}

// ---- plain kernels
// ------------------------------------------------------------------------------------------

void quantize_row_plain(const float* x, int k, int padded_k, uint8_t* q, RowQuant* params) {
  float lo = 0.0f, hi = 0.0f;
  for (int i = 0; i < k; ++i) {
    lo = x[i] < lo ? x[i] : lo;
    hi = x[i] > hi ? x[i] : hi;
  }
  const RowQuant r = row_quant(lo, hi);
  for (int i = 0; i < k; ++i) q[i] = uint8_t(quantize_value(x[i], r));
  std::fill(q + k, q + padded_k, uint8_t(0));
  *params = r;
}

// Rows [m0, m1) x columns [n0, n1) of y from quantised rows q ([rows, padded_k]).
void tiles_plain(const Int8Weights& w, const uint8_t* q, const RowQuant* params, int m0, int m1, int n0,
                 int n1, float* y, long ldy, bool gelu_on, const float* residual) {
  const int kp = w.padded_k();
  for (int m = m0; m < m1; ++m) {
    const uint8_t* qm = q + size_t(m) * kp;
    for (int n = n0; n < n1; ++n) {
      // Column n of its panel: 4 bytes per k-group, groups panel_width * 4 bytes apart.
      const int p = n / kPanel;
      const int8_t* col = w.panel(p) + (n % kPanel) * 4;
      const size_t group_stride = size_t(w.panel_width(p)) * 4;
      int32_t acc = 0;
      for (int g = 0; g < kp / 4; ++g)
        for (int j = 0; j < 4; ++j) acc += int32_t(qm[4 * g + j]) * int32_t(col[g * group_stride + j]);
      y[m * ldy + n] = epilogue(acc, params[m], w.column_sums()[n], w.scales()[n], w.bias()[n], gelu_on,
                                residual ? residual + m * ldy + n : nullptr);
    }
  }
}

// ---- AVX-512 VNNI -----------------------------------------------------------------------------------------

PCV_VNNI512 inline __m512 exp_nonpositive16(__m512 x) {
  const __mmask16 normal = _mm512_cmp_ps_mask(x, _mm512_set1_ps(kExpFlush), _CMP_GE_OQ);
  x = _mm512_max_ps(x, _mm512_set1_ps(kExpClamp));
  const __m512 k = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(kLog2e)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(k, _mm512_set1_ps(kLn2Hi), x);
  r = _mm512_fnmadd_ps(k, _mm512_set1_ps(kLn2Lo), r);
  __m512 p = _mm512_set1_ps(1.0f / 720);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 120));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 24));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 6));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
  const __m512i e = _mm512_slli_epi32(_mm512_add_epi32(_mm512_cvtps_epi32(k), _mm512_set1_epi32(127)), 23);
  return _mm512_maskz_mul_ps(normal, p, _mm512_castsi512_ps(e));
}

PCV_VNNI512 inline __m512 gelu16(__m512 x) {
  const __m512 one = _mm512_set1_ps(1.0f), sign = _mm512_set1_ps(-0.0f);
  const __m512 z = _mm512_mul_ps(x, _mm512_set1_ps(kInvSqrt2));
  const __m512 az = _mm512_andnot_ps(sign, z);
  const __m512 t = _mm512_div_ps(one, _mm512_fmadd_ps(_mm512_set1_ps(kErfP), az, one));
  __m512 poly = _mm512_fmadd_ps(_mm512_set1_ps(kErfA5), t, _mm512_set1_ps(kErfA4));
  poly = _mm512_fmadd_ps(poly, t, _mm512_set1_ps(kErfA3));
  poly = _mm512_fmadd_ps(poly, t, _mm512_set1_ps(kErfA2));
  poly = _mm512_fmadd_ps(poly, t, _mm512_set1_ps(kErfA1));
  poly = _mm512_mul_ps(poly, t);
  const __m512 e = exp_nonpositive16(_mm512_xor_ps(_mm512_mul_ps(az, az), sign));
  const __m512 erf = _mm512_or_ps(_mm512_fnmadd_ps(poly, e, one), _mm512_and_ps(z, sign));
  return _mm512_mul_ps(_mm512_mul_ps(_mm512_set1_ps(0.5f), x), _mm512_add_ps(one, erf));
}

PCV_VNNI512 void quantize_row_avx512(const float* x, int k, int padded_k, uint8_t* q, RowQuant* params) {
  __m512 lo = _mm512_setzero_ps(), hi = _mm512_setzero_ps();
  int i = 0;
  for (; i + 16 <= k; i += 16) {
    const __m512 v = _mm512_loadu_ps(x + i);
    lo = _mm512_min_ps(v, lo);
    hi = _mm512_max_ps(v, hi);
  }
  if (i < k) {  // the tail loaded as zeros, which the range includes anyway
    const __m512 v = _mm512_maskz_loadu_ps(__mmask16((1u << (k - i)) - 1), x + i);
    lo = _mm512_min_ps(v, lo);
    hi = _mm512_max_ps(v, hi);
  }
  const RowQuant r = row_quant(_mm512_reduce_min_ps(lo), _mm512_reduce_max_ps(hi));
  const __m512 inv = _mm512_set1_ps(r.inverse), zero = _mm512_set1_ps(float(r.zero));
  const __m512 top = _mm512_set1_ps(255.0f), bottom = _mm512_setzero_ps();
  for (i = 0; i < padded_k; i += 16) {
    const int n = std::min(16, k - i);
    const __mmask16 m = n >= 16 ? __mmask16(0xffff) : n > 0 ? __mmask16((1u << n) - 1) : __mmask16(0);
    __m512 t = _mm512_add_ps(_mm512_roundscale_ps(_mm512_mul_ps(_mm512_maskz_loadu_ps(m, x + i), inv),
                                                  _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC),
                             zero);
    t = _mm512_max_ps(_mm512_min_ps(t, top), bottom);
    const __m128i bytes = _mm512_cvtepi32_epi8(_mm512_maskz_cvtps_epi32(m, t));  // padding: 0
    const int stored = std::min(16, padded_k - i);
    _mm_mask_storeu_epi8(q + i, __mmask16((1u << stored) - 1), bytes);
  }
  *params = r;
}

struct TileOut {
  const RowQuant* rows;   // [R]
  const int32_t* colsum;  // [width] of this panel
  const float* w_scale;   // [width]
  const float* bias;      // [width]
  float* y;               // rows ldy apart
  const float* residual;  // rows ldy apart, or nullptr
  long ldy;
  bool gelu;
  int last;  // lanes of the last vector column stored (1..16)
};

// acc += u8 a x s8 b, four products per int32 lane. Inline assembly rather than _mm512_dpbusd_epi32: GCC 12
// allocates registers for that intrinsic so poorly (copies of accumulators every k step, spills) that the
// tile ran at half speed.
PCV_VNNI512 inline void dpbusd(__m512i& acc, __m512i a, __m512i b) {
  __asm__("vpdpbusd %2, %1, %0" : "+v"(acc) : "v"(a), "v"(b));
}

// The epilogue of rows [i0, i1) of a 512-bit tile: sums [rows][16 nv] int32 -> y (see epilogue()).
PCV_VNNI512 inline void store512_rows(const int32_t* sums, int i0, int i1, int nv, const TileOut& o) {
  for (int j = 0; j < nv; ++j) {
    const __mmask16 mask = j == nv - 1 ? __mmask16((1u << o.last) - 1) : __mmask16(0xffff);
    const __m512i colsum = _mm512_loadu_si512(o.colsum + 16 * j);
    const __m512 w_scale = _mm512_loadu_ps(o.w_scale + 16 * j), bias = _mm512_loadu_ps(o.bias + 16 * j);
    for (int i = i0; i < i1; ++i) {
      const __m512i acc = _mm512_load_si512(sums + (i * nv + j) * 16);
      const __m512i exact =
          _mm512_sub_epi32(acc, _mm512_mullo_epi32(_mm512_set1_epi32(o.rows[i].zero), colsum));
      __m512 v = _mm512_fmadd_ps(_mm512_cvtepi32_ps(exact),
                                 _mm512_mul_ps(_mm512_set1_ps(o.rows[i].scale), w_scale), bias);
      if (o.gelu) v = gelu16(v);
      if (o.residual) v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(mask, o.residual + i * o.ldy + 16 * j));
      _mm512_mask_storeu_ps(o.y + i * o.ldy + 16 * j, mask, v);
    }
  }
}

// Kept out of line: inlined into the VNNI tile, its registers made GCC spill the accumulators of the k loop.
PCV_VNNI512 __attribute__((noinline)) void store512(const int32_t* sums, int rows, int nv, const TileOut& o) {
  store512_rows(sums, 0, rows, nv, o);
}

// y[R, 16 NV] from q[R, padded_k] (rows lda apart) and a panel of width 16 NV' >= 16 NV. The accumulators
// are named variables (an array of them made GCC keep them in memory).
template <int R, int NV>
PCV_VNNI512 inline void tile512(const uint8_t* a, long lda, const int8_t* b, int width, int groups,
                                const TileOut& o) {
  static_assert(R >= 1 && R <= 6 && NV >= 1 && NV <= 4);
#define PCV_ACC(i) \
  __m512i c##i##0 = _mm512_setzero_si512(), c##i##1 = c##i##0, c##i##2 = c##i##0, c##i##3 = c##i##0;
  // clang-format off
  PCV_ACC(0)
  PCV_ACC(1)
  PCV_ACC(2)
  PCV_ACC(3)
  PCV_ACC(4)
  PCV_ACC(5)
  // clang-format on
#undef PCV_ACC
  const size_t stride = size_t(width) * 4;
  for (int g = 0; g < groups; ++g) {
    const int8_t* bg = b + g * stride;
    const __m512i b0 = _mm512_loadu_si512(bg);
    const __m512i b1 = NV > 1 ? _mm512_loadu_si512(bg + 64) : b0;
    const __m512i b2 = NV > 2 ? _mm512_loadu_si512(bg + 128) : b0;
    const __m512i b3 = NV > 3 ? _mm512_loadu_si512(bg + 192) : b0;
#define PCV_ROW(i)                                 \
  if constexpr (R > i) {                           \
    int32_t four;                                  \
    std::memcpy(&four, a + i * lda + 4 * g, 4);    \
    const __m512i av = _mm512_set1_epi32(four);    \
    dpbusd(c##i##0, av, b0);                       \
    if constexpr (NV > 1) dpbusd(c##i##1, av, b1); \
    if constexpr (NV > 2) dpbusd(c##i##2, av, b2); \
    if constexpr (NV > 3) dpbusd(c##i##3, av, b3); \
  }
    PCV_ROW(0) PCV_ROW(1) PCV_ROW(2) PCV_ROW(3) PCV_ROW(4) PCV_ROW(5)
#undef PCV_ROW
  }
  alignas(64) int32_t sums[R * NV * 16];
#define PCV_SAVE(i)                                                                             \
  if constexpr (R > i) {                                                                        \
    _mm512_store_si512(sums + (i * NV + 0) * 16, c##i##0);                                      \
    if constexpr (NV > 1) _mm512_store_si512(sums + (i * NV + (NV > 1 ? 1 : 0)) * 16, c##i##1); \
    if constexpr (NV > 2) _mm512_store_si512(sums + (i * NV + (NV > 2 ? 2 : 0)) * 16, c##i##2); \
    if constexpr (NV > 3) _mm512_store_si512(sums + (i * NV + (NV > 3 ? 3 : 0)) * 16, c##i##3); \
  }
  // clang-format off
  PCV_SAVE(0)
  PCV_SAVE(1)
  PCV_SAVE(2)
  PCV_SAVE(3)
  PCV_SAVE(4)
  PCV_SAVE(5)
  // clang-format on
#undef PCV_SAVE
  store512(sums, R, NV, o);
}

template <int R>
PCV_VNNI512 void tile512_nv(int nv, const uint8_t* a, long lda, const int8_t* b, int width, int groups,
                            const TileOut& o) {
  switch (nv) {
    case 1:
      return tile512<R, 1>(a, lda, b, width, groups, o);
    case 2:
      return tile512<R, 2>(a, lda, b, width, groups, o);
    case 3:
      return tile512<R, 3>(a, lda, b, width, groups, o);
    default:
      return tile512<R, 4>(a, lda, b, width, groups, o);
  }
}

PCV_VNNI512 void any_tile512(int rows, int nv, const uint8_t* a, long lda, const int8_t* b, int width,
                             int groups, const TileOut& o) {
  switch (rows) {
    case 1:
      return tile512_nv<1>(nv, a, lda, b, width, groups, o);
    case 2:
      return tile512_nv<2>(nv, a, lda, b, width, groups, o);
    case 3:
      return tile512_nv<3>(nv, a, lda, b, width, groups, o);
    case 4:
      return tile512_nv<4>(nv, a, lda, b, width, groups, o);
    case 5:
      return tile512_nv<5>(nv, a, lda, b, width, groups, o);
    default:
      return tile512_nv<6>(nv, a, lda, b, width, groups, o);
  }
}

// ---- AMX-INT8 --------------------------------------------------------------------------------------------

constexpr int kAmxRows = 32, kAmxCols = 32, kAmxK = 64;  // a 2 x 2 block of C tiles; k per tile load

// The tile shapes of ldtilecfg, palette 1: every tile 16 rows x 64 bytes (C: 16 x 16 int32; x: 16 rows x 64
// u8; W: 16 k-groups x 16 columns x 4 s8).
struct alignas(64) TileConfig {
  uint8_t palette = 1;
  uint8_t start_row = 0;
  uint8_t reserved[14] = {};
  uint16_t bytes_per_row[16] = {};
  uint8_t rows[16] = {};
};

// GCC 12's tile intrinsics are asm statements that name only a first byte or a register of the memory they
// read or write; the operands and the "memory" barriers below keep the compiler from dropping the stores of
// the config or moving buffer accesses across tile loads and stores.
PCV_AMX void amx_configure() {
  TileConfig config;
  for (int t = 0; t < 8; ++t) config.bytes_per_row[t] = 64, config.rows[t] = 16;
  __asm__ volatile("ldtilecfg %0" ::"m"(config) : "memory");
}

// A block's sums waiting for their epilogue.
struct Pending {
  const int32_t* sums = nullptr;  // [rows][16 nv]
  int rows = 0, nv = 0;
  TileOut out{};
};

// sums [16 MT][16 NT] int32 (rows 64 NT bytes apart) = q[16 MT, 64 k_blocks] (rows lda apart) x the W tiles
// of 16 NT columns starting at b (k-group rows `stride` bytes apart). Tiles: C 0..3 (row block i, column
// block j: 2 i + j), x 4 and 5, W 6 and 7. The epilogue of the previous block (`prev`, in another buffer)
// runs a few rows per k step, so the vector units work while the tile unit does.
template <int MT, int NT>
PCV_AMX void amx_block(const uint8_t* a, long lda, const int8_t* b, long stride, int k_blocks, int32_t* sums,
                       const Pending& prev) {
  __asm__ volatile("" ::: "memory");
  const int rows_per_step = (prev.rows + k_blocks - 1) / k_blocks;
  int done = 0;
  _tile_zero(0);
  if constexpr (NT > 1) _tile_zero(1);
  if constexpr (MT > 1) _tile_zero(2);
  if constexpr (MT > 1 && NT > 1) _tile_zero(3);
  for (int kb = 0; kb < k_blocks; ++kb) {
    const int8_t* bk = b + size_t(kb) * 16 * stride;
    _tile_loadd(4, a + kb * kAmxK, lda);
    _tile_loadd(6, bk, stride);
    if constexpr (NT > 1) _tile_loadd(7, bk + 64, stride);
    if constexpr (MT > 1) _tile_loadd(5, a + 16 * lda + kb * kAmxK, lda);
    _tile_dpbusd(0, 4, 6);
    if constexpr (NT > 1) _tile_dpbusd(1, 4, 7);
    if constexpr (MT > 1) _tile_dpbusd(2, 5, 6);
    if constexpr (MT > 1 && NT > 1) _tile_dpbusd(3, 5, 7);
    if (done < prev.rows) {
      const int end = std::min(prev.rows, done + rows_per_step);
      store512_rows(prev.sums, done, end, prev.nv, prev.out);
      done = end;
    }
  }
  const long ldc = 64 * NT;  // bytes
  _tile_stored(0, sums, ldc);
  if constexpr (NT > 1) _tile_stored(1, sums + 16, ldc);
  if constexpr (MT > 1) _tile_stored(2, sums + 16 * 16 * NT, ldc);
  if constexpr (MT > 1 && NT > 1) _tile_stored(3, sums + 16 * 16 * NT + 16, ldc);
  __asm__ volatile("" ::: "memory");
}

PCV_AMX void any_amx_block(int mt, int nt, const uint8_t* a, long lda, const int8_t* b, long stride,
                           int k_blocks, int32_t* sums, const Pending& prev) {
  if (mt > 1)
    nt > 1 ? amx_block<2, 2>(a, lda, b, stride, k_blocks, sums, prev)
           : amx_block<2, 1>(a, lda, b, stride, k_blocks, sums, prev);
  else
    nt > 1 ? amx_block<1, 2>(a, lda, b, stride, k_blocks, sums, prev)
           : amx_block<1, 1>(a, lda, b, stride, k_blocks, sums, prev);
}

PCV_AMX void amx_release() { _tile_release(); }

// ---- AVX-VNNI (256-bit) -----------------------------------------------------------------------------------

PCV_AVXVNNI inline __m256 exp_nonpositive8(__m256 x) {
  const __m256 normal = _mm256_cmp_ps(x, _mm256_set1_ps(kExpFlush), _CMP_GE_OQ);
  x = _mm256_max_ps(x, _mm256_set1_ps(kExpClamp));
  const __m256 k = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(kLog2e)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(k, _mm256_set1_ps(kLn2Hi), x);
  r = _mm256_fnmadd_ps(k, _mm256_set1_ps(kLn2Lo), r);
  __m256 p = _mm256_set1_ps(1.0f / 720);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 120));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 24));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 6));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(0.5f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
  const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(k), _mm256_set1_epi32(127)), 23);
  return _mm256_and_ps(normal, _mm256_mul_ps(p, _mm256_castsi256_ps(e)));
}

PCV_AVXVNNI inline __m256 gelu8(__m256 x) {
  const __m256 one = _mm256_set1_ps(1.0f), sign = _mm256_set1_ps(-0.0f);
  const __m256 z = _mm256_mul_ps(x, _mm256_set1_ps(kInvSqrt2));
  const __m256 az = _mm256_andnot_ps(sign, z);
  const __m256 t = _mm256_div_ps(one, _mm256_fmadd_ps(_mm256_set1_ps(kErfP), az, one));
  __m256 poly = _mm256_fmadd_ps(_mm256_set1_ps(kErfA5), t, _mm256_set1_ps(kErfA4));
  poly = _mm256_fmadd_ps(poly, t, _mm256_set1_ps(kErfA3));
  poly = _mm256_fmadd_ps(poly, t, _mm256_set1_ps(kErfA2));
  poly = _mm256_fmadd_ps(poly, t, _mm256_set1_ps(kErfA1));
  poly = _mm256_mul_ps(poly, t);
  const __m256 e = exp_nonpositive8(_mm256_xor_ps(_mm256_mul_ps(az, az), sign));
  const __m256 erf = _mm256_or_ps(_mm256_fnmadd_ps(poly, e, one), _mm256_and_ps(z, sign));
  return _mm256_mul_ps(_mm256_mul_ps(_mm256_set1_ps(0.5f), x), _mm256_add_ps(one, erf));
}

// The plain loops compiled for AVX2 (the compiler vectorises what it can; the results stay the plain ones).
PCV_AVXVNNI void quantize_row_avx2(const float* x, int k, int padded_k, uint8_t* q, RowQuant* params) {
  float lo = 0.0f, hi = 0.0f;
  for (int i = 0; i < k; ++i) {
    lo = x[i] < lo ? x[i] : lo;
    hi = x[i] > hi ? x[i] : hi;
  }
  const RowQuant r = row_quant(lo, hi);
  const __m256 inv = _mm256_set1_ps(r.inverse), zero = _mm256_set1_ps(float(r.zero));
  const __m256 top = _mm256_set1_ps(255.0f), bottom = _mm256_setzero_ps();
  int i = 0;
  for (; i + 8 <= k; i += 8) {
    __m256 t = _mm256_add_ps(_mm256_round_ps(_mm256_mul_ps(_mm256_loadu_ps(x + i), inv),
                                             _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC),
                             zero);
    t = _mm256_max_ps(_mm256_min_ps(t, top), bottom);
    alignas(32) int32_t v[8];
    _mm256_store_si256(reinterpret_cast<__m256i*>(v), _mm256_cvtps_epi32(t));
    for (int j = 0; j < 8; ++j) q[i + j] = uint8_t(v[j]);
  }
  for (; i < k; ++i) q[i] = uint8_t(quantize_value(x[i], r));
  for (; i < padded_k; ++i) q[i] = 0;
  *params = r;
}

// y[R, 16] (lanes < `last` stored) from q[R, padded_k] and 16 columns of a panel (b: their first column).
template <int R>
PCV_AVXVNNI inline void tile256(const uint8_t* a, long lda, const int8_t* b, int width, int groups,
                                const TileOut& o) {
  __m256i acc[R][2];
  for (int i = 0; i < R; ++i) acc[i][0] = acc[i][1] = _mm256_setzero_si256();
  const size_t stride = size_t(width) * 4;
#pragma GCC unroll 4
  for (int g = 0; g < groups; ++g) {
    const __m256i b0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b + g * stride));
    const __m256i b1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b + g * stride + 32));
    for (int i = 0; i < R; ++i) {
      int32_t four;
      std::memcpy(&four, a + i * lda + 4 * g, 4);
      const __m256i av = _mm256_set1_epi32(four);
      acc[i][0] = _mm256_dpbusd_avx_epi32(acc[i][0], av, b0);
      acc[i][1] = _mm256_dpbusd_avx_epi32(acc[i][1], av, b1);
    }
  }
  const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  for (int j = 0; j < 2; ++j) {
    const int lanes = std::clamp(o.last - 8 * j, 0, 8);
    if (lanes == 0) break;
    const __m256i mask = _mm256_cmpgt_epi32(_mm256_set1_epi32(lanes), lane);
    const __m256i colsum = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(o.colsum + 8 * j));
    const __m256 w_scale = _mm256_loadu_ps(o.w_scale + 8 * j), bias = _mm256_loadu_ps(o.bias + 8 * j);
    for (int i = 0; i < R; ++i) {
      const __m256i exact =
          _mm256_sub_epi32(acc[i][j], _mm256_mullo_epi32(_mm256_set1_epi32(o.rows[i].zero), colsum));
      __m256 v = _mm256_fmadd_ps(_mm256_cvtepi32_ps(exact),
                                 _mm256_mul_ps(_mm256_set1_ps(o.rows[i].scale), w_scale), bias);
      if (o.gelu) v = gelu8(v);
      if (o.residual) v = _mm256_add_ps(v, _mm256_maskload_ps(o.residual + i * o.ldy + 8 * j, mask));
      _mm256_maskstore_ps(o.y + i * o.ldy + 8 * j, mask, v);
    }
  }
}

PCV_AVXVNNI void any_tile256(int rows, const uint8_t* a, long lda, const int8_t* b, int width, int groups,
                             const TileOut& o) {
  switch (rows) {
    case 1:
      return tile256<1>(a, lda, b, width, groups, o);
    case 2:
      return tile256<2>(a, lda, b, width, groups, o);
    case 3:
      return tile256<3>(a, lda, b, width, groups, o);
    case 4:
      return tile256<4>(a, lda, b, width, groups, o);
    case 5:
      return tile256<5>(a, lda, b, width, groups, o);
    default:
      return tile256<6>(a, lda, b, width, groups, o);
  }
}

// ---- driver -----------------------------------------------------------------------------------------------

void quantize_row(Kernel kernel, const float* x, int k, int padded_k, uint8_t* q, RowQuant* params) {
  switch (kernel) {
    case Kernel::amx_int8:
    case Kernel::avx512_vnni:
      return quantize_row_avx512(x, k, padded_k, q, params);
    case Kernel::avx_vnni:
      return quantize_row_avx2(x, k, padded_k, q, params);
    default:
      return quantize_row_plain(x, k, padded_k, q, params);
  }
}

// Asks for [begin, end) in L2, one prefetch per cache line (W comes from memory; see fast_gemm.cpp).
void prefetch_to_l2(const int8_t* begin, const int8_t* end) {
  for (const int8_t* line = begin; line < end; line += 64) __builtin_prefetch(line, 0, 2);
}

// The epilogue's view of the outputs from row m and column n on (`last`: lanes stored of the last vector).
TileOut tile_out(const Int8Weights& w, const RowQuant* params, int m, int n, float* y, long ldy,
                 const float* residual, bool gelu_on, int last) {
  return TileOut{params + m,
                 w.column_sums() + n,
                 w.scales() + n,
                 w.bias() + n,
                 y + m * ldy + n,
                 residual ? residual + m * ldy + n : nullptr,
                 ldy,
                 gelu_on,
                 last};
}

// Rows [m0, m1) x panels [p0, p1) of y with AMX; q rows lda apart (a multiple of 64).
void amx_tiles(const Int8Weights& w, const uint8_t* q, long lda, const RowQuant* params, int m0, int m1,
               int p0, int p1, float* y, long ldy, bool gelu_on, const float* residual) {
  const int N = w.n(), k_blocks = int(lda / kAmxK);
  alignas(64) int32_t sums[2][kAmxRows * kAmxCols];  // the block in the tiles, the block in its epilogue
  Pending pending;
  int next = 0;
  amx_configure();
  for (int m = m0; m < m1; m += kAmxRows) {
    const int rows = std::min(kAmxRows, m1 - m);
    for (int p = p0; p < p1; ++p) {
      const int n0 = p * kPanel, width = w.panel_width(p), stored = std::min(width, N - n0);
      for (int c = 0; c < stored; c += kAmxCols) {
        const int cols = std::min(kAmxCols, stored - c), nt = (cols + 15) / 16;
        any_amx_block(rows > 16 ? 2 : 1, nt, q + size_t(m) * lda, lda, w.panel(p) + c * 4, long(width) * 4,
                      k_blocks, sums[next], pending);
        pending.sums = sums[next];
        pending.rows = rows;
        pending.nv = nt;
        pending.out = tile_out(w, params, m, n0 + c, y, ldy, residual, gelu_on, cols - 16 * (nt - 1));
        next = 1 - next;
      }
    }
  }
  amx_release();
  if (pending.rows) store512(pending.sums, pending.rows, pending.nv, pending.out);
}

// Rows [m0, m1) x panels [p0, p1) of y; q rows lda apart.
void block(Kernel kernel, const Int8Weights& w, const uint8_t* q, long lda, const RowQuant* params, int m0,
           int m1, int p0, int p1, float* y, long ldy, bool gelu_on, const float* residual) {
  const int N = w.n(), kp = w.padded_k(), groups = w.k_groups();
  if (kernel == Kernel::plain) {
    tiles_plain(w, q, params, m0, m1, p0 * kPanel, std::min(N, p1 * kPanel), y, ldy, gelu_on, residual);
    return;
  }
  if (kernel == Kernel::amx_int8) {
    amx_tiles(w, q, lda, params, m0, m1, p0, p1, y, ldy, gelu_on, residual);
    return;
  }
  prefetch_to_l2(w.panel(p0), w.panel(p1 - 1) + size_t(w.panel_width(p1 - 1)) * kp);
  for (int m = m0; m < m1; m += kRows) {
    const int rows = std::min(kRows, m1 - m);
    const uint8_t* a = q + size_t(m) * lda;
    for (int p = p0; p < p1; ++p) {
      const int n0 = p * kPanel, width = w.panel_width(p), stored = std::min(width, N - n0);
      if (kernel == Kernel::avx512_vnni) {
        const int nv = (stored + 15) / 16;
        const TileOut o = tile_out(w, params, m, n0, y, ldy, residual, gelu_on, stored - 16 * (nv - 1));
        if (rows == kRows && nv == 4 && o.last == 16)
          tile512<kRows, 4>(a, lda, w.panel(p), width, groups, o);
        else
          any_tile512(rows, nv, a, lda, w.panel(p), width, groups, o);
      } else {
        for (int c = 0; c < stored; c += 16) {
          const TileOut o =
              tile_out(w, params, m, n0 + c, y, ldy, residual, gelu_on, std::min(16, stored - c));
          any_tile256(rows, a, lda, w.panel(p) + c * 4, width, groups, o);
        }
      }
    }
  }
}

}  // namespace

RowQuant row_quant(float min_x, float max_x) {
  const float lo = min_x < 0.0f ? min_x : 0.0f, hi = max_x > 0.0f ? max_x : 0.0f;
  RowQuant r;
  const float scale = (hi - lo) / 255.0f;
  if (!(scale > 0.0f) || !std::isfinite(scale)) return r;  // all zeros (or not finite): Xq = 0, scale 1
  r.scale = scale;
  r.inverse = 1.0f / scale;
  float zero = std::nearbyint(-lo * r.inverse);
  zero = zero < 255.0f ? zero : 255.0f;
  r.zero = int32_t(zero > 0.0f ? zero : 0.0f);
  return r;
}

float gelu(float x) {
  const float z = x * kInvSqrt2;
  const float az = std::fabs(z);
  const float t = 1.0f / std::fma(kErfP, az, 1.0f);
  float poly = std::fma(kErfA5, t, kErfA4);
  poly = std::fma(poly, t, kErfA3);
  poly = std::fma(poly, t, kErfA2);
  poly = std::fma(poly, t, kErfA1);
  poly = poly * t;
  const float e = exp_nonpositive(-(az * az));
  const float erf_abs = std::fma(-poly, e, 1.0f);
  const float erf = bits_to_float(float_to_bits(erf_abs) | (float_to_bits(z) & 0x80000000u));
  return (0.5f * x) * (1.0f + erf);
}

const char* kernel_name(Kernel kernel) {
  switch (kernel) {
    case Kernel::amx_int8:
      return "amx-int8";
    case Kernel::avx512_vnni:
      return "avx512-vnni";
    case Kernel::avx_vnni:
      return "avx-vnni";
    default:
      return "plain";
  }
}

bool kernel_supported(Kernel kernel) {
#if defined(__x86_64__)
  __builtin_cpu_init();
  unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
  switch (kernel) {
    case Kernel::amx_int8:
      return kernel_supported(Kernel::avx512_vnni) && fast::cpu_has_amx(fast::Amx::int8);
    case Kernel::avx512_vnni:
      if (!__builtin_cpu_supports("avx512f") || !__builtin_cpu_supports("avx512bw") ||
          !__builtin_cpu_supports("avx512dq") || !__builtin_cpu_supports("avx512vl"))
        return false;
      // CPUID leaf 7 sub-leaf 0, ECX bit 11: AVX512_VNNI.
      __asm__ volatile("cpuid" : "=a"(eax), "=b"(ebx), "=c"(ecx), "=d"(edx) : "a"(7), "c"(0));
      return (ecx >> 11) & 1u;
    case Kernel::avx_vnni:
      if (!__builtin_cpu_supports("avx2") || !__builtin_cpu_supports("fma")) return false;
      // CPUID leaf 7 sub-leaf 1, EAX bit 4: AVX-VNNI.
      __asm__ volatile("cpuid" : "=a"(eax), "=b"(ebx), "=c"(ecx), "=d"(edx) : "a"(7), "c"(1));
      return (eax >> 4) & 1u;
    default:
      return true;
  }
#else
  return kernel == Kernel::plain;
#endif
}

Kernel best_kernel() {
  static const Kernel best = [] {
    // PERCEIVER_DISABLE_VNNI: as on a CPU with neither (AVX2 only; the tests use it).
    if (fast::env_flag("PERCEIVER_DISABLE_VNNI")) return Kernel::plain;
    if (!fast::env_flag("PERCEIVER_DISABLE_AVX512") && !fast::env_flag("PERCEIVER_DISABLE_AMX") &&
        kernel_supported(Kernel::amx_int8))
      return Kernel::amx_int8;
    if (!fast::env_flag("PERCEIVER_DISABLE_AVX512") && kernel_supported(Kernel::avx512_vnni))
      return Kernel::avx512_vnni;
    if (kernel_supported(Kernel::avx_vnni)) return Kernel::avx_vnni;
    return Kernel::plain;
  }();
  return best;
}

Int8Weights::Int8Weights(const std::vector<LinearPart>& parts, int k, int threads) : k_(k) {
  if (k <= 0 || k > kMaxK)
    throw Error(ErrorKind::model, "int8 linear layer: in_features " + std::to_string(k) + " outside 1.." +
                                      std::to_string(kMaxK));
  for (const auto& p : parts) n_ += p.rows;
  n_pad_ = (n_ + 15) / 16 * 16;
  // Row n of the stacked W and its bias (nullptr past N, or for a part without bias).
  std::vector<const float*> row(n_pad_, nullptr), bias_of(n_pad_, nullptr);
  for (size_t i = 0, n = 0; i < parts.size(); ++i)
    for (int r = 0; r < parts[i].rows; ++r, ++n) {
      row[n] = parts[i].weight + size_t(r) * k;
      bias_of[n] = parts[i].bias ? parts[i].bias + r : nullptr;
    }
  const int kp = padded_k();
  const size_t data_bytes = size_t(n_pad_) * kp;
  data_.reserve(data_bytes + kTileSlack);
  std::memset(data_.as<int8_t>() + data_bytes, 0, kTileSlack);
  scale_.reserve(sizeof(float) * n_pad_);
  colsum_.reserve(sizeof(int32_t) * n_pad_);
  bias_.reserve(sizeof(float) * n_pad_);
  int8_t* data = data_.as<int8_t>();
  // 16 rows at a time: their bytes share cache lines of the panel.
#pragma omp parallel for num_threads(std::max(1, threads)) schedule(static)
  for (int g = 0; g < n_pad_ / 16; ++g)
    for (int n = 16 * g; n < 16 * g + 16; ++n) {
      const float* src = row[n];
      float amax = 0.0f;
      for (int i = 0; src && i < k; ++i) amax = std::max(amax, std::fabs(src[i]));
      const float inv = amax > 0.0f && std::isfinite(amax) ? 127.0f / amax : 0.0f;
      const int p = n / kPanel;
      int8_t* col = data + size_t(p) * kPanel * kp + (n % kPanel) * 4;
      const size_t group_stride = size_t(panel_width(p)) * 4;
      int32_t sum = 0;
      for (int i = 0; i < kp; ++i) {
        float v = src && i < k ? std::nearbyint(src[i] * inv) : 0.0f;
        v = std::clamp(v, -127.0f, 127.0f);
        col[(i / 4) * group_stride + i % 4] = int8_t(v);
        sum += int32_t(v);
      }
      scale_.as<float>()[n] = inv > 0.0f ? amax / 127.0f : 0.0f;
      colsum_.as<int32_t>()[n] = sum;
      const float b = bias_of[n] ? *bias_of[n] : 0.0f;
      bias_.as<float>()[n] = std::fpclassify(b) == FP_SUBNORMAL ? 0.0f : b;
    }
}

void quantize_rows(Kernel kernel, const float* x, long ldx, int rows, int k, int padded_k, uint8_t* q,
                   RowQuant* params) {
  for (int m = 0; m < rows; ++m)
    quantize_row(kernel, x + m * ldx, k, padded_k, q + size_t(m) * padded_k, params + m);
}

void linear(Kernel kernel, const Int8Weights& w, const float* x, long ldx, int rows, float* y, long ldy,
            bool gelu_on, const float* residual, int threads, Scratch& scratch) {
  if (rows <= 0) return;
  const int kp = w.padded_k(), panels = w.panels(), strips = (rows + kRows - 1) / kRows;
  // AMX reads x in 64-k tiles of 16 rows: rows padded to 64 k with zeros, and zero rows after the last.
  const bool amx = kernel == Kernel::amx_int8;
  const long lda = amx ? (kp + kAmxK - 1) / kAmxK * kAmxK : kp;
  const int extra_rows = amx ? kAmxRows : 0;
  const size_t q_bytes = (size_t(rows + extra_rows) * lda + 63) / 64 * 64;
  scratch.reserve(q_bytes + sizeof(RowQuant) * rows);
  uint8_t* q = scratch.as<uint8_t>();
  RowQuant* params = reinterpret_cast<RowQuant*>(scratch.as<std::byte>() + q_bytes);
  if (extra_rows) std::memset(q + size_t(rows) * lda, 0, size_t(extra_rows) * lda);
  const int T = std::max(1, std::min(threads, std::max(panels, strips)));
#pragma omp parallel num_threads(T)
  {
#pragma omp for schedule(static)
    for (int m = 0; m < rows; ++m)
      quantize_row(kernel, x + m * ldx, w.k(), int(lda), q + size_t(m) * lda, params + m);
    // (the implicit barrier: every row is quantised before any tile reads it)
    const int t = omp_get_thread_num(), nt = omp_get_num_threads();
    if (panels >= nt) {
      // Blocks of panels handed out one at a time (a thread that loses its core does fewer of them).
      const int per_task = std::max(1, std::min(kPanelsPerBlock, panels / nt));
      const int tasks = (panels + per_task - 1) / per_task;
#pragma omp for schedule(dynamic, 1) nowait
      for (int task = 0; task < tasks; ++task)
        block(kernel, w, q, lda, params, 0, rows, task * per_task, std::min(panels, (task + 1) * per_task), y,
              ldy, gelu_on, residual);
    } else {  // split the rows, in whole strips
      const int m0 = std::min(rows, strips * t / nt * kRows),
                m1 = std::min(rows, strips * (t + 1) / nt * kRows);
      if (m1 > m0) block(kernel, w, q, lda, params, m0, m1, 0, panels, y, ldy, gelu_on, residual);
    }
  }
}

}  // namespace perceiver::int8
