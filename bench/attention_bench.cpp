// bench_attention: our fused fp32 attention (src/kernels/fast_attention.cpp) on one shape, with Q, K and V in
// one [tokens, 3 x heads x d] buffer as the self-attention's fused projection writes them. Prints min/median
// GFLOP/s (QK^T and PV products, 4 nq nk d per head) and the largest difference from the reference backend.
// --evict-mb N writes N MB between calls, so that Q, K and V come from memory as in the model.
//   bench_attention [--tokens 512] [--heads 8] [--d 128] [--threads 2] [--reps 60] [--evict-mb 32]
#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <vector>

#include "kernels/fast_attention.h"
#include "kernels/fast_kernels.h"
#include "kernels/kernels.h"

int main(int argc, char** argv) {
  using namespace perceiver;
  int tokens = 512, heads = 8, d = 128, threads = 2, reps = 60, evict_mb = 32;
  CLI::App app{"Our fused fp32 attention on one self-attention shape"};
  app.add_option("--tokens", tokens, "queries = keys")->check(CLI::Range(1, 1 << 16));
  app.add_option("--heads", heads, "heads")->check(CLI::Range(1, 256));
  app.add_option("--d", d, "channels per head (query/key and value)")->check(CLI::Range(1, 4096));
  app.add_option("--threads", threads, "threads")->check(CLI::Range(1, 1024));
  app.add_option("--reps", reps, "timed calls")->check(CLI::Range(1, 100000));
  app.add_option("--evict-mb", evict_mb, "MB written between calls (0: warm caches)")
      ->check(CLI::Range(0, 4096));
  CLI11_PARSE(app, argc, argv);
  if (!fast::use_avx512()) {
    std::fprintf(stderr, "bench_attention: this CPU has no AVX-512; this kernel does not run here\n");
    return 2;
  }
  const long ld = 3L * heads * d;
  std::vector<float> qkv(size_t(tokens) * ld), out(size_t(tokens) * heads * d), want(out.size());
  std::vector<float> junk(size_t(evict_mb) << 18);
  uint32_t s = 12345;
  for (auto& v : qkv) {
    s ^= s << 13;
    s ^= s >> 17;
    s ^= s << 5;
    v = float(s >> 8) / 16777216.0f - 0.5f;
  }
  AttentionArgs a;
  a.q = qkv.data();
  a.k = qkv.data() + heads * d;
  a.v = qkv.data() + 2 * heads * d;
  a.out = out.data();
  a.heads = heads;
  a.nq = a.nk = tokens;
  a.dqk = a.dv = d;
  a.ldq = a.ldk = a.ldv = ld;
  a.ldo = long(heads) * d;
  a.scale = float(1.0 / std::sqrt(double(d)));

  fast::AttentionFp32 attention;
  std::vector<double> seconds;
  for (int r = -3; r < reps; ++r) {  // 3 warm-up calls
    for (size_t i = 0; i < junk.size(); i += 16) junk[i] += 1.0f;
    const auto t0 = std::chrono::steady_clock::now();
    attention.run(a, threads);
    const double t = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (r >= 0) seconds.push_back(t);
  }
  AttentionArgs r = a;
  r.out = want.data();
  make_reference_backend(threads)->attention(r);
  double diff = 0, scale = 1;
  for (size_t i = 0; i < out.size(); ++i) {
    diff = std::max(diff, double(std::abs(out[i] - want[i])));
    scale = std::max(scale, double(std::abs(want[i])));
  }
  std::sort(seconds.begin(), seconds.end());
  const double gflop = 4.0 * heads * double(tokens) * tokens * d * 1e-9;
  std::printf("attention %dx%d, %d heads of %d, %d threads, %d calls, %d MB evicted between calls\n", tokens,
              tokens, heads, d, threads, reps, evict_mb);
  std::printf("GFLOP/s: min-time %.1f, median %.1f (%.3f ms median)\n", gflop / seconds.front(),
              gflop / seconds[seconds.size() / 2], seconds[seconds.size() / 2] * 1e3);
  std::printf("max |ours - reference|: %.3g (%.2g of max|out|)\n", diff, diff / scale);
  return diff / scale < 1e-5 ? 0 : 1;
}
