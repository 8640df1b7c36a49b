// The fast backend: fp32 linear layers on our AVX-512 GEMM (fast_gemm.h) where the CPU has AVX-512; every
// other GEMM on oneDNN matmul (weights packed once at load into the layout oneDNN's brgemm kernels want, or
// fp32 read in place, primitives created once per shape and cached); fused attention, in fp32 on AVX-512 CPUs
// by the hand-written kernel of fast_attention.cpp, otherwise (bf16, or no AVX-512) in oneDNN GEMM tiles with
// an online softmax; one-pass vectorised LayerNorm and GELU. One thread pool: oneDNN (Debian's build) threads
// with OpenMP, and so do the loops here, with the same thread count.
//
// Run-time dispatch: oneDNN picks its own ISA (avx2, avx512_core, avx512_core_bf16, avx512_core_amx) at run
// time; the hand-written kernels (fast_kernels.cpp, fast_attention.cpp) use AVX-512 when the CPU has it and
// portable loops or the oneDNN path otherwise. Nothing is compiled with -mavx512* except functions marked
// PCV_AVX512. bf16 needs AVX-512 (oneDNN 2.6 has no bf16 GEMM below).
//
// Scratch memory (bf16 copies of GEMM inputs, packed K/V, per-thread score panels, oneDNN scratchpads)
// only grows: it is sized the first time a shape is seen, so a second forward() of the same shape allocates
// nothing here. (oneDNN itself may still make small internal allocations per primitive execution.)
//
// PERCEIVER_PROFILE=1 prints the time and GFLOP/s of every op, by shape, to stderr at exit.
#include <dnnl.h>
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <dnnl.hpp>
#include <map>
#include <mutex>
#include <optional>
#include <unordered_map>
#include <vector>

#include "kernels/fast_attention.h"
#include "kernels/fast_gemm.h"
#include "kernels/fast_kernels.h"
#include "kernels/int8_gemm.h"
#include "kernels/kernels.h"
#include "kernels/numerics.h"
#include "kernels/scratch.h"
#include "perceiver/error.h"

namespace perceiver {
namespace {

using dt = dnnl::memory::data_type;
using tag = dnnl::memory::format_tag;
using md = dnnl::memory::desc;
using dims = dnnl::memory::dims;

// One oneDNN matmul primitive with per-thread memory objects, so that it runs on raw pointers with no
// allocation on our side. Slot t is for thread t (attention tiles run concurrently; each thread has its own).
struct Gemm {
  dnnl::matmul prim;
  md a, b, c, scratch_md;
  std::vector<dnnl::memory> mem_a, mem_b, mem_c, mem_scratch;
  dnnl::memory bias;  // optional, shared (read-only)

  Gemm(const dnnl::engine& eng, const md& a_md, const md& b_md, const md* bias_md, const md& c_md,
       const dnnl::primitive_attr& attr, int slots) {
    dnnl::matmul::primitive_desc pd =
        bias_md ? dnnl::matmul::primitive_desc(dnnl::matmul::desc(a_md, b_md, *bias_md, c_md), attr, eng)
                : dnnl::matmul::primitive_desc(dnnl::matmul::desc(a_md, b_md, c_md), attr, eng);
    prim = dnnl::matmul(pd);
    a = a_md;
    b = pd.weights_desc();
    c = c_md;
    scratch_md = pd.scratchpad_desc();
    for (int t = 0; t < slots; ++t) {
      mem_a.emplace_back(a, eng, static_cast<void*>(nullptr));
      mem_b.emplace_back(b, eng, static_cast<void*>(nullptr));
      mem_c.emplace_back(c, eng, static_cast<void*>(nullptr));
      mem_scratch.emplace_back(scratch_md, eng, static_cast<void*>(nullptr));
    }
  }
  size_t scratch_bytes() const { return scratch_md.get_size(); }

