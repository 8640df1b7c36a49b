// Small AVX-512 helpers shared by the hand-written kernels. Include only from files whose AVX-512 functions
// carry PCV_AVX512 (the rest of the build stays baseline x86-64), after <immintrin.h>.
#pragma once

#include <immintrin.h>

#define PCV_AVX512 __attribute__((target("avx512f,avx512bw,avx512dq,avx512vl,fma")))

namespace perceiver::fast::avx512 {

// Lanes [0, n) of 16, for 0 <= n <= 16.
PCV_AVX512 inline __mmask16 tail_mask(int n) { return static_cast<__mmask16>((1u << n) - 1u); }

// exp(x) for x <= ~88: x = k ln2 + r, |r| <= ln2/2, degree-6 Taylor polynomial for exp(r) (relative error
// about 2e-7), then 2^k by vscalefps, which also gives 0 for very negative x.
PCV_AVX512 inline __m512 exp512(__m512 x) {
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
  return _mm512_scalef_ps(p, k);
}

}  // namespace perceiver::fast::avx512
