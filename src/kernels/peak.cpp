// measure_cpu_peak (perceiver.h): this CPU's peak rate of the instruction each precision's GEMMs are built
// on, from a loop of independent instructions on registers only (no loads, no stores), on every thread at
// once.
//   fp32  vfmadd231ps zmm (ymm without AVX-512)      16 (8) multiply-adds
//   bf16  vdpbf16ps zmm (AVX512_BF16; else oneDNN emulates bf16 with fp32 FMAs)   32 multiply-adds
//   int8  vpdpbusd zmm (AVX-512 VNNI) or ymm (AVX-VNNI), whichever int8_gemm.h runs   64 (32) multiply-adds
//   AMX   tdpbusd (int8 on the AMX kernel) and tdpbf16ps (bf16 where oneDNN runs AMX): 16 x 16 x 64
//         (16 x 16 x 32) multiply-adds per instruction on 16-row x 64-byte tiles
// One multiply-add counts as 2 operations. 20 accumulators: more independent chains than latency x
// throughput on current x86 cores (FMA 4 x 2, vdpbf16ps 6 x 2), so the loop runs at the issue rate; AMX has 4
// accumulator tiles, as the GEMM kernels use them (tdpbusd: 16-cycle throughput, under 64 cycles latency).
#include <immintrin.h>
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <cstring>

#include "kernels/fast_kernels.h"
#include "kernels/int8_gemm.h"
#include "perceiver/perceiver.h"
#if PERCEIVER_HAVE_ONEDNN
#include <dnnl.hpp>
#endif