  void run(int slot, const dnnl::stream& s, const void* pa, const void* pb, void* pc, void* scratch) {
    mem_a[slot].set_data_handle(const_cast<void*>(pa));
    if (pb) mem_b[slot].set_data_handle(const_cast<void*>(pb));
    mem_c[slot].set_data_handle(pc);
    dnnl_exec_arg_t args[5];
    int n = 0;
    args[n++] = {DNNL_ARG_SRC, mem_a[slot].get()};
    args[n++] = {DNNL_ARG_WEIGHTS, mem_b[slot].get()};
    args[n++] = {DNNL_ARG_DST, mem_c[slot].get()};
    if (bias) args[n++] = {DNNL_ARG_BIAS, bias.get()};
    if (scratch_bytes()) {
      mem_scratch[slot].set_data_handle(scratch);
      args[n++] = {DNNL_ARG_SCRATCHPAD, mem_scratch[slot].get()};
    }
    const dnnl_status_t st = dnnl_primitive_execute(prim.get(), s.get(), n, args);
    if (st != dnnl_success)
      throw Error(ErrorKind::internal, "oneDNN matmul failed: status " + std::to_string(int(st)));
  }
};

dt dtype_of(Precision p) { return p == Precision::bf16 ? dt::bf16 : dt::f32; }

// A linear layer for oneDNN: one GEMM, its weights either packed once into the layout brgemm wants, or read
// in place (fp32 from a mapped file) as the caller's PyTorch-layout [N, K] matrix, i.e. K x N with strides
// (1, K), oneDNN's "ba". On the model's shapes brgemm runs as fast on those as on packed weights
// (512x1024x{1024,3072}: within 1%) as long as it writes dense output rows. Primitives are cached per (rows,
// strides, epilogue) in the executing backend: the packed layer itself is immutable, shared by threads.
class FastLinear : public PackedLinear {
 public:
  Precision precision = Precision::fp32;
  md weight_md;
  dnnl::memory weights, bias;  // packed weights and the bias own their buffers; in-place weights do not
  std::unique_ptr<fast::GemmWeights> own;   // fp32 on AVX-512: our GEMM (fast_gemm.h) instead of oneDNN
  std::unique_ptr<int8::Int8Weights> int8;  // int8: our VNNI GEMM (int8_gemm.h)
};

// Query rows per tile of the oneDNN attention (bf16, and fp32 without AVX-512): 256 ran the bf16 model 4%
// faster than 64 on the Xeon here (larger GEMMs per oneDNN call).
constexpr int kMaxTileRows = 256;

// Per-shape plan of the fused attention: tile sizes and the QK^T / PV primitives for full and tail tiles.
struct AttentionPlan {
  int nq, nk, dqk, dv;
  Precision precision;
  bool probs;
  int tq, kc;  // query rows per tile, keys per chunk
  struct Tile {
    int rows, keys;
    std::unique_ptr<Gemm> qk, pv;
  };
  std::vector<Tile> tiles;
  size_t scratch_bytes = 0;  // max oneDNN scratchpad over the tiles

  Tile& tile(int rows, int keys) {
    for (auto& t : tiles)
      if (t.rows == rows && t.keys == keys) return t;
    throw Error(ErrorKind::internal,
                "attention plan has no tile " + std::to_string(rows) + "x" + std::to_string(keys));
  }
};

// PERCEIVER_PROFILE=1: time every backend call, keyed by op and shape, and print a table to stderr when the
// backend is destroyed. Off by default (one getenv at construction, a branch per call).
class Profile {
 public:
  bool on = std::getenv("PERCEIVER_PROFILE") != nullptr;
  struct Stat {
    double seconds = 0, flops = 0;
    long calls = 0;
  };
  std::map<std::string, Stat> stats;
  ~Profile() {
    if (!on || stats.empty()) return;
    double total = 0;
    for (auto& [k, v] : stats) total += v.seconds;
    std::fprintf(stderr, "%-44s %8s %10s %7s %9s\n", "op", "calls", "ms", "share", "GFLOP/s");
    std::vector<std::pair<std::string, Stat>> rows(stats.begin(), stats.end());
    std::sort(rows.begin(), rows.end(), [](auto& x, auto& y) { return x.second.seconds > y.second.seconds; });
    for (auto& [k, v] : rows)
      std::fprintf(stderr, "%-44s %8ld %10.1f %6.1f%% %9.1f\n", k.c_str(), v.calls, v.seconds * 1e3,
                   100 * v.seconds / total, v.flops / v.seconds * 1e-9);
  }
  struct Scope {
    Profile& p;
    std::string key;
    double flops;
    std::chrono::steady_clock::time_point t0;
    Scope(Profile& prof, std::string k, double f)
        : p(prof), key(std::move(k)), flops(f), t0(std::chrono::steady_clock::now()) {}
    ~Scope() {
      if (!p.on) return;
      Stat& s = p.stats[key];
      s.seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      s.flops += flops;
      ++s.calls;
    }
  };
};

class FastBackend final : public Backend {
 public:
  explicit FastBackend(int threads) : FastBackend(threads, dnnl::engine(dnnl::engine::kind::cpu, 0)) {}
  // One CPU engine for a backend and its clones: what one packs, the others run.
  FastBackend(int threads, const dnnl::engine& engine)
      : threads_(threads > 0 ? threads : omp_get_num_procs()), engine_(engine) {
    for (int t = 0; t < threads_; ++t) streams_.emplace_back(engine_);
    thread_scratch_.resize(threads_);
  }

