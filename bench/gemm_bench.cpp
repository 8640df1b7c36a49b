// bench_gemm: y = x W^T on one linear-layer shape, our AVX-512 fp32 GEMM (src/kernels/fast_gemm.h) against
// oneDNN's f32 matmul with W read in place (PyTorch layout, "ba") and with W packed by oneDNN ("any"), the
// three interleaved call by call so that the noise of a shared machine hits them alike. Prints min/median
// GFLOP/s of each and the ratios, and the largest difference between the outputs.
// --weight-sets N cycles through N different weight matrices, call by call, so that W comes from memory as
// in the model (its 48 self-attention layers stream 144 MB of weights) instead of staying in the caches.
//   bench_gemm [--rows 512] [--in 1024] [--out 1024] [--threads 2] [--reps 60] [--weight-sets 1]
#include <omp.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <dnnl.hpp>
#include <vector>

#include "bench_timing.h"
#include "kernels/fast_gemm.h"
#include "kernels/fast_kernels.h"

using perceiver::bench::seconds_now;
using perceiver::bench::Timing;

int main(int argc, char** argv) {
  int rows = 512, in = 1024, out = 1024, threads = 2, reps = 60, weight_sets = 1;
  CLI::App app{"Our fp32 GEMM against oneDNN on one linear-layer shape, interleaved"};
  app.add_option("--rows", rows, "M (rows of x)")->check(CLI::Range(1, 1 << 16));
  app.add_option("--in", in, "K (in features)")->check(CLI::Range(1, 1 << 16));
  app.add_option("--out", out, "N (out features)")->check(CLI::Range(1, 1 << 16));
  app.add_option("--threads", threads, "threads")->check(CLI::Range(1, 1024));
  app.add_option("--reps", reps, "timed calls of each")->check(CLI::Range(1, 100000));
  app.add_option("--weight-sets", weight_sets, "distinct weight matrices, used in turn (cold W)")
      ->check(CLI::Range(1, 1024));
  CLI11_PARSE(app, argc, argv);
  if (!perceiver::fast::use_avx512()) {
    std::fprintf(stderr, "bench_gemm: this CPU has no AVX-512; our GEMM does not run here\n");
    return 2;
  }
  omp_set_num_threads(threads);
  std::vector<float> x(size_t(rows) * in), y_ours(size_t(rows) * out), y_inplace(y_ours.size()),
      y_packed(y_ours.size());
  uint32_t s = 12345;
  auto uniform = [&] {
    s ^= s << 13;
    s ^= s >> 17;
    s ^= s << 5;
    return float(s >> 8) / 16777216.0f - 0.5f;
  };
  for (auto& v : x) v = uniform();
  std::vector<std::vector<float>> w(weight_sets, std::vector<float>(size_t(out) * in));
  std::vector<perceiver::fast::GemmWeights> packed;
  for (auto& set : w) {
    for (auto& v : set) v = uniform();
    packed.emplace_back(std::vector<const float*>{set.data()}, std::vector<int>{out},
                        std::vector<const float*>{nullptr}, in, threads);
  }

  using namespace dnnl;
  engine eng(engine::kind::cpu, 0);
  stream st(eng);
  const memory::desc a_md({rows, in}, memory::data_type::f32, memory::format_tag::ab);
  const memory::desc c_md({rows, out}, memory::data_type::f32, memory::format_tag::ab);
  const memory::desc w_ba({in, out}, memory::data_type::f32, memory::format_tag::ba);
  const memory::desc w_any({in, out}, memory::data_type::f32, memory::format_tag::any);
  matmul::primitive_desc pd_inplace(matmul::desc(a_md, w_ba, c_md), eng);
  matmul::primitive_desc pd_packed(matmul::desc(a_md, w_any, c_md), eng);
  matmul mm_inplace(pd_inplace), mm_packed(pd_packed);
  memory xm(a_md, eng, x.data());
  std::vector<memory> wm, wp;
  for (auto& set : w) {
    wm.emplace_back(w_ba, eng, set.data());
    wp.emplace_back(pd_packed.weights_desc(), eng);
    reorder(wm.back(), wp.back()).execute(st, wm.back(), wp.back());
  }
  memory y1(c_md, eng, y_inplace.data()), y2(c_md, eng, y_packed.data());
  st.wait();

  perceiver::Scratch scratch;
  Timing ours, inplace, onednn_packed;
  for (int r = -3; r < reps; ++r) {  // 3 warm-up rounds
    const size_t set = size_t(r + 3) % w.size();
    double t0 = seconds_now();
    perceiver::fast::gemm_f32(packed[set], x.data(), in, rows, y_ours.data(), out, false, false, threads,
                              scratch);
    double t1 = seconds_now();
    mm_inplace.execute(st, {{DNNL_ARG_SRC, xm}, {DNNL_ARG_WEIGHTS, wm[set]}, {DNNL_ARG_DST, y1}});
    st.wait();
    double t2 = seconds_now();
    mm_packed.execute(st, {{DNNL_ARG_SRC, xm}, {DNNL_ARG_WEIGHTS, wp[set]}, {DNNL_ARG_DST, y2}});
    st.wait();
    double t3 = seconds_now();
    if (r < 0) continue;
    ours.s.push_back(t1 - t0);
    inplace.s.push_back(t2 - t1);
    onednn_packed.s.push_back(t3 - t2);
  }
  double diff = 0, scale = 1;
  for (size_t i = 0; i < y_ours.size(); ++i) {
    diff = std::max(
        {diff, double(std::abs(y_ours[i] - y_inplace[i])), double(std::abs(y_ours[i] - y_packed[i]))});
    scale = std::max(scale, double(std::abs(y_packed[i])));
  }
  const double gflop = 2.0 * rows * in * out * 1e-9;
  std::printf("shape %dx%dx%d, %d threads, %d interleaved calls each, %d weight set(s)\n", rows, in, out,
              threads, reps, weight_sets);
  std::printf("%-28s %10s %10s\n", "GEMM", "min GF/s", "med GF/s");
  auto row = [&](const char* name, const Timing& t) {
    std::printf("%-28s %10.1f %10.1f\n", name, gflop / t.min(), gflop / t.median());
  };
  row("ours (AVX-512, packed W)", ours);
  row("oneDNN, W in place (ba)", inplace);
  row("oneDNN, W packed (any)", onednn_packed);
  std::printf("median speed-up: %.3fx vs oneDNN in place, %.3fx vs oneDNN packed\n",
              inplace.median() / ours.median(), onednn_packed.median() / ours.median());
  std::printf("max |difference| between outputs: %.3g (%.2g of max|y|)\n", diff, diff / scale);
  return diff / scale < 1e-5 ? 0 : 1;
}
