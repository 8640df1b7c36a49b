// The fast backend against the reference backend, op by op, on odd shapes (tails of every vector loop, row
// strides, tile and chunk edges). fp32: both compute the same function, so the tolerance is a few float
// roundings of the accumulated sums (2e-5 of max(1, max|want|)). bf16: both round the GEMM inputs to bf16 the
// same way and accumulate in fp32 (fast) / double (reference), so they agree closely too (1e-4); the
// attention additionally rounds unnormalised probabilities whose scaling differs when the keys come in
// several chunks (2e-3). When the CPU cannot run the fast backend these tests are skipped.
#include <omp.h>
#include <unistd.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#ifdef PERCEIVER_HAVE_ONEDNN
#include "kernels/fast_gemm.h"
#include "kernels/fast_kernels.h"
#endif
#include "kernels/kernels.h"
#include "kernels/numerics.h"
#include "perceiver/perceiver.h"
#include "test_util.h"

namespace perceiver {
namespace {

constexpr double kFp32Tolerance = 2e-5;
constexpr double kBf16Tolerance = 1e-4;
constexpr double kBf16AttentionTolerance = 2e-3;

std::vector<float> random_vector(size_t n, uint32_t seed, float lo = -1.0f, float hi = 1.0f) {
  std::vector<float> v(n);
  uint32_t s = seed * 2654435761u + 1;
  for (auto& x : v) {
    s ^= s << 13;
    s ^= s >> 17;
    s ^= s << 5;
    x = lo + (hi - lo) * static_cast<float>(s >> 8) * (1.0f / 16777216.0f);
  }
  return v;
}

// The precisions the fast backend runs here: bf16 needs AVX-512.
std::vector<Precision> fast_precisions() {
  if (fast::use_avx512()) return {Precision::fp32, Precision::bf16};
  return {Precision::fp32};
}

class KernelTest : public ::testing::Test {
 protected:
  void SetUp() override {
    fast_ = make_best_backend(2);
    if (fast_->name() == "reference") PERCEIVER_SKIP_FOR_CPU("no fast backend on this build or CPU");
    ref_ = make_reference_backend(2);
  }
  std::unique_ptr<Backend> fast_, ref_;
};

struct LinearCase {
  int rows, in, out;
  bool bias;
  Activation act;
  int residual;  // 0 none, 1 in place (y aliases residual), 2 separate buffer
  long pad;      // extra elements per row of x and y (row strides ldx = in + pad, ldy = out + pad)
};

void run_linear(Backend& backend, const LinearCase& c, Precision precision, std::vector<float>* y_out) {
  const long ldx = c.in + c.pad, ldy = c.out + c.pad;
  auto w = random_vector(size_t(c.out) * c.in, 1, -0.2f, 0.2f);
  auto b = random_vector(c.out, 2);
  auto x = random_vector(size_t(c.rows) * ldx, 3, -2.0f, 2.0f);
  auto r = random_vector(size_t(c.rows) * ldy, 4);
  auto packed = backend.pack_linear(w.data(), c.bias ? b.data() : nullptr, c.out, c.in, precision);
  std::vector<float> y(size_t(c.rows) * ldy, 0.0f);
  const float* residual = nullptr;
  if (c.residual == 1) {
    y = r;
    residual = y.data();
  } else if (c.residual == 2) {
    residual = r.data();
  }
  // Twice: the second call runs the cached primitive.
  for (int rep = 0; rep < (backend.name() == "reference" ? 1 : 2); ++rep) {
    if (c.residual == 1) y = r;
    backend.linear(*packed, x.data(), ldx, c.rows, y.data(), ldy, c.act, residual);
  }
  // Only the written columns.
  y_out->clear();
  for (int m = 0; m < c.rows; ++m)
    for (int n = 0; n < c.out; ++n) y_out->push_back(y[size_t(m) * ldy + n]);
}

TEST_F(KernelTest, LinearMatchesReferenceOnOddShapes) {
  const LinearCase cases[] = {
      {1, 3, 5, true, Activation::none, 0, 0},
      {7, 147, 64, false, Activation::none, 0, 0},
      {33, 322, 1000, true, Activation::gelu, 0, 0},
      {130, 257, 300, true, Activation::none, 1, 0},
      {65, 100, 77, true, Activation::gelu, 2, 0},
      {19, 64, 48, true, Activation::none, 1, 5},
      {512, 128, 384, true, Activation::none, 0, 3},
      {3, 1024, 1024, true, Activation::gelu, 1, 0},
      // fp32 GEMM on AVX-512: 3 k-blocks, 17 panels (two panel blocks on one thread), 2 row tails.
      {200, 1100, 1040, true, Activation::none, 1, 2},
      {13, 40, 3000, false, Activation::gelu, 0, 1},
      {100, 1536, 16, true, Activation::gelu, 0, 0},
  };
  for (const auto& c : cases)
    for (Precision p : fast_precisions()) {
      SCOPED_TRACE(::testing::Message()
                   << c.rows << "x" << c.in << "->" << c.out << " act " << int(c.act) << " residual "
                   << c.residual << " pad " << c.pad << " " << precision_name(p));
      std::vector<float> got, want;
      run_linear(*fast_, c, p, &got);
      run_linear(*ref_, c, p, &want);
      EXPECT_TRUE(test::AllCloseScaled(got, want, p == Precision::fp32 ? kFp32Tolerance : kBf16Tolerance));
    }
}

// A layer stacked from parts (as the fused Q/K/V projection is): part sizes that split the 16-row packing
// groups, one part without bias, against the reference on the same parts and against one-part layers.
TEST_F(KernelTest, StackedPartsMatchReference) {
  const int K = 70, rows = 23;
  const int part_rows[] = {5, 16, 27};
  std::vector<std::vector<float>> w, b;
  for (int i = 0; i < 3; ++i) {
    w.push_back(random_vector(size_t(part_rows[i]) * K, 10 + i, -0.3f, 0.3f));
    b.push_back(random_vector(part_rows[i], 20 + i));
  }
  const std::vector<LinearPart> parts{
      {w[0].data(), b[0].data(), 5}, {w[1].data(), nullptr, 16}, {w[2].data(), b[2].data(), 27}};
  const int N = 48;
  auto x = random_vector(size_t(rows) * K, 30, -2.0f, 2.0f);
  for (Precision p : fast_precisions()) {
    SCOPED_TRACE(precision_name(p));
    std::vector<float> got(size_t(rows) * N), want(size_t(rows) * N);
    fast_->linear(*fast_->pack_linear(parts, K, p, false), x.data(), K, rows, got.data(), N, Activation::none,
                  nullptr);
    ref_->linear(*ref_->pack_linear(parts, K, p, false), x.data(), K, rows, want.data(), N, Activation::none,
                 nullptr);
    EXPECT_TRUE(test::AllCloseScaled(got, want, p == Precision::fp32 ? kFp32Tolerance : kBf16Tolerance));
    // Part 1 alone (no bias) gives the same columns as the stack.
    std::vector<float> alone(size_t(rows) * 16);
    ref_->linear(*ref_->pack_linear(w[1].data(), nullptr, 16, K, p), x.data(), K, rows, alone.data(), 16,
                 Activation::none, nullptr);
    std::vector<float> cols;
    for (int m = 0; m < rows; ++m)
      for (int n = 5; n < 21; ++n) cols.push_back(got[size_t(m) * N + n]);
    EXPECT_TRUE(test::AllCloseScaled(cols, alone, p == Precision::fp32 ? kFp32Tolerance : kBf16Tolerance));
  }
}

TEST_F(KernelTest, Bf16LinearStaysCloseToFp32) {
  if (!fast::use_avx512()) PERCEIVER_SKIP_FOR_CPU("this CPU has no AVX-512: no bf16 linear");
  // bf16 inputs carry 8 significant bits: a K = 1024 dot product of O(1) values is off by about 2^-9 of the
  // typical magnitude; 1e-2 of max(1, max|want|) is a loose sanity bound.
  const LinearCase c{64, 1024, 256, true, Activation::none, 0, 0};
  std::vector<float> got, want;
  run_linear(*fast_, c, Precision::bf16, &got);
  run_linear(*ref_, c, Precision::fp32, &want);
  EXPECT_TRUE(test::AllCloseScaled(got, want, 1e-2));
}

#ifdef PERCEIVER_HAVE_ONEDNN
// Our AVX-512 GEMM sums each output's products in k order whatever the k-blocking, so weights packed with
// k-blocks of 1024 (one block here), 512 (three) and 256 (five) give bit-identical outputs, with bias,
// residual and GELU; and they match the reference backend.
TEST(FastGemm, KBlockingLeavesResultsBitIdentical) {
  if (!fast::use_avx512()) PERCEIVER_SKIP_FOR_CPU("this CPU has no AVX-512: fast_gemm does not run here");
  const int K = 1100, N = 200, rows = 37;
  const auto w = random_vector(size_t(N) * K, 41, -0.1f, 0.1f), bias = random_vector(N, 42),
             x = random_vector(size_t(rows) * K, 43, -2.0f, 2.0f),
             residual = random_vector(size_t(rows) * N, 44);
  for (bool accumulate : {false, true}) {
    const bool gelu = !accumulate;
    SCOPED_TRACE(accumulate ? "bias + residual" : "bias + GELU");
    std::vector<std::vector<float>> outputs;
    for (int kc : {1024, 512, 256}) {
      const fast::GemmWeights packed({w.data()}, {N}, {bias.data()}, K, 2, kc);
      ASSERT_EQ(packed.k_blocks(), (K + kc - 1) / kc);
      std::vector<float> y = accumulate ? residual : std::vector<float>(size_t(rows) * N);
      Scratch scratch;
      fast::gemm_f32(packed, x.data(), K, rows, y.data(), N, accumulate, gelu, 2, scratch);
      outputs.push_back(y);
    }
    EXPECT_EQ(outputs[0], outputs[1]);
    EXPECT_EQ(outputs[0], outputs[2]);
    auto ref = make_reference_backend(2);
    std::vector<float> want = accumulate ? residual : std::vector<float>(size_t(rows) * N);
    ref->linear(*ref->pack_linear(w.data(), bias.data(), N, K, Precision::fp32), x.data(), K, rows,
                want.data(), N, gelu ? Activation::gelu : Activation::none,
                accumulate ? want.data() : nullptr);
    EXPECT_TRUE(test::AllCloseScaled(outputs[0], want, kFp32Tolerance));
  }
}

// y += x W^T + b with a residual far larger than the products (the latents' residual stream reaches hundreds
// while a layer adds a few units): the products must be summed at their own magnitude and the residual added
// once, as PyTorch does, within 2 ulps of the exact result. Summing the products onto the residual rounds
// each of them at the residual's size: about sqrt(K) ulps of error (40 here), which compounded to 7x HF's
// error on the full-size model's logits. One k-block and several (partial sums kept apart).
TEST(FastGemm, ResidualIsAddedAfterTheProducts) {
  if (!fast::use_avx512()) PERCEIVER_SKIP_FOR_CPU("this CPU has no AVX-512: fast_gemm does not run here");
  const int K = 1024, N = 96, rows = 13;
  const auto w = random_vector(size_t(N) * K, 51), bias = random_vector(N, 52),
             x = random_vector(size_t(rows) * K, 53);
  std::vector<float> residual = random_vector(size_t(rows) * N, 54, 500.0f, 1000.0f);
  for (int kc : {1024, 256}) {
    SCOPED_TRACE(::testing::Message() << "kc " << kc);
    const fast::GemmWeights packed({w.data()}, {N}, {bias.data()}, K, 2, kc);
    std::vector<float> y = residual;
    Scratch scratch;
    fast::gemm_f32(packed, x.data(), K, rows, y.data(), N, /*accumulate=*/true, /*gelu=*/false, 2, scratch);
    double worst_ulps = 0;
    for (int r = 0; r < rows; ++r)
      for (int n = 0; n < N; ++n) {
        double exact = bias[n];
        for (int k = 0; k < K; ++k) exact += double(x[size_t(r) * K + k]) * w[size_t(n) * K + k];
        exact += residual[size_t(r) * N + n];
        const float got = y[size_t(r) * N + n];
        const double ulp = std::nextafter(got, INFINITY) - got;
        worst_ulps = std::max(worst_ulps, std::abs(got - exact) / ulp);
      }
    EXPECT_LE(worst_ulps, 2.0);
  }
}

// Denormal weights and biases are packed as 0, everything else bit for bit (as a [N, K] -> panels copy).
TEST(FastGemm, PackingFlushesDenormalWeights) {
  if (!fast::use_avx512()) PERCEIVER_SKIP_FOR_CPU("this CPU has no AVX-512: fast_gemm does not run here");
  const int K = 300, N = 70;
  auto w = random_vector(size_t(N) * K, 45), bias = random_vector(N, 46);
  for (size_t i = 0; i < w.size(); i += 7) w[i] *= 1e-39f;  // denormal (|w| < 1.2e-38), some become 0
  bias[3] = 1e-40f;
  bias[4] = -2e-38f;  // normal (FLT_MIN is 1.18e-38): kept
  const fast::GemmWeights packed({w.data()}, {N}, {bias.data()}, K, 2, 128);
  size_t flushed = 0;
  for (int kb = 0; kb < packed.k_blocks(); ++kb)
    for (int p = 0; p * fast::GemmWeights::kPanel < packed.padded_n(); ++p) {
      const int k0 = packed.k_begin(kb), kc = packed.k_begin(kb + 1) - k0;
      const int width =
          std::min(fast::GemmWeights::kPanel, packed.padded_n() - p * fast::GemmWeights::kPanel);
      for (int kk = 0; kk < kc; ++kk)
        for (int j = 0; j < width; ++j) {
          const int n = p * fast::GemmWeights::kPanel + j;
          const float got = packed.panel(kb, p)[size_t(kk) * width + j];
          const float want = n < N ? w[size_t(n) * K + k0 + kk] : 0.0f;
          const bool denormal = std::fpclassify(want) == FP_SUBNORMAL;
          ASSERT_EQ(got, denormal ? 0.0f : want) << "n " << n << ", k " << k0 + kk;
          flushed += denormal;
        }
    }
  EXPECT_GT(flushed, 100u);
  EXPECT_EQ(packed.bias()[3], 0.0f);
  EXPECT_EQ(packed.bias()[4], -2e-38f);
  EXPECT_EQ(packed.bias()[5], bias[5]);
}

// The blocking follows the caches: the x strip fills at most half of L1d, a block of W about a quarter of L2.
TEST(FastGemm, BlockingFitsTheCaches) {
  const fast::GemmBlocking& b = fast::gemm_blocking();
  EXPECT_GE(b.kc, 256);
  EXPECT_LE(b.kc, 1024);
  EXPECT_EQ(b.kc % 16, 0);
  EXPECT_GE(b.panels_per_block, 1);
  const long l1d = sysconf(_SC_LEVEL1_DCACHE_SIZE), l2 = sysconf(_SC_LEVEL2_CACHE_SIZE);
  if (l1d > 0) {
    EXPECT_LE(6L * b.kc * 4, std::max(l1d / 2, 6L * 256 * 4));
  }
  if (l2 > 0) {
    EXPECT_LE(long(b.panels_per_block) * b.kc * 64 * 4, std::max(l2 / 4, long(b.kc) * 64 * 4));
  }
}

// The fast backend's own GELU pass (erf by Abramowitz & Stegun 7.1.26, |error| <= 1.5e-7) against the exact
// form in double precision, over [-12, 12] in steps of 2^-9 plus extremes; the length is not a multiple
// of 16.
TEST(FastKernels, GeluMatchesTheExactErfForm) {
  std::vector<float> x;
  for (int i = -12 * 512; i <= 12 * 512; ++i) x.push_back(float(i) / 512.0f);
  for (float v : {1e-30f, -1e-30f, 1e-8f, -1e-8f, 30.0f, -30.0f, 1e4f, -1e4f, 3e38f, -3e38f}) x.push_back(v);
  ASSERT_NE(x.size() % 16, 0u);
  std::vector<float> y = x;
  fast::gelu_inplace(y.data(), int(y.size()));
  double worst = 0;
  for (size_t i = 0; i < x.size(); ++i) {
    const double xd = x[i], want = 0.5 * xd * (1.0 + std::erf(xd / std::sqrt(2.0)));
    const double err = std::abs(y[i] - want) / std::max(1.0, std::abs(xd));
    worst = std::max(worst, err);
    ASSERT_LE(err, 4e-7) << "gelu(" << x[i] << ") = " << y[i] << ", want " << want;
  }
  RecordProperty("worst_scaled_error", std::to_string(worst));
}

// The softmax's exp() gives 0, not a denormal, below exp(-86): denormal probabilities would make the P V
// products take microcode assists. Above that it matches std::exp to 4e-7; the length has vector and tail
// parts.
// With a bf16 destination: the same sum, and the bf16 of the values the in-place form writes.
TEST(FastKernels, SoftmaxExpIntoBf16IsTheInPlaceResultConverted) {
  for (int n : {1, 15, 16, 33, 512}) {
    std::vector<float> x(n);
    for (int j = 0; j < n; ++j) x[j] = std::sin(0.37f * float(j)) * 9.0f;
    std::vector<float> in_place = x;
    const float want_sum = fast::exp_scaled_shifted_sum(in_place.data(), n, 0.7f, 2.0f);
    std::vector<uint16_t> want(n), got(n);
    fast::to_bf16(in_place.data(), n, want.data());
    std::vector<float> untouched = x;
    const float got_sum = fast::exp_scaled_shifted_sum(untouched.data(), n, 0.7f, 2.0f, got.data());
    SCOPED_TRACE(n);
    EXPECT_EQ(std::memcmp(&got_sum, &want_sum, 4), 0);
    EXPECT_EQ(got, want);
    EXPECT_EQ(std::memcmp(untouched.data(), x.data(), sizeof(float) * n), 0);
  }
}

TEST(FastKernels, SoftmaxExpNeverReturnsDenormals) {
  std::vector<float> x = {0.0f,   -1.0f,  -20.5f,  -50.0f,  -85.9f,  -86.0f, -86.1f,
                          -87.5f, -95.0f, -103.0f, -104.0f, -200.0f, -1e30f};
  for (int i = 0; i < 40; ++i) x.push_back(-80.0f - 0.25f * float(i));  // across the threshold
  ASSERT_NE(x.size() % 16, 0u);
  std::vector<float> e = x;
  const float sum = fast::exp_scaled_shifted_sum(e.data(), int(e.size()), 1.0f, 0.0f);
  double want_sum = 0;
  for (size_t j = 0; j < x.size(); ++j) {
    SCOPED_TRACE(x[j]);
    EXPECT_NE(std::fpclassify(e[j]), FP_SUBNORMAL);
    if (x[j] >= kExpFlushBelow) {
      EXPECT_NEAR(e[j], std::exp(double(x[j])), 4e-7 * std::exp(double(x[j])));
      want_sum += std::exp(double(x[j]));
    } else {
      EXPECT_EQ(e[j], 0.0f);
    }
  }
  EXPECT_NEAR(sum, want_sum, 1e-6 * want_sum);
}
#endif

TEST_F(KernelTest, LayerNormMatchesReference) {
  for (int cols : {1, 5, 16, 17, 33, 261, 322, 1024})
    for (int rows : {1, 3, 64}) {
      SCOPED_TRACE(::testing::Message() << rows << "x" << cols);
      // An offset mean: the variance must be computed about the mean, not as E[x^2] - E[x]^2.
      auto x = random_vector(size_t(rows) * cols, cols + rows, 99.0f, 101.0f);
      auto g = random_vector(cols, 7, 0.5f, 1.5f), b = random_vector(cols, 8);
      std::vector<float> got(x.size()), want(x.size());
      fast_->layer_norm(x.data(), rows, cols, g.data(), b.data(), 1e-5f, got.data());
      ref_->layer_norm(x.data(), rows, cols, g.data(), b.data(), 1e-5f, want.data());
      EXPECT_TRUE(test::AllCloseScaled(got, want, 1e-4));
      std::vector<float> inplace = x;  // y may alias x
      fast_->layer_norm(inplace.data(), rows, cols, g.data(), b.data(), 1e-5f, inplace.data());
      EXPECT_EQ(inplace, got);
    }
}

struct AttentionCase {
  int batch, heads, nq, nk, dqk, dv;
  int layout;  // 0: q, k, v separate with padded rows; 1: fused [q | k | v] rows (as the self-attention uses)
  float range;  // q and k values in [-range, range]
};

// Runs attention on a given backend; returns the output (and the probabilities when want_probs).
void run_attention(Backend& backend, const AttentionCase& c, Precision precision, bool want_probs,
                   std::vector<float>* out, std::vector<float>* probs) {
  AttentionArgs a;
  a.batch = c.batch;
  a.heads = c.heads;
  a.nq = c.nq;
  a.nk = c.nk;
  a.dqk = c.dqk;
  a.dv = c.dv;
  a.scale = 1.0f / std::sqrt(float(c.dqk));
  a.precision = precision;
  const long wq = long(c.heads) * c.dqk, wv = long(c.heads) * c.dv;
  std::vector<float> q, k, v;
  if (c.layout == 0) {
    a.ldq = wq + 3;
    a.ldk = wq + 1;
    a.ldv = wv + 2;
    q = random_vector(size_t(c.batch) * c.nq * a.ldq, 11, -c.range, c.range);
    k = random_vector(size_t(c.batch) * c.nk * a.ldk, 12, -c.range, c.range);
    v = random_vector(size_t(c.batch) * c.nk * a.ldv, 13);
    a.q = q.data();
    a.k = k.data();
    a.v = v.data();
  } else {  // nq == nk: one [rows, 2 wq + wv] buffer
    a.ldq = a.ldk = a.ldv = 2 * wq + wv;
    q = random_vector(size_t(c.batch) * c.nq * a.ldq, 14, -c.range, c.range);
    a.q = q.data();
    a.k = q.data() + wq;
    a.v = q.data() + 2 * wq;
  }
  a.ldo = wv + 4;
  std::vector<float> o(size_t(c.batch) * c.nq * a.ldo, -7.0f);
  a.out = o.data();
  if (want_probs) {
    probs->assign(size_t(c.batch) * c.heads * c.nq * c.nk, 0.0f);
    a.probs = probs->data();
  }
  backend.attention(a);
  if (backend.name() != "reference") backend.attention(a);  // again, with the cached plan
  out->clear();
  for (long r = 0; r < long(c.batch) * c.nq; ++r)
    for (long d = 0; d < wv; ++d) out->push_back(o[r * a.ldo + d]);
  for (long r = 0; r < long(c.batch) * c.nq; ++r)  // padding untouched
    for (long d = wv; d < a.ldo; ++d) ASSERT_EQ(o[r * a.ldo + d], -7.0f);
}

TEST_F(KernelTest, AttentionMatchesReference) {
  const AttentionCase cases[] = {
      {2, 1, 70, 3025, 40, 24, 0, 1.0f},     // cross-attention-like: 3025 keys in chunks, tail tiles
      {1, 1, 512, 3025, 322, 322, 0, 0.5f},  // the conv model's encoder cross-attention
      {1, 8, 512, 512, 128, 128, 1, 0.5f},   // the self-attention
      {3, 1, 1, 512, 1024, 1024, 0, 0.1f},   // the decoder
      {2, 3, 3, 37, 20, 19, 0, 1.0f},        // few queries (keys read in place), several heads, odd widths
      {1, 3, 17, 17, 5, 7, 1, 1.0f},         // tiny, odd widths
      {1, 2, 65, 4099, 16, 16, 0, 4.0f},     // large scores: the running max changes between chunks
      {1, 2, 40, 300, 16, 16, 0, 40.0f},     // huge score gaps: most exp() terms flushed to 0
  };
  for (const auto& c : cases)
    for (Precision p : fast_precisions())
      for (bool probs : {false, true}) {
        SCOPED_TRACE(::testing::Message()
                     << c.batch << "x" << c.heads << " heads, nq " << c.nq << ", nk " << c.nk << ", d "
                     << c.dqk << "/" << c.dv << " " << precision_name(p) << (probs ? " with probs" : ""));
        std::vector<float> got, want, got_p, want_p;
        run_attention(*fast_, c, p, probs, &got, &got_p);
        run_attention(*ref_, c, p, probs, &want, &want_p);
        EXPECT_TRUE(
            test::AllCloseScaled(got, want, p == Precision::fp32 ? kFp32Tolerance : kBf16AttentionTolerance));
        if (probs) {
          EXPECT_TRUE(test::AllCloseScaled(got_p, want_p, kFp32Tolerance));
        }
      }
}

// Over a long key list (20000 keys; the conv model's cross-attention has 3025) the softmax denominator and
// the weighted sums are chunk sums: within 4e-6 of the double-precision reference, where one running fp32 sum
// per output drifts to about 1e-5.
TEST_F(KernelTest, LongKeyListsKeepFp32Accuracy) {
  const AttentionCase c{1, 1, 40, 20000, 16, 16, 0, 0.3f};
  std::vector<float> got, want, unused;
  run_attention(*fast_, c, Precision::fp32, false, &got, &unused);
  run_attention(*ref_, c, Precision::fp32, false, &want, &unused);
  double worst = 0, scale = 0;
  for (size_t i = 0; i < want.size(); ++i) {
    worst = std::max(worst, std::abs(double(got[i]) - want[i]));
    scale = std::max(scale, std::abs(double(want[i])));
  }
  EXPECT_LE(worst, 4e-6 * scale);
  RecordProperty("worst_relative_error", std::to_string(worst / scale));
}

// Model::create_random (perceiver bench's in-memory model): the full-size conv configuration has the
// parameter count of deepmind/vision-perceiver-conv, and a small one runs to finite logits, the same on both
// backends.
TEST(RandomModel, FullSizeConvHasTheHubParameterCount) {
  const std::string config = R"({"architectures": ["PerceiverForImageClassificationConvProcessing"],
    "num_latents": 512, "d_latents": 1024, "num_blocks": 8, "num_self_attends_per_block": 6,
    "num_self_attention_heads": 8, "num_cross_attention_heads": 1, "num_labels": 1000})";
  ModelOptions options;
  options.backend = "reference";
  auto model = Model::create_random(config, 1, options);
  EXPECT_EQ(model->info().num_parameters, 48646522);
  EXPECT_NEAR(model->flops_per_image(224, 224) / 1e9, 369.2, 0.05);
}

TEST(RandomModel, SmallModelRunsOnBothBackends) {
  const std::string config = R"({"architectures": ["PerceiverForImageClassificationConvProcessing"],
    "num_latents": 24, "d_latents": 64, "num_blocks": 2, "num_self_attends_per_block": 2,
    "num_self_attention_heads": 4, "num_cross_attention_heads": 1, "num_labels": 10})";
  std::vector<float> pixels = random_vector(2 * 3 * 40 * 40, 5, -2.0f, 2.0f);
  std::vector<std::vector<float>> logits;
  for (std::string backend : {"reference", "auto"}) {
    ModelOptions options;
    options.backend = backend;
    auto model = Model::create_random(config, 7, options);
    logits.emplace_back(20);
    model->classify(pixels.data(), 2, 40, 40, logits.back().data());
    for (float x : logits.back()) ASSERT_TRUE(std::isfinite(x));
  }
  EXPECT_TRUE(test::AllCloseScaled(logits[1], logits[0], 1e-4));
}

}  // namespace
}  // namespace perceiver
