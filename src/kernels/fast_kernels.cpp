// AVX-512 vector kernels (see fast_kernels.h). Every function that uses AVX-512 carries PCV_AVX512 so that
// the rest of the build stays baseline x86-64; nothing here instantiates std templates (which could be merged
// with baseline copies at link time).
#include "kernels/fast_kernels.h"

// GCC 12's AVX-512 intrinsics headers trip -Wuninitialized on their own _mm512_undefined_*() placeholders
// (GCC bug 105593, fixed in GCC 13); silence that false positive for this file only.
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#if defined(__linux__)
#include <sys/syscall.h>
#include <unistd.h>
#endif

#include "kernels/avx512_math.h"
#include "kernels/numerics.h"

namespace perceiver::fast {

bool cpu_has_avx512() {
#if !defined(__x86_64__)
  return false;
#else
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl");
#endif
}

bool cpu_has_avx512_bf16() {
  if (!cpu_has_avx512()) return false;
#if defined(__x86_64__)
  // CPUID leaf 7 sub-leaf 1, EAX bit 5: AVX512_BF16 (GCC 12's __builtin_cpu_supports does not know it).
  unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
  __asm__ volatile("cpuid" : "=a"(eax), "=b"(ebx), "=c"(ecx), "=d"(edx) : "a"(7), "c"(1));
  return (eax >> 5) & 1u;
#else
  return false;
#endif
}

namespace avx512 {

PCV_AVX512 void layer_norm_row(const float* x, int n, const float* gamma, const float* beta, float eps,
                               float* y) {
  // Pass 1: mean; pass 2: centred sum of squares (the row is in L1 by then); pass 3: normalise.
  __m512 s0 = _mm512_setzero_ps(), s1 = _mm512_setzero_ps();
  int j = 0;
  for (; j + 32 <= n; j += 32) {
    s0 = _mm512_add_ps(s0, _mm512_loadu_ps(x + j));
    s1 = _mm512_add_ps(s1, _mm512_loadu_ps(x + j + 16));
  }
  for (; j + 16 <= n; j += 16) s0 = _mm512_add_ps(s0, _mm512_loadu_ps(x + j));
  if (j < n) s1 = _mm512_add_ps(s1, _mm512_maskz_loadu_ps(tail_mask(n - j), x + j));
  const float mean = _mm512_reduce_add_ps(_mm512_add_ps(s0, s1)) / static_cast<float>(n);
  const __m512 vmean = _mm512_set1_ps(mean);
  s0 = _mm512_setzero_ps();
  s1 = _mm512_setzero_ps();
  for (j = 0; j + 32 <= n; j += 32) {
    const __m512 d0 = _mm512_sub_ps(_mm512_loadu_ps(x + j), vmean);
    const __m512 d1 = _mm512_sub_ps(_mm512_loadu_ps(x + j + 16), vmean);
    s0 = _mm512_fmadd_ps(d0, d0, s0);
    s1 = _mm512_fmadd_ps(d1, d1, s1);
  }
  for (; j + 16 <= n; j += 16) {
    const __m512 d = _mm512_sub_ps(_mm512_loadu_ps(x + j), vmean);
    s0 = _mm512_fmadd_ps(d, d, s0);
  }
  if (j < n) {
    const __mmask16 m = tail_mask(n - j);
    const __m512 d = _mm512_maskz_sub_ps(m, _mm512_maskz_loadu_ps(m, x + j), vmean);
    s1 = _mm512_fmadd_ps(d, d, s1);
  }
  const float var = _mm512_reduce_add_ps(_mm512_add_ps(s0, s1)) / static_cast<float>(n);
  const __m512 inv = _mm512_set1_ps(1.0f / __builtin_sqrtf(var + eps));
  for (j = 0; j + 16 <= n; j += 16) {
    const __m512 d = _mm512_mul_ps(_mm512_sub_ps(_mm512_loadu_ps(x + j), vmean), inv);
    _mm512_storeu_ps(y + j, _mm512_fmadd_ps(d, _mm512_loadu_ps(gamma + j), _mm512_loadu_ps(beta + j)));
  }
  if (j < n) {
    const __mmask16 m = tail_mask(n - j);
    const __m512 d = _mm512_mul_ps(_mm512_sub_ps(_mm512_maskz_loadu_ps(m, x + j), vmean), inv);
    _mm512_mask_storeu_ps(
        y + j, m,
        _mm512_fmadd_ps(d, _mm512_maskz_loadu_ps(m, gamma + j), _mm512_maskz_loadu_ps(m, beta + j)));
  }
}

PCV_AVX512 float row_max_scaled(const float* x, int n, float scale) {
  const __m512 vs = _mm512_set1_ps(scale);
  __m512 m0 = _mm512_set1_ps(-__builtin_inff()), m1 = m0;
  int j = 0;
  for (; j + 32 <= n; j += 32) {
    m0 = _mm512_max_ps(m0, _mm512_mul_ps(_mm512_loadu_ps(x + j), vs));
    m1 = _mm512_max_ps(m1, _mm512_mul_ps(_mm512_loadu_ps(x + j + 16), vs));
  }
  for (; j + 16 <= n; j += 16) m0 = _mm512_max_ps(m0, _mm512_mul_ps(_mm512_loadu_ps(x + j), vs));
  if (j < n)
    m1 = _mm512_mask_max_ps(m1, tail_mask(n - j), m1,
                            _mm512_mul_ps(_mm512_maskz_loadu_ps(tail_mask(n - j), x + j), vs));
  return _mm512_reduce_max_ps(_mm512_max_ps(m0, m1));
}

// Round to nearest even with integer arithmetic (AVX-512F only): bits + 0x7fff + lsb, NaNs kept quiet.
PCV_AVX512 inline __m256i bf16_round_avx512(__m512 v) {
  const __m512i u = _mm512_castps_si512(v);
  const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
  __m512i r = _mm512_srli_epi32(_mm512_add_epi32(_mm512_add_epi32(u, _mm512_set1_epi32(0x7fff)), lsb), 16);
  const __mmask16 nan = _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
  r = _mm512_mask_or_epi32(r, nan, _mm512_srli_epi32(u, 16), _mm512_set1_epi32(0x40));
  return _mm512_cvtepi32_epi16(r);
}

PCV_AVX512 inline void store_f32_or_bf16(float* x, uint16_t* y, int j, __m512 e) {
  if (y)
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(y + j), bf16_round_avx512(e));
  else
    _mm512_storeu_ps(x + j, e);
}

// The new values go to x, or as bf16 to y when y is given (x then stays as it was).
PCV_AVX512 float exp_scaled_shifted_sum(float* x, int n, float scale, float shift, uint16_t* y) {
  const __m512 vs = _mm512_set1_ps(scale), vsh = _mm512_set1_ps(shift);
  __m512 s0 = _mm512_setzero_ps(), s1 = _mm512_setzero_ps();
  int j = 0;
  for (; j + 32 <= n; j += 32) {
    const __m512 e0 = exp512(_mm512_fmsub_ps(_mm512_loadu_ps(x + j), vs, vsh));
    const __m512 e1 = exp512(_mm512_fmsub_ps(_mm512_loadu_ps(x + j + 16), vs, vsh));
    store_f32_or_bf16(x, y, j, e0);
    store_f32_or_bf16(x, y, j + 16, e1);
    s0 = _mm512_add_ps(s0, e0);
    s1 = _mm512_add_ps(s1, e1);
  }
  for (; j + 16 <= n; j += 16) {
    const __m512 e = exp512(_mm512_fmsub_ps(_mm512_loadu_ps(x + j), vs, vsh));
    store_f32_or_bf16(x, y, j, e);
    s0 = _mm512_add_ps(s0, e);
  }
  if (j < n) {
    const __mmask16 m = tail_mask(n - j);
    const __m512 e =
        _mm512_maskz_mov_ps(m, exp512(_mm512_fmsub_ps(_mm512_maskz_loadu_ps(m, x + j), vs, vsh)));
    if (y)
      _mm256_mask_storeu_epi16(y + j, m, bf16_round_avx512(e));
    else
      _mm512_mask_storeu_ps(x + j, m, e);
    s1 = _mm512_add_ps(s1, e);
  }
  return _mm512_reduce_add_ps(_mm512_add_ps(s0, s1));
}

PCV_AVX512 void scale_copy(const float* x, int n, float a, float* y) {
  const __m512 va = _mm512_set1_ps(a);
  int j = 0;
  for (; j + 16 <= n; j += 16) _mm512_storeu_ps(y + j, _mm512_mul_ps(_mm512_loadu_ps(x + j), va));
  if (j < n)
    _mm512_mask_storeu_ps(y + j, tail_mask(n - j),
                          _mm512_mul_ps(_mm512_maskz_loadu_ps(tail_mask(n - j), x + j), va));
}

PCV_AVX512 void scale_add(const float* x, int n, float a, float* y) {
  const __m512 va = _mm512_set1_ps(a);
  int j = 0;
  for (; j + 16 <= n; j += 16)
    _mm512_storeu_ps(y + j, _mm512_fmadd_ps(_mm512_loadu_ps(y + j), va, _mm512_loadu_ps(x + j)));
  if (j < n) {
    const __mmask16 m = tail_mask(n - j);
    _mm512_mask_storeu_ps(
        y + j, m, _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, y + j), va, _mm512_maskz_loadu_ps(m, x + j)));
  }
}

