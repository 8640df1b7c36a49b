// Scalar numerics shared by the kernels.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

namespace perceiver {

// The fast kernels' exp() is 0 below this (exp(-86) = 4.5e-38, just above FLT_MIN): a denormal result, and
// every FMA that later takes it as an input, costs a microcode assist on Intel CPUs (65x slower per
// instruction here), and a trained model's softmax can hold many. In a softmax (sum >= 1) or in GELU's
// 1 - poly exp(-z^2) the flushed terms are below 1e-37 of the result.
constexpr float kExpFlushBelow = -86.0f;
inline float exp_flushed(float x) { return x < kExpFlushBelow ? 0.0f : std::exp(x); }

// Exact GELU, as torch.nn.functional.gelu (approximate='none').
inline float gelu_erf(float x) { return 0.5f * x * (1.0f + std::erf(x * 0.70710678118654752f)); }

// fp32 -> bf16 (round to nearest even; NaN kept quiet) -> fp32.
inline uint16_t float_to_bf16_bits(float x) {
  uint32_t u;
  std::memcpy(&u, &x, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x40);
  u += 0x7fffu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(u >> 16);
}
inline float bf16_bits_to_float(uint16_t b) {
  uint32_t u = uint32_t(b) << 16;
  float x;
  std::memcpy(&x, &u, 4);
  return x;
}
inline float round_to_bf16(float x) { return bf16_bits_to_float(float_to_bf16_bits(x)); }

}  // namespace perceiver
