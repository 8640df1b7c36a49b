// Small AVX-512 helpers shared by the hand-written kernels. Include only from files whose AVX-512 functions
// carry PCV_AVX512 (the rest of the build stays baseline x86-64), after <immintrin.h>.
#pragma once

#include <immintrin.h>

#include "kernels/numerics.h"

#define PCV_AVX512 __attribute__((target("avx512f,avx512bw,avx512dq,avx512vl,fma")))

namespace perceiver::fast::avx512 {

// Lanes [0, n) of 16, for 0 <= n <= 16.
PCV_AVX512 inline __mmask16 tail_mask(int n) { return static_cast<__mmask16>((1u << n) - 1u); }

// exp(x) for x <= ~88: x = k ln2 + r, |r| <= ln2/2, degree-6 Taylor polynomial for exp(r) (relative error
// about 2e-7), then 2^k by vscalefps; 0 below kExpFlushBelow.
PCV_AVX512 inline __m512 exp512(__m512 x) {
  const __mmask16 normal = _mm512_cmp_ps_mask(x, _mm512_set1_ps(kExpFlushBelow), _CMP_GE_OQ);
  x = _mm512_max_ps(x, _mm512_set1_ps(-100.0f));
  const __m512 k = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(k, _mm512_set1_ps(0.693145751953125f), x);  // ln2 split hi/lo
  r = _mm512_fnmadd_ps(k, _mm512_set1_ps(1.42860682030941723212e-6f), r);
  __m512 p = _mm512_set1_ps(1.0f / 720);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 120));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 24));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 6));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
  return _mm512_maskz_scalef_ps(normal, p, k);
}

// GELU(x) = 0.5 x (1 + erf(x / sqrt 2)), erf(x) = 1 - t (a1 + t (a2 + t (a3 + t (a4 + t a5)))) exp(-x^2),
// t = 1 / (1 + p |x|), sign restored (Abramowitz & Stegun 7.1.26: |error| <= 1.5e-7).
PCV_AVX512 inline __m512 gelu512(__m512 x) {
  const __m512 one = _mm512_set1_ps(1.0f), sign_bit = _mm512_set1_ps(-0.0f);
  const __m512 z = _mm512_mul_ps(x, _mm512_set1_ps(0.70710678118654752f));
  const __m512 az = _mm512_andnot_ps(sign_bit, z);
  // t = 1 / d by vrcp14ps and one Newton step (relative error ~1e-8; vdivps would dominate the loop)
  const __m512 d = _mm512_fmadd_ps(_mm512_set1_ps(0.3275911f), az, one);
  __m512 t = _mm512_rcp14_ps(d);
  t = _mm512_mul_ps(t, _mm512_fnmadd_ps(d, t, _mm512_set1_ps(2.0f)));
  __m512 poly = _mm512_fmadd_ps(_mm512_set1_ps(1.061405429f), t, _mm512_set1_ps(-1.453152027f));
  poly = _mm512_fmadd_ps(poly, t, _mm512_set1_ps(1.421413741f));
  poly = _mm512_fmadd_ps(poly, t, _mm512_set1_ps(-0.284496736f));
  poly = _mm512_fmadd_ps(poly, t, _mm512_set1_ps(0.254829592f));
  poly = _mm512_mul_ps(poly, t);
  const __m512 e = exp512(_mm512_mul_ps(_mm512_xor_ps(az, sign_bit), az));  // exp(-z^2)
  const __m512 erf_abs = _mm512_fnmadd_ps(poly, e, one);
  const __m512 erf = _mm512_or_ps(erf_abs, _mm512_and_ps(z, sign_bit));
  return _mm512_mul_ps(_mm512_mul_ps(_mm512_set1_ps(0.5f), x), _mm512_add_ps(one, erf));
}

}  // namespace perceiver::fast::avx512