PCV_AVX512 void scale_inplace(float* y, int n, float a) { scale_copy(y, n, a, y); }

// GELU by avx512::gelu512 (avx512_math.h).
PCV_AVX512 void gelu_inplace(float* y, int n) {
  int j = 0;
  for (; j + 16 <= n; j += 16) _mm512_storeu_ps(y + j, gelu512(_mm512_loadu_ps(y + j)));
  if (j < n) {
    const __mmask16 m = tail_mask(n - j);
    _mm512_mask_storeu_ps(y + j, m, gelu512(_mm512_maskz_loadu_ps(m, y + j)));
  }
}

PCV_AVX512 void to_bf16_avx512(const float* x, long n, uint16_t* y) {
  long j = 0;
  for (; j + 16 <= n; j += 16)
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(y + j), bf16_round_avx512(_mm512_loadu_ps(x + j)));
  if (j < n) {
    const __mmask16 m = tail_mask(static_cast<int>(n - j));
    _mm256_mask_storeu_epi16(y + j, m, bf16_round_avx512(_mm512_maskz_loadu_ps(m, x + j)));
  }
}

}  // namespace avx512

// Portable versions for CPUs without AVX-512 (the compiler vectorises them for the baseline ISA).
namespace portable {

void layer_norm_row(const float* x, int n, const float* gamma, const float* beta, float eps, float* y) {
  float sum = 0;
  for (int j = 0; j < n; ++j) sum += x[j];
  const float mean = sum / static_cast<float>(n);
  float sq = 0;
  for (int j = 0; j < n; ++j) sq += (x[j] - mean) * (x[j] - mean);
  const float inv = 1.0f / std::sqrt(sq / static_cast<float>(n) + eps);
  for (int j = 0; j < n; ++j) y[j] = (x[j] - mean) * inv * gamma[j] + beta[j];
}

float row_max_scaled(const float* x, int n, float scale) {
  float m = -INFINITY;
  for (int j = 0; j < n; ++j) m = std::max(m, x[j] * scale);
  return m;
}

float exp_scaled_shifted_sum(float* x, int n, float scale, float shift, uint16_t* y) {
  float sum = 0;
  for (int j = 0; j < n; ++j) {
    const float e = exp_flushed(x[j] * scale - shift);
    if (y)
      y[j] = float_to_bf16_bits(e);
    else
      x[j] = e;
    sum += e;
  }
  return sum;
}

void scale_copy(const float* x, int n, float a, float* y) {
  for (int j = 0; j < n; ++j) y[j] = x[j] * a;
}
void scale_add(const float* x, int n, float a, float* y) {
  for (int j = 0; j < n; ++j) y[j] = y[j] * a + x[j];
}
void to_bf16(const float* x, long n, uint16_t* y) {
  for (long j = 0; j < n; ++j) y[j] = float_to_bf16_bits(x[j]);
}
void gelu_inplace(float* y, int n) {
  for (int j = 0; j < n; ++j) y[j] = gelu_erf(y[j]);
}

}  // namespace portable