  std::string name() const override { return "fast"; }
  std::unique_ptr<Backend> clone() const override { return std::make_unique<FastBackend>(threads_, engine_); }
  int threads() const override { return threads_; }

  // fp32 on AVX-512 runs our own GEMM, which wants its packed layout; elsewhere oneDNN reads fp32 in place.
  bool reads_in_place(Precision precision) const override {
    return precision == Precision::fp32 && !fast::use_avx512();
  }

  using Backend::pack_linear;
  std::unique_ptr<PackedLinear> pack_linear(const std::vector<LinearPart>& parts, int in_features,
                                            Precision precision, bool in_place) override {
    if (precision == Precision::bf16 && !fast::use_avx512())
      throw Error(ErrorKind::usage,
                  "--precision bf16 needs a CPU with AVX-512; this one has none (use fp32)");
    if (precision == Precision::int8 && int8::best_kernel() == int8::Kernel::plain)
      throw Error(
          ErrorKind::usage,
          "--precision int8 needs a CPU with AVX-512 VNNI or AVX-VNNI; this one has neither (use fp32)");
    ThreadCount tc(threads_);
    auto w = std::make_unique<FastLinear>();
    w->in_features = in_features;
    w->precision = precision;
    for (const auto& p : parts) w->out_features += p.rows;
    if (precision == Precision::int8) {
      w->int8 = std::make_unique<int8::Int8Weights>(parts, in_features, threads_);
      return w;
    }
    const int K = in_features, N = w->out_features;
    if (precision == Precision::fp32 && fast::use_avx512()) {
      std::vector<const float*> weights, biases;
      std::vector<int> rows;
      for (const auto& p : parts) {
        weights.push_back(p.weight);
        biases.push_back(p.bias);
        rows.push_back(p.rows);
      }
      w->own = std::make_unique<fast::GemmWeights>(weights, rows, biases, K, threads_);
      return w;
    }
    // In place: one part (a stack of parts is not contiguous in the file), fp32, float-aligned.
    if (in_place && parts.size() == 1 && precision == Precision::fp32 &&
        reinterpret_cast<uintptr_t>(parts[0].weight) % alignof(float) == 0) {
      w->weight_md = md({K, N}, dt::f32, tag::ba);
      w->weights = dnnl::memory(w->weight_md, engine_, const_cast<float*>(parts[0].weight));
      w->bias = make_bias(parts[0].bias, N);
      w->reads_in_place = true;
      return w;
    }
    // Packed: stack the parts, then reorder into the layout brgemm asks for at a typical row count (the
    // layout depends on K, N and the data type only; checked for M = 1 .. 12544).
    const float* weight = parts.size() == 1 ? parts[0].weight : nullptr;
    std::vector<float> bias, stacked;
    if (parts.size() > 1) {
      stacked.resize(size_t(N) * K);
      size_t row = 0;
      for (const auto& p : parts) {
        std::memcpy(&stacked[row * K], p.weight, sizeof(float) * size_t(p.rows) * K);
        row += p.rows;
      }
      weight = stacked.data();
    }
    const bool any_bias = std::any_of(parts.begin(), parts.end(), [](const LinearPart& p) { return p.bias; });
    if (any_bias)
      for (const auto& p : parts)
        for (int i = 0; i < p.rows; ++i) bias.push_back(p.bias ? p.bias[i] : 0.0f);
    const dt wdt = dtype_of(precision);
    const int rows_hint = 512;
    md a({rows_hint, K}, wdt, tag::ab);
    md b({K, N}, wdt, tag::any);
    md c({rows_hint, N}, dt::f32, tag::ab);
    dnnl::primitive_attr attr;
    attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
    dnnl::matmul::primitive_desc pd(dnnl::matmul::desc(a, b, c), attr, engine_);
    w->weight_md = pd.weights_desc();
    w->weights = dnnl::memory(w->weight_md, engine_);
    // PyTorch's [N, K] row-major weight is the K x N matrix W^T with strides (1, K): format "ba".
    dnnl::memory src(md({K, N}, dt::f32, tag::ba), engine_, const_cast<float*>(weight));
    dnnl::reorder(src, w->weights).execute(streams_[0], src, w->weights);
    w->bias = make_bias(any_bias ? bias.data() : nullptr, N);
    streams_[0].wait();
    return w;
  }

