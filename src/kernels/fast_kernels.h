// Vector kernels of the fast backend, hand-written for AVX-512 (F, BW, DQ, VL), with portable fallbacks. The
// build does not assume AVX-512: the AVX-512 versions are compiled for it with __attribute__((target)) and
// each function below picks its version once per process from cpu_has_avx512().
#pragma once

#include <cstdint>

namespace perceiver::fast {

bool cpu_has_avx512();       // avx512f + avx512bw + avx512dq + avx512vl
bool cpu_has_avx512_bf16();  // vcvtneps2bf16
// The AVX-512 kernels are in use: the CPU has them and PERCEIVER_DISABLE_AVX512 is not set.
bool use_avx512();
// A switch in the environment (PERCEIVER_DISABLE_AVX512, _AMX, _VNNI): set, non-empty and not "0".
bool env_flag(const char* name);

// AMX tiles of the given kind are usable by this process: the CPU has AMX-TILE and AMX-INT8 (or AMX-BF16),
// AVX-512 is in use, and Linux granted the tile state (arch_prctl ARCH_REQ_XCOMP_PERM, asked once per
// process). Whether a kernel uses them is its own choice (int8_gemm.h: PERCEIVER_DISABLE_AMX; oneDNN's bf16
// GEMMs: ONEDNN_MAX_CPU_ISA).
enum class Amx { int8, bf16 };
bool cpu_has_amx(Amx kind);

// y = (x - mean) / sqrt(var + eps) * gamma + beta over one row of n values (biased variance). y may alias x.
void layer_norm_row(const float* x, int n, const float* gamma, const float* beta, float eps, float* y);

// max_j x[j] * scale
float row_max_scaled(const float* x, int n, float scale);
// x[j] = exp(x[j] * scale - shift) in place, or, with y, y[j] = bf16(exp(x[j] * scale - shift)) with x left
// as it is; returns the sum of the new (fp32) values.
float exp_scaled_shifted_sum(float* x, int n, float scale, float shift, uint16_t* y = nullptr);
// y = x * a
void scale_copy(const float* x, int n, float a, float* y);
// y = y * a + x
void scale_add(const float* x, int n, float a, float* y);
// y = y * a
void scale_inplace(float* y, int n, float a);

// y = 0.5 y (1 + erf(y / sqrt 2)) in place (exact-form GELU; erf to about 2e-7 absolute).
void gelu_inplace(float* y, int n);

// fp32 -> bf16 bits, round to nearest even (as numerics.h's float_to_bf16_bits; NaN stays NaN).
void to_bf16(const float* x, long n, uint16_t* y);

}  // namespace perceiver::fast