// Dispatch once per process on what this CPU supports. PERCEIVER_DISABLE_AVX512=1 forces the portable loops
// (tests use it, with ONEDNN_MAX_CPU_ISA=AVX2, to check the path other CPUs take).
bool env_flag(const char* name) {
  const char* v = std::getenv(name);
  return v && *v && std::strcmp(v, "0") != 0;
}

namespace {
const bool kUseAvx512 = cpu_has_avx512() && !env_flag("PERCEIVER_DISABLE_AVX512");
}

bool use_avx512() { return kUseAvx512; }

bool cpu_has_amx(Amx kind) {
#if defined(__x86_64__) && defined(__linux__)
  if (!kUseAvx512) return false;
  // CPUID leaf 7 sub-leaf 0, EDX: bit 22 AMX-BF16, bit 24 AMX-TILE, bit 25 AMX-INT8.
  unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
  __asm__ volatile("cpuid" : "=a"(eax), "=b"(ebx), "=c"(ecx), "=d"(edx) : "a"(7), "c"(0));
  const bool tile = (edx >> 24) & 1u;
  const bool unit = kind == Amx::int8 ? (edx >> 25) & 1u : (edx >> 22) & 1u;
  if (!tile || !unit) return false;
  // The tile data (XFEATURE 18) is off until the process asks for it; without it a tile instruction faults.
  static const bool permitted = [] {
    constexpr long kArchReqXcompPerm = 0x1023, kXfeatureXtiledata = 18;
    return syscall(SYS_arch_prctl, kArchReqXcompPerm, kXfeatureXtiledata) == 0;
  }();
  return permitted;
#else
  (void)kind;
  return false;
#endif
}