  void linear(const PackedLinear& packed, const float* x, long ldx, int rows, float* y, long ldy,
              Activation act, const float* residual) override {
    if (rows <= 0) return;
    ThreadCount tc(threads_);
    const auto& w = static_cast<const FastLinear&>(packed);
    const int K = w.in_features, N = w.out_features;
    std::optional<Profile::Scope> prof;
    if (profile_.on)
      prof.emplace(profile_,
                   "linear " + std::to_string(rows) + "x" + std::to_string(K) + "x" + std::to_string(N) +
                       (act == Activation::gelu ? " gelu" : "") + (residual ? " +res" : ""),
                   2.0 * rows * K * N);
    if (w.int8) {
      int8::linear(int8::best_kernel(), *w.int8, x, ldx, rows, y, ldy, act == Activation::gelu, residual,
                   threads_, gemm_scratch_);
      return;
    }
    if (residual && residual != y) {  // y = ... + residual: copy it into y, then sum into y
#pragma omp parallel for num_threads(threads_) schedule(static)
      for (int m = 0; m < rows; ++m) std::memcpy(y + m * ldy, residual + m * ldy, sizeof(float) * N);
    }
    if (w.own) {
      own_linear(w, x, ldx, rows, y, ldy, act, residual != nullptr);
      return;
    }
    const void* src = x;
    long lda = ldx;
    if (w.precision == Precision::bf16) {  // GEMM input as bf16, dense
      bf16_input_.reserve(sizeof(uint16_t) * size_t(rows) * K);
      uint16_t* xb = bf16_input_.as<uint16_t>();
#pragma omp parallel for num_threads(threads_) schedule(static)
      for (int m = 0; m < rows; ++m) fast::to_bf16(x + m * ldx, K, xb + size_t(m) * K);
      src = xb;
      lda = K;
    }
    // GELU: oneDNN's gelu_erf post-op slowed the bf16 GEMM by half; our own pass over the output is cheaper.
    // (With a residual the GELU must come before the sum: keep the post-op chain then.)
    const bool own_gelu = act == Activation::gelu && !residual && fast::use_avx512();
    Gemm& g = linear_gemm(w, rows, lda, ldy, own_gelu ? Activation::none : act, residual != nullptr);
    g.run(0, streams_[0], src, nullptr, y, gemm_scratch_.as<void>());
    if (own_gelu) {
#pragma omp parallel for num_threads(threads_) schedule(static)
      for (int m = 0; m < rows; ++m) fast::gelu_inplace(y + m * ldy, N);
    }
  }