namespace perceiver {
namespace {

constexpr int kChains = 20;

#define PCV_REPEAT20(X) \
  X(0)                  \
  X(1) X(2) X(3) X(4) X(5) X(6) X(7) X(8) X(9) X(10) X(11) X(12) X(13) X(14) X(15) X(16) X(17) X(18) X(19)

// Each loop: `iterations` rounds of kChains independent instructions; returns nothing the compiler could
// drop (the asm is volatile and its outputs feed the next round).
#define PCV_PEAK_LOOP(name, isa, reg_type, zero)                      \
  __attribute__((target(isa), noinline)) void name(long iterations) { \
    PCV_REPEAT20(PCV_DECL)                                            \
    reg_type x = zero;                                                \
    for (long i = 0; i < iterations; ++i) {                           \
      PCV_REPEAT20(PCV_STEP)                                          \
    }                                                                 \
    PCV_REPEAT20(PCV_SINK)                                            \
  }
#define PCV_STEP_ASM(insn, i) __asm__ volatile(insn " %1, %1, %0" : "+v"(c##i) : "v"(x));

#define PCV_DECL(i) __m512 c##i = _mm512_setzero_ps();
#define PCV_STEP(i) PCV_STEP_ASM("vfmadd231ps", i)
#define PCV_SINK(i) __asm__ volatile("" ::"v"(c##i));
PCV_PEAK_LOOP(fma512, "avx512f", __m512, _mm512_set1_ps(1e-9f))
#undef PCV_STEP
#define PCV_STEP(i) PCV_STEP_ASM("vdpbf16ps", i)
PCV_PEAK_LOOP(dpbf16_512, "avx512f,avx512bf16", __m512, _mm512_setzero_ps())
#undef PCV_STEP
#undef PCV_DECL
#define PCV_DECL(i) __m512i c##i = _mm512_setzero_si512();
#define PCV_STEP(i) PCV_STEP_ASM("vpdpbusd", i)
PCV_PEAK_LOOP(dpbusd512, "avx512f,avx512vnni", __m512i, _mm512_set1_epi8(1))
#undef PCV_STEP
#undef PCV_DECL
#define PCV_DECL(i) __m256 c##i = _mm256_setzero_ps();
#define PCV_STEP(i) PCV_STEP_ASM("vfmadd231ps", i)
PCV_PEAK_LOOP(fma256, "avx2,fma", __m256, _mm256_set1_ps(1e-9f))
#undef PCV_STEP
#undef PCV_DECL
#define PCV_DECL(i) __m256i c##i = _mm256_setzero_si256();
#define PCV_STEP(i) PCV_STEP_ASM("%{vex%} vpdpbusd", i)
PCV_PEAK_LOOP(dpbusd256, "avx2,avxvnni", __m256i, _mm256_set1_epi8(1))
#undef PCV_STEP
#undef PCV_DECL
#undef PCV_SINK

// AMX: all 8 tiles 16 rows x 64 bytes; 5 rounds of 4 independent tile products per iteration (20, as above).
struct alignas(64) TileConfig {
  uint8_t palette = 1, start_row = 0, reserved[14] = {};
  uint16_t bytes_per_row[16] = {};
  uint8_t rows[16] = {};
};
#define PCV_AMX_PEAK_LOOP(name, isa, insn)                                                          \
  __attribute__((target(isa), noinline)) void name(long iterations) {                               \
    TileConfig config;                                                                              \
    for (int t = 0; t < 8; ++t) config.bytes_per_row[t] = 64, config.rows[t] = 16;                  \
    __asm__ volatile(                                                                               \
        "ldtilecfg %0\n\ttilezero %%tmm0\n\ttilezero %%tmm1\n\ttilezero %%tmm2\n\t"                 \
        "tilezero %%tmm3\n\ttilezero %%tmm4\n\ttilezero %%tmm5\n\ttilezero %%tmm6\n\t"              \
        "tilezero %%tmm7" ::"m"(config)                                                             \
        : "memory");                                                                                \
    for (long i = 0; i < iterations; ++i)                                                           \
      for (int r = 0; r < 5; ++r)                                                                   \
        __asm__ volatile(insn " %%tmm6, %%tmm4, %%tmm0\n\t" insn " %%tmm7, %%tmm4, %%tmm1\n\t" insn \
                              " %%tmm6, %%tmm5, %%tmm2\n\t" insn " %%tmm7, %%tmm5, %%tmm3" ::);     \
    __asm__ volatile("tilerelease" ::: "memory");                                                   \
  }
PCV_AMX_PEAK_LOOP(amx_int8_loop, "amx-tile,amx-int8", "tdpbusd")
PCV_AMX_PEAK_LOOP(amx_bf16_loop, "amx-tile,amx-bf16", "tdpbf16ps")
#undef PCV_AMX_PEAK_LOOP

// Whether oneDNN's bf16 GEMMs run on AMX in this process.
bool onednn_uses_amx_bf16() {
#if PERCEIVER_HAVE_ONEDNN
  return fast::cpu_has_amx(fast::Amx::bf16) &&
         dnnl::get_effective_cpu_isa() >= dnnl::cpu_isa::avx512_core_amx;
#else
  return false;
#endif
}

bool has_avx512() { return fast::use_avx512(); }

bool has_avx512_bf16() {
  if (!has_avx512()) return false;
  unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;  // CPUID leaf 7 sub-leaf 1, EAX bit 5: AVX512_BF16
  __asm__ volatile("cpuid" : "=a"(eax), "=b"(ebx), "=c"(ecx), "=d"(edx) : "a"(7), "c"(1));
  return (eax >> 5) & 1u;
}

double seconds_of(void (*loop)(long), long iterations, int threads) {
  const auto t0 = std::chrono::steady_clock::now();
#pragma omp parallel num_threads(threads)
  loop(iterations);
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

}  // namespace

CpuPeak measure_cpu_peak(Precision precision, int threads, double seconds) {
  if (threads <= 0) threads = omp_get_num_procs();
  CpuPeak peak;
  void (*loop)(long) = nullptr;
  double ops_per_instruction = 0;  // multiply-adds x 2
#if defined(__x86_64__)
  __builtin_cpu_init();
  const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  if (precision == Precision::int8) {
    const int8::Kernel kernel = int8::best_kernel();
    if (kernel == int8::Kernel::amx_int8)
      loop = amx_int8_loop, ops_per_instruction = 2 * 16 * 16 * 64, peak.instruction = "tdpbusd (AMX)";
    else if (kernel == int8::Kernel::avx512_vnni)
      loop = dpbusd512, ops_per_instruction = 128, peak.instruction = "vpdpbusd zmm";
    else if (kernel == int8::Kernel::avx_vnni)
      loop = dpbusd256, ops_per_instruction = 64, peak.instruction = "vpdpbusd ymm";
  } else if (precision == Precision::bf16 && onednn_uses_amx_bf16()) {
    loop = amx_bf16_loop, ops_per_instruction = 2 * 16 * 16 * 32, peak.instruction = "tdpbf16ps (AMX)";
  } else if (precision == Precision::bf16 && has_avx512_bf16()) {
    loop = dpbf16_512, ops_per_instruction = 64, peak.instruction = "vdpbf16ps zmm";
  } else if (has_avx512()) {
    loop = fma512, ops_per_instruction = 32, peak.instruction = "vfmadd231ps zmm";
  } else if (avx2) {
    loop = fma256, ops_per_instruction = 16, peak.instruction = "vfmadd231ps ymm";
  }
#endif
  if (!loop) return peak;
  // Calibrate on a short run, then one run of about `seconds`.
  long iterations = 1 << 16;
  double t = seconds_of(loop, iterations, threads);
  while (t < 0.01) {
    iterations *= 4;
    t = seconds_of(loop, iterations, threads);
  }
  iterations = std::max(iterations, long(iterations * (seconds / t)));
  t = seconds_of(loop, iterations, threads);
  peak.gflops_per_s = double(iterations) * kChains * ops_per_instruction * threads / t * 1e-9;
  return peak;
}

}  // namespace perceiver