void layer_norm_row(const float* x, int n, const float* gamma, const float* beta, float eps, float* y) {
  kUseAvx512 ? avx512::layer_norm_row(x, n, gamma, beta, eps, y)
             : portable::layer_norm_row(x, n, gamma, beta, eps, y);
}
float row_max_scaled(const float* x, int n, float scale) {
  return kUseAvx512 ? avx512::row_max_scaled(x, n, scale) : portable::row_max_scaled(x, n, scale);
}
float exp_scaled_shifted_sum(float* x, int n, float scale, float shift, uint16_t* y) {
  return kUseAvx512 ? avx512::exp_scaled_shifted_sum(x, n, scale, shift, y)
                    : portable::exp_scaled_shifted_sum(x, n, scale, shift, y);
}
void scale_copy(const float* x, int n, float a, float* y) {
  kUseAvx512 ? avx512::scale_copy(x, n, a, y) : portable::scale_copy(x, n, a, y);
}
void scale_add(const float* x, int n, float a, float* y) {
  kUseAvx512 ? avx512::scale_add(x, n, a, y) : portable::scale_add(x, n, a, y);
}
void scale_inplace(float* y, int n, float a) { scale_copy(y, n, a, y); }
void gelu_inplace(float* y, int n) { kUseAvx512 ? avx512::gelu_inplace(y, n) : portable::gelu_inplace(y, n); }
// The integer path rather than vcvtneps2bf16 (which flushes denormal inputs to zero): bit-identical to the
// reference backend's emulation, and the conversion is memory-bound either way.
void to_bf16(const float* x, long n, uint16_t* y) {
  kUseAvx512 ? avx512::to_bf16_avx512(x, n, y) : portable::to_bf16(x, n, y);
}

}  // namespace perceiver::fast