  void layer_norm(const float* x, int rows, int cols, const float* gamma, const float* beta, float eps,
                  float* y) override {
    std::optional<Profile::Scope> prof;
    if (profile_.on)
      prof.emplace(profile_, "layer_norm " + std::to_string(rows) + "x" + std::to_string(cols), 0.0);
#pragma omp parallel for num_threads(threads_) schedule(static)
    for (int m = 0; m < rows; ++m) {
      // The next row into L2 while this one is normalised: x was just written by the other thread's GEMM
      // tiles as often as by this one's (about 0.5% on the fp32 model).
      if (m + 1 < rows)
        for (int c = 0; c < cols; c += 16) __builtin_prefetch(x + size_t(m + 1) * cols + c, 0, 2);
      fast::layer_norm_row(x + size_t(m) * cols, cols, gamma, beta, eps, y + size_t(m) * cols);
    }
  }

  void attention(const AttentionArgs& a) override;

 private:
  // oneDNN reads the OpenMP thread count of the calling thread; keep it at ours while we call it.
  struct ThreadCount {
    explicit ThreadCount(int n) {
      if (omp_get_max_threads() != n) omp_set_num_threads(n);
    }
  };

  dnnl::memory make_bias(const float* bias, int n) {
    if (!bias) return dnnl::memory();
    dnnl::memory m(md({1, n}, dt::f32, tag::ab), engine_);
    std::memcpy(m.get_data_handle(), bias, sizeof(float) * n);
    return m;
  }

  Gemm& linear_gemm(const FastLinear& w, int rows, long lda, long ldy, Activation act, bool sum) {
    std::vector<GemmEntry>& cache = gemm_cache_[&w];
    for (auto& e : cache)
      if (e.rows == rows && e.ldx == lda && e.ldy == ldy && e.act == act && e.sum == sum) return *e.gemm;
    const dt adt = dtype_of(w.precision);
    md a({rows, w.in_features}, adt, dims{lda, 1});
    md c({rows, w.out_features}, dt::f32, dims{ldy, 1});
    dnnl::primitive_attr attr;
    attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
    dnnl::post_ops po;
    if (act == Activation::gelu) po.append_eltwise(1.0f, dnnl::algorithm::eltwise_gelu_erf, 0.0f, 0.0f);
    if (sum) po.append_sum(1.0f);
    attr.set_post_ops(po);
    md bias_md = w.bias ? w.bias.get_desc() : md();
    auto g = std::make_unique<Gemm>(engine_, a, w.weight_md, w.bias ? &bias_md : nullptr, c, attr, 1);
    g->mem_b[0] = w.weights;
    g->bias = w.bias;
    gemm_scratch_.reserve(g->scratch_bytes());
    cache.push_back({rows, lda, ldy, act, sum, std::move(g)});
    return *cache.back().gemm;
  }

  AttentionPlan& attention_plan(const AttentionArgs& a);

  // linear() on our fp32 GEMM: bias, GELU and the residual sum (y already holds the residual) in its tiles.
  void own_linear(const FastLinear& w, const float* x, long ldx, int rows, float* y, long ldy, Activation act,
                  bool residual) {
    const int N = w.out_features;
    if (act == Activation::gelu && residual) {  // y += gelu(x W^T + b): the GELU comes before the sum
      gemm_scratch_.reserve(sizeof(float) * size_t(rows) * N);
      float* t = gemm_scratch_.as<float>();
      fast::gemm_f32(*w.own, x, ldx, rows, t, N, false, true, threads_, gemm_partials_);
#pragma omp parallel for num_threads(threads_) schedule(static)
      for (int m = 0; m < rows; ++m) fast::scale_add(t + size_t(m) * N, N, 1.0f, y + m * ldy);
      return;
    }
    fast::gemm_f32(*w.own, x, ldx, rows, y, ldy, residual, act == Activation::gelu, threads_, gemm_partials_);
  }

  // oneDNN primitives of the packed layers this backend has run, per (rows, strides, epilogue).
  struct GemmEntry {
    int rows;
    long ldx, ldy;
    Activation act;
    bool sum;
    std::unique_ptr<Gemm> gemm;
  };
  std::unordered_map<const FastLinear*, std::vector<GemmEntry>> gemm_cache_;

