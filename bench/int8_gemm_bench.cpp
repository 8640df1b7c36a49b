// bench_int8_gemm: y = x W^T + b on one linear-layer shape: our fp32 GEMM (fast_gemm.h), our int8 kernels
// (int8_gemm.h: AMX-INT8, AVX-512 VNNI, AVX-VNNI, whichever this CPU has; activation quantisation and the
// fp32 epilogue included) and oneDNN's u8 x s8 -> s32 matmul (its raw product only: no quantisation, no
// dequantisation), interleaved call by call so that the noise of a shared machine hits them alike. Prints
// min/median GFLOP/s (GOP/s for int8) of each.
//   bench_int8_gemm [--rows 512] [--in 1024] [--out 1024] [--threads 2] [--reps 40] [--weight-sets 8]
#include <omp.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <dnnl.hpp>
#include <vector>

#include "bench_timing.h"
#include "kernels/fast_gemm.h"
#include "kernels/fast_kernels.h"
#include "kernels/int8_gemm.h"

using perceiver::bench::seconds_now;
using perceiver::bench::Timing;

int main(int argc, char** argv) {
  int rows = 512, in = 1024, out = 1024, threads = 2, reps = 40, weight_sets = 8;
  bool gelu = false;
  CLI::App app{"Our int8 GEMM against our fp32 GEMM and oneDNN's int8 matmul, interleaved"};
  app.add_option("--rows", rows, "M (rows of x)")->check(CLI::Range(1, 1 << 16));
  app.add_option("--in", in, "K (in features)")->check(CLI::Range(1, 1 << 15));
  app.add_option("--out", out, "N (out features)")->check(CLI::Range(1, 1 << 16));
  app.add_option("--threads", threads, "threads")->check(CLI::Range(1, 1024));
  app.add_option("--reps", reps, "timed calls of each")->check(CLI::Range(1, 100000));
  app.add_option("--weight-sets", weight_sets, "distinct weight matrices, used in turn (cold W)")
      ->check(CLI::Range(1, 1024));
  app.add_flag("--gelu", gelu, "GELU in the epilogue (ours)");
  CLI11_PARSE(app, argc, argv);
  using perceiver::int8::Kernel;
  std::vector<Kernel> kernels;
  for (Kernel k : {Kernel::amx_int8, Kernel::avx512_vnni, Kernel::avx_vnni})
    if (perceiver::int8::kernel_supported(k)) kernels.push_back(k);
  omp_set_num_threads(threads);

  uint32_t s = 12345;
  auto uniform = [&] {
    s ^= s << 13;
    s ^= s >> 17;
    s ^= s << 5;
    return float(s >> 8) / 16777216.0f - 0.5f;
  };
  std::vector<float> x(size_t(rows) * in), y(size_t(rows) * out), bias(out);
  for (auto& v : x) v = uniform();
  for (auto& v : bias) v = uniform();
  std::vector<std::vector<float>> w(weight_sets, std::vector<float>(size_t(out) * in));
  std::vector<perceiver::fast::GemmWeights> f32;
  std::vector<perceiver::int8::Int8Weights> i8;
  for (auto& set : w) {
    for (auto& v : set) v = uniform();
    if (perceiver::fast::use_avx512())
      f32.emplace_back(std::vector<const float*>{set.data()}, std::vector<int>{out},
                       std::vector<const float*>{bias.data()}, in, threads);
    i8.emplace_back(std::vector<perceiver::LinearPart>{{set.data(), bias.data(), out}}, in, threads);
  }

  using namespace dnnl;
  engine eng(engine::kind::cpu, 0);
  stream st(eng);
  const memory::desc a_md({rows, in}, memory::data_type::u8, memory::format_tag::ab);
  const memory::desc c_md({rows, out}, memory::data_type::s32, memory::format_tag::ab);
  const memory::desc w_any({in, out}, memory::data_type::s8, memory::format_tag::any);
  matmul::primitive_desc pd(matmul::desc(a_md, w_any, c_md), eng);
  matmul mm(pd);
  std::vector<uint8_t> xq(size_t(rows) * in, 3);
  std::vector<int32_t> yq(size_t(rows) * out);
  memory xm(a_md, eng, xq.data()), ym(c_md, eng, yq.data());
  std::vector<memory> wp;
  std::vector<int8_t> plain(size_t(in) * out, 1);
  for (int i = 0; i < weight_sets; ++i) {
    memory src({{in, out}, memory::data_type::s8, memory::format_tag::ba}, eng, plain.data());
    wp.emplace_back(pd.weights_desc(), eng);
    reorder(src, wp.back()).execute(st, src, wp.back());
  }
  st.wait();

  perceiver::Scratch scratch;
  Timing t_f32{"ours fp32 (AVX-512)", {}}, t_onednn{"oneDNN u8s8s32 (raw)", {}};
  std::vector<Timing> t_i8;
  for (Kernel k : kernels) t_i8.push_back({perceiver::int8::kernel_name(k), {}});
  for (int r = -3; r < reps; ++r) {
    const size_t set = size_t(r + 3) % w.size();
    if (!f32.empty()) {
      const double t0 = seconds_now();
      perceiver::fast::gemm_f32(f32[set], x.data(), in, rows, y.data(), out, false, gelu, threads, scratch);
      if (r >= 0) t_f32.s.push_back(seconds_now() - t0);
    }
    for (size_t i = 0; i < kernels.size(); ++i) {
      const double t0 = seconds_now();
      perceiver::int8::linear(kernels[i], i8[set], x.data(), in, rows, y.data(), out, gelu, nullptr, threads,
                              scratch);
      if (r >= 0) t_i8[i].s.push_back(seconds_now() - t0);
    }
    const double t0 = seconds_now();
    mm.execute(st, {{DNNL_ARG_SRC, xm}, {DNNL_ARG_WEIGHTS, wp[set]}, {DNNL_ARG_DST, ym}});
    st.wait();
    if (r >= 0) t_onednn.s.push_back(seconds_now() - t0);
  }
  const double gflop = 2.0 * rows * in * out * 1e-9;
  std::printf("shape %dx%dx%d%s, %d threads, %d interleaved calls each, %d weight set(s)\n", rows, in, out,
              gelu ? " gelu" : "", threads, reps, weight_sets);
  std::printf("%-28s %10s %10s\n", "GEMM", "min GOP/s", "med GOP/s");
  auto row = [&](const Timing& t) {
    if (!t.s.empty())
      std::printf("%-28s %10.1f %10.1f\n", t.name.c_str(), gflop / t.min(), gflop / t.median());
  };
  row(t_f32);
  for (const auto& t : t_i8) row(t);
  row(t_onednn);
  return 0;
}