  Profile profile_;
  int threads_;
  dnnl::engine engine_;
  std::vector<dnnl::stream> streams_;  // one per thread
  Scratch gemm_scratch_, bf16_input_;
  Scratch gemm_partials_;  // fast::gemm_f32's partial sums of residual GEMMs with several k-blocks
  Scratch heads_;          // per-head dense Q, K, V (fp32 or bf16)
  std::vector<Scratch>
      thread_scratch_;  // per thread: scores, bf16 probabilities, output tile, oneDNN scratchpad
  std::vector<std::unique_ptr<AttentionPlan>> plans_;
  fast::AttentionFp32 attention_fp32_;  // fp32 on AVX-512 CPUs
};

AttentionPlan& FastBackend::attention_plan(const AttentionArgs& a) {
  const bool probs = a.probs != nullptr;
  for (auto& p : plans_)
    if (p->nq == a.nq && p->nk == a.nk && p->dqk == a.dqk && p->dv == a.dv && p->precision == a.precision &&
        p->probs == probs)
      return *p;
  auto plan = std::make_unique<AttentionPlan>();
  AttentionPlan& p = *plan;
  p.nq = a.nq;
  p.nk = a.nk;
  p.dqk = a.dqk;
  p.dv = a.dv;
  p.precision = a.precision;
  p.probs = probs;
  // A tile of scores (tq x kc fp32) stays within about 512 KB (256 rows x 512 keys), inside L2. With
  // probabilities requested the whole key range is one chunk, written straight into the caller's probs rows.
  p.tq = std::min(a.nq, kMaxTileRows);
  const int max_keys = std::max(256, (512 << 10) / int(sizeof(float)) / p.tq);
  if (probs || a.nk <= max_keys) {
    p.kc = a.nk;
  } else {
    const int chunks = (a.nk + max_keys - 1) / max_keys;
    p.kc = (a.nk + chunks - 1) / chunks;
  }
  const dt in = dtype_of(a.precision);
  dnnl::primitive_attr attr;
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
  // The tile GEMMs run one per thread inside our parallel region: create them single-threaded.
  omp_set_num_threads(1);
  std::vector<int> row_sizes{p.tq}, key_sizes{p.kc};
  if (a.nq % p.tq) row_sizes.push_back(a.nq % p.tq);
  if (a.nk % p.kc) key_sizes.push_back(a.nk % p.kc);
  try {
    for (int rows : row_sizes)
      for (int keys : key_sizes) {
        AttentionPlan::Tile t{rows, keys, nullptr, nullptr};
        // S[rows, keys] = Q[rows, dqk] K[keys, dqk]^T, all dense.
        t.qk = std::make_unique<Gemm>(engine_, md({rows, a.dqk}, in, tag::ab), md({a.dqk, keys}, in, tag::ba),
                                      nullptr, md({rows, keys}, dt::f32, tag::ab), attr, threads_);
        // O[rows, dv] = P[rows, keys] V[keys, dv]
        t.pv = std::make_unique<Gemm>(engine_, md({rows, keys}, in, tag::ab), md({keys, a.dv}, in, tag::ab),
                                      nullptr, md({rows, a.dv}, dt::f32, tag::ab), attr, threads_);
        p.scratch_bytes = std::max({p.scratch_bytes, t.qk->scratch_bytes(), t.pv->scratch_bytes()});
        p.tiles.push_back(std::move(t));
      }
  } catch (...) {
    omp_set_num_threads(threads_);
    throw;
  }
  omp_set_num_threads(threads_);
  plans_.push_back(std::move(plan));
  return p;
}

size_t round_up64(size_t n) { return (n + 63) / 64 * 64; }

void FastBackend::attention(const AttentionArgs& a) {
  if (a.batch <= 0 || a.heads <= 0 || a.nq <= 0) return;
  if (a.precision == Precision::int8) {  // int8 models attend in bf16 where the CPU runs it, else fp32
    AttentionArgs args = a;
    args.precision = fast::use_avx512() ? Precision::bf16 : Precision::fp32;
    return attention(args);
  }
  ThreadCount tc(threads_);
  std::optional<Profile::Scope> prof;
  if (profile_.on)
    prof.emplace(profile_,
                 "attention " + std::to_string(a.nq) + "x" + std::to_string(a.nk) + " h" +
                     std::to_string(a.heads) + " d" + std::to_string(a.dqk) + "/" + std::to_string(a.dv),
                 2.0 * a.batch * a.heads * a.nq * a.nk * (a.dqk + a.dv));
  // The hand-written kernel works in blocks of 32 queries and packs K and V per head: with a handful of
  // queries (the decoder's single one) the oneDNN tiles do less work.
  if (a.precision == Precision::fp32 && fast::use_avx512() && a.nq >= 16) {
    attention_fp32_.run(a, threads_);
    return;
  }
  AttentionPlan& plan = attention_plan(a);
  const bool bf16 = a.precision == Precision::bf16;
  const size_t esize = bf16 ? 2 : 4;
  const int B = a.batch, H = a.heads, nq = a.nq, nk = a.nk, dqk = a.dqk, dv = a.dv;

  // Phase 1: per-head dense copies [B, H, n, d] (bf16 conversions in bf16 mode). fp32 tensors that already
  // are dense (one head, row stride = width) are used in place.
  auto dense = [&](long ld, int d) { return !bf16 && H == 1 && ld == d; };
  const bool copy_q = !dense(a.ldq, dqk), copy_k = !dense(a.ldk, dqk), copy_v = !dense(a.ldv, dv);
  const size_t q_elems = copy_q ? size_t(B) * H * nq * dqk : 0,
               k_elems = copy_k ? size_t(B) * H * nk * dqk : 0,
               v_elems = copy_v ? size_t(B) * H * nk * dv : 0;
  const size_t q_off = 0, k_off = round_up64(q_elems * esize), v_off = k_off + round_up64(k_elems * esize);
  heads_.reserve(v_off + v_elems * esize + 64);
  std::byte* hb = heads_.as<std::byte>();
  const void* qd = copy_q ? static_cast<const void*>(hb + q_off) : a.q;
  const void* kd = copy_k ? static_cast<const void*>(hb + k_off) : a.k;
  const void* vd = copy_v ? static_cast<const void*>(hb + v_off) : a.v;

  // Per-thread scratch: scores [tq, kc] fp32, bf16 probabilities [tq, kc], output tile [tq, dv], scratchpad.
  const size_t s_bytes = round_up64(sizeof(float) * plan.tq * plan.kc);
  const size_t p_bytes = bf16 ? round_up64(sizeof(uint16_t) * plan.tq * plan.kc) : 0;
  const size_t o_bytes = round_up64(sizeof(float) * plan.tq * dv);
  for (auto& s : thread_scratch_) s.reserve(s_bytes + p_bytes + o_bytes + plan.scratch_bytes);

  const int q_tiles = (nq + plan.tq - 1) / plan.tq;
  const int k_chunks = (nk + plan.kc - 1) / plan.kc;
  const long tasks = long(B) * H * q_tiles;

#pragma omp parallel num_threads(threads_)
  {
    auto gather = [&](const float* src, long ld, int n, int d, void* dst) {
#pragma omp for schedule(static)
      for (long r = 0; r < long(B) * n; ++r) {
        const long b = r / n, i = r % n;
        for (int h = 0; h < H; ++h) {
          const float* s = src + r * ld + long(h) * d;
          const size_t o = ((size_t(b) * H + h) * n + i) * d;
          if (bf16)
            fast::to_bf16(s, d, static_cast<uint16_t*>(dst) + o);
          else
            std::memcpy(static_cast<float*>(dst) + o, s, sizeof(float) * d);
        }
      }
    };
    if (copy_q) gather(a.q, a.ldq, nq, dqk, hb + q_off);
    if (copy_k) gather(a.k, a.ldk, nk, dqk, hb + k_off);
    if (copy_v) gather(a.v, a.ldv, nk, dv, hb + v_off);
    // (each omp for ends with a barrier, so phase 2 sees complete copies)

    const int tid = omp_get_thread_num();
    std::byte* ts = thread_scratch_[tid].as<std::byte>();
    float* s_tile = reinterpret_cast<float*>(ts);
    uint16_t* p_tile = reinterpret_cast<uint16_t*>(ts + s_bytes);
    float* o_tile = reinterpret_cast<float*>(ts + s_bytes + p_bytes);
    void* dnnl_scratch = ts + s_bytes + p_bytes + o_bytes;
    float row_max[kMaxTileRows], row_sum[kMaxTileRows];

#pragma omp for schedule(dynamic, 1)
    for (long task = 0; task < tasks; ++task) {
      const int b = int(task / (long(H) * q_tiles)), h = int(task / q_tiles % H), t = int(task % q_tiles);
      const int i0 = t * plan.tq, rows = std::min(plan.tq, nq - i0);
      const size_t bh = size_t(b) * H + h;
      // Dense operands of this (batch, head): either our copies or the caller's single-head tensors.
      const std::byte* q_ptr = static_cast<const std::byte*>(qd) + ((bh * nq + i0) * dqk) * esize;
      const std::byte* k_head = static_cast<const std::byte*>(kd) + (bh * nk * dqk) * esize;
      const std::byte* v_head = static_cast<const std::byte*>(vd) + (bh * nk * dv) * esize;
      for (int c = 0; c < k_chunks; ++c) {
        const int j0 = c * plan.kc, keys = std::min(plan.kc, nk - j0);
        AttentionPlan::Tile& tile = plan.tile(rows, keys);
        float* s = a.probs ? a.probs + (bh * nq + i0) * size_t(nk) : s_tile;  // [rows, keys] dense
        tile.qk->run(tid, streams_[tid], q_ptr, k_head + size_t(j0) * dqk * esize, s, dnnl_scratch);
        // Online softmax: exp(s * scale - running max), rescale what was accumulated so far.
        // bf16 without probabilities to return: the exponentials go straight to the bf16 tile.
        float alpha[kMaxTileRows];
        const bool direct_bf16 = bf16 && !a.probs;
        for (int i = 0; i < rows; ++i) {
          float* si = s + size_t(i) * keys;
          const float m_new = c == 0 ? fast::row_max_scaled(si, keys, a.scale)
                                     : std::max(row_max[i], fast::row_max_scaled(si, keys, a.scale));
          const float sum = fast::exp_scaled_shifted_sum(si, keys, a.scale, m_new,
                                                         direct_bf16 ? p_tile + size_t(i) * keys : nullptr);
          if (c == 0) {
            row_sum[i] = sum;
          } else {
            alpha[i] = exp_flushed(row_max[i] - m_new);
            row_sum[i] = row_sum[i] * alpha[i] + sum;
          }
          row_max[i] = m_new;
        }
        const void* p_in = s;
        if (bf16) {
          if (!direct_bf16) fast::to_bf16(s, long(rows) * keys, p_tile);
          p_in = p_tile;
        }
        tile.pv->run(tid, streams_[tid], p_in, v_head + size_t(j0) * dv * esize, o_tile, dnnl_scratch);
        const bool last = c == k_chunks - 1;
        for (int i = 0; i < rows; ++i) {
          float* out = a.out + (size_t(b) * nq + i0 + i) * a.ldo + size_t(h) * dv;
          const float* o = o_tile + size_t(i) * dv;
          if (c == 0)
            fast::scale_copy(o, dv, last ? 1.0f / row_sum[i] : 1.0f, out);
          else
            fast::scale_add(o, dv, alpha[i], out);
          if (last && c > 0) fast::scale_inplace(out, dv, 1.0f / row_sum[i]);
        }
        if (a.probs)  // single chunk: normalise the probabilities in place
          for (int i = 0; i < rows; ++i) fast::scale_inplace(s + size_t(i) * keys, keys, 1.0f / row_sum[i]);
      }
    }
  }
}

}  // namespace

std::unique_ptr<Backend> make_fast_backend(int threads) {
#if defined(__x86_64__)
  __builtin_cpu_init();
  if (!__builtin_cpu_supports("sse4.1")) return nullptr;  // oneDNN's x64 minimum
#endif
  return std::make_unique<FastBackend>(threads);
}

}  // namespace perceiver
