// --precision int8: the kernels (every fast kernel bit-identical to the plain one, the plain one close to an
// fp32 reference of the dequantised operands) and the int8 model on the golden vectors against HF's logits.
#include <cmath>
#include <cstring>
#include <random>

#include "formats/npy.h"
#include "kernels/int8_gemm.h"
#include "kernels/numerics.h"
#include "perceiver/perceiver.h"
#include "test_util.h"

namespace perceiver {
namespace {

using int8::Int8Weights;
using int8::Kernel;

std::vector<float> random_vector(size_t n, float lo, float hi, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> dist(lo, hi);
  std::vector<float> v(n);
  for (float& x : v) x = dist(rng);
  return v;
}

std::vector<Kernel> fast_kernels() {
  std::vector<Kernel> kernels;
  for (Kernel k : {Kernel::avx_vnni, Kernel::avx512_vnni, Kernel::amx_int8})
    if (int8::kernel_supported(k)) kernels.push_back(k);
  return kernels;
}

bool same_bits(float a, float b) { return std::memcmp(&a, &b, 4) == 0; }

struct Shape {
  int rows, n, k;
  bool gelu, residual;
};

// Shapes that are not multiples of the tiles (6 rows, 64-column panels, 16-lane vectors, 4-byte k-groups;
// AMX: 32 x 32 blocks, 64-k tiles), ones that are, one narrower than a vector, and one row.
const Shape kShapes[] = {{1, 1, 1, false, false},       {7, 17, 5, false, false},
                         {13, 70, 33, true, false},     {6, 64, 64, false, true},
                         {25, 200, 130, true, true},    {50, 129, 257, false, true},
                         {3, 1000, 1024, false, false}, {12, 48, 3, true, true},
                         {64, 96, 128, true, true},     {45, 320, 900, false, true}};

struct Problem {
  std::vector<float> w0, w1, b0, x, residual;
  int rows, n, k;
  // W as two stacked parts (the first one without bias), as the self-attention's Q/K/V GEMM packs them.
  std::vector<LinearPart> parts() const {
    const int n0 = n / 2;
    return {{w0.data(), nullptr, n0}, {w1.data(), b0.data(), n - n0}};
  }
};

Problem make_problem(const Shape& s, uint32_t seed) {
  Problem p;
  p.rows = s.rows, p.n = s.n, p.k = s.k;
  const int n0 = s.n / 2;
  p.w0 = random_vector(size_t(n0) * s.k, -0.5f, 0.5f, seed);
  p.w1 = random_vector(size_t(s.n - n0) * s.k, -0.1f, 0.3f, seed + 1);
  p.b0 = random_vector(s.n - n0, -1.0f, 1.0f, seed + 2);
  // Activations with a skewed range (a zero point away from the middle) and some rows all >= 0.
  p.x = random_vector(size_t(s.rows) * (s.k + 3), -1.0f, 3.0f, seed + 3);
  for (int m = 0; m < s.rows; m += 3)
    for (int i = 0; i < s.k; ++i) p.x[size_t(m) * (s.k + 3) + i] = std::fabs(p.x[size_t(m) * (s.k + 3) + i]);
  p.residual = random_vector(size_t(s.rows) * (s.n + 5), -4.0f, 4.0f, seed + 4);
  return p;
}

// y with rows ldy = n + 5 apart (strided output), x rows k + 3 apart.
std::vector<float> run_linear(Kernel kernel, const Int8Weights& w, const Problem& p, const Shape& s,
                              int threads) {
  const long ldx = s.k + 3, ldy = s.n + 5;
  std::vector<float> y(size_t(s.rows) * ldy, -7.0f);
  const float* residual = nullptr;
  if (s.residual) {  // in place: y holds the residual, as the model's residual stream does
    y = p.residual;
    residual = y.data();
  }
  Scratch scratch;
  int8::linear(kernel, w, p.x.data(), ldx, s.rows, y.data(), ldy, s.gelu, residual, threads, scratch);
  return y;
}

TEST(Int8Kernels, QuantisationBitIdenticalAcrossKernels) {
  const int rows = 9, k = 37, kp = 40;
  auto x = random_vector(size_t(rows) * k, -2.0f, 5.0f, 7);
  x[3] = 0.0f;
  std::fill(x.begin() + k, x.begin() + 2 * k, 0.0f);  // an all-zero row
  std::vector<uint8_t> want(size_t(rows) * kp), got(want.size(), 0xAA);
  std::vector<int8::RowQuant> pw(rows), pg(rows);
  int8::quantize_rows(Kernel::plain, x.data(), k, rows, k, kp, want.data(), pw.data());
  // Dequantised values within half a step of the input.
  for (int m = 0; m < rows; ++m)
    for (int i = 0; i < k; ++i)
      EXPECT_NEAR((int(want[size_t(m) * kp + i]) - pw[m].zero) * pw[m].scale, x[size_t(m) * k + i],
                  0.5001f * pw[m].scale);
  for (Kernel kernel : fast_kernels()) {
    SCOPED_TRACE(int8::kernel_name(kernel));
    int8::quantize_rows(kernel, x.data(), k, rows, k, kp, got.data(), pg.data());
    EXPECT_EQ(got, want);
    for (int m = 0; m < rows; ++m) {
      EXPECT_TRUE(same_bits(pg[m].scale, pw[m].scale));
      EXPECT_EQ(pg[m].zero, pw[m].zero);
    }
  }
}

TEST(Int8Kernels, GeluCloseToExactErfForm) {
  double worst = 0;
  for (float x = -12.0f; x <= 12.0f; x += 0.001f)
    worst = std::max(worst, double(std::fabs(int8::gelu(x) - gelu_erf(x))));
  std::cout << "int8 epilogue GELU max |error| on [-12, 12]: " << worst << "\n";
  EXPECT_LT(worst, 1e-6);
}

TEST(Int8Kernels, PlainCloseToDequantisedProducts) {
  // The plain kernel against double sums of the dequantised operands: only the fp32 epilogue's roundings
  // separate them (relative 1e-6 of the terms' magnitude).
  for (const Shape& s : kShapes) {
    SCOPED_TRACE(testing::Message() << s.rows << "x" << s.n << "x" << s.k);
    Problem p = make_problem(s, 11);
    Int8Weights w(p.parts(), s.k, 2);
    auto y = run_linear(Kernel::plain, w, p, s, 2);
    const long ldx = s.k + 3, ldy = s.n + 5;
    std::vector<uint8_t> q(size_t(s.rows) * w.padded_k());
    std::vector<int8::RowQuant> rq(s.rows);
    int8::quantize_rows(Kernel::plain, p.x.data(), ldx, s.rows, s.k, w.padded_k(), q.data(), rq.data());
    for (int m = 0; m < s.rows; ++m)
      for (int n = 0; n < s.n; ++n) {
        double acc = 0, mag = 0;
        for (int i = 0; i < s.k; ++i) {
          const double xv = (int(q[size_t(m) * w.padded_k() + i]) - rq[m].zero) * double(rq[m].scale);
          const double wv = w.at(n, i) * double(w.scales()[n]);
          acc += xv * wv;
          mag += std::fabs(xv * wv);
        }
        acc += w.bias()[n];
        if (s.gelu) acc = gelu_erf(float(acc));
        if (s.residual) acc += p.residual[m * ldy + n];
        ASSERT_NEAR(y[m * ldy + n], acc, 1e-5 * (mag + std::fabs(acc) + 1)) << "m " << m << " n " << n;
      }
    // And the quantised weights within half a step of the originals.
    for (int n = 0; n < s.n; ++n)
      for (int i = 0; i < s.k; ++i) {
        const float orig = n < s.n / 2 ? p.w0[size_t(n) * s.k + i] : p.w1[size_t(n - s.n / 2) * s.k + i];
        ASSERT_NEAR(w.at(n, i) * w.scales()[n], orig, 0.5001f * w.scales()[n]);
      }
  }
}

TEST(Int8Kernels, FastKernelsBitIdenticalToPlain) {
  if (fast_kernels().empty()) PERCEIVER_SKIP_FOR_CPU("no VNNI on this CPU");
  for (const Shape& s : kShapes) {
    SCOPED_TRACE(testing::Message() << s.rows << "x" << s.n << "x" << s.k << (s.gelu ? " gelu" : "")
                                    << (s.residual ? " +res" : ""));
    Problem p = make_problem(s, 23);
    Int8Weights w(p.parts(), s.k, 2);
    const auto want = run_linear(Kernel::plain, w, p, s, 1);
    for (Kernel kernel : fast_kernels())
      for (int threads : {1, 2, 3}) {
        SCOPED_TRACE(testing::Message() << int8::kernel_name(kernel) << ", " << threads << " threads");
        const auto got = run_linear(kernel, w, p, s, threads);
        ASSERT_EQ(got.size(), want.size());
        size_t differ = 0;
        for (size_t i = 0; i < got.size(); ++i) differ += !same_bits(got[i], want[i]);
        EXPECT_EQ(differ, 0u) << "of " << got.size();
      }
  }
}

TEST(Int8Kernels, GeluEpilogueCoversLargeAndTinyValues) {
  // GELU's exp flush (-86) and its far tails, bit for bit: a weight row that makes pre-activations of
  // every magnitude.
  const int k = 4, n = 16, rows = 8;
  std::vector<float> wv(size_t(n) * k);
  for (int j = 0; j < n; ++j)
    for (int i = 0; i < k; ++i) wv[size_t(j) * k + i] = (j - 8) * 0.37f * (i + 1);
  std::vector<float> x(size_t(rows) * k);
  for (int m = 0; m < rows; ++m)
    for (int i = 0; i < k; ++i) x[size_t(m) * k + i] = (m - 3) * 1.7f + i;
  Int8Weights w({{wv.data(), nullptr, n}}, k, 1);
  std::vector<float> want(size_t(rows) * n), got(want.size());
  Scratch scratch;
  int8::linear(Kernel::plain, w, x.data(), k, rows, want.data(), n, true, nullptr, 1, scratch);
  for (Kernel kernel : fast_kernels()) {
    int8::linear(kernel, w, x.data(), k, rows, got.data(), n, true, nullptr, 1, scratch);
    for (size_t i = 0; i < got.size(); ++i) EXPECT_TRUE(same_bits(got[i], want[i])) << i;
  }
}

TEST(Int8Kernels, TooWideLayerIsAModelError) {
  std::vector<float> wv(Int8Weights::kMaxK + 1, 0.5f);
  try {
    Int8Weights w({{wv.data(), nullptr, 1}}, Int8Weights::kMaxK + 1, 1);
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::model);
  }
}

// ---- the model on the golden vectors ------------------------------------------------------------------

// int8 against HF's fp32 logits. What int8 can do: each GEMM input carries a quantisation error of up to half
// a step (1/510 of the row's range for activations, 1/254 of the row's max for weights), in every linear
// layer, compounded through the layers of models whose initializer_range (0.2, ten times the real one) makes
// their logits large and sensitive. Bars: cosine(logits) >= 0.99 and the same top-1 for every image, and
// max|got - want| within 10% of max(1, max|want|) (a wrong kernel gives cosines near 0 and errors of 100%).
constexpr double kInt8MinCosine = 0.99;
constexpr double kInt8VsHfFp32 = 0.10;

std::vector<float> logits_of(const std::string& variant, Precision precision, const std::string& backend,
                             int* labels) {
  const auto dir = test::vectors_dir() / variant;
  ModelOptions options;
  options.precision = precision;
  options.backend = backend;
  auto model = Model::load(dir, options);
  NpyArray pixels = read_npy(dir / "pixel_values.npy");
  const int B = static_cast<int>(pixels.shape[0]), H = static_cast<int>(pixels.shape[2]),
            W = static_cast<int>(pixels.shape[3]);
  std::vector<float> input = pixels.to_f32(), logits(size_t(B) * model->info().num_labels);
  model->classify(input.data(), B, H, W, logits.data());
  *labels = model->info().num_labels;
  return logits;
}

class Int8Golden : public ::testing::TestWithParam<std::string> {};

TEST_P(Int8Golden, LogitsCloseToHuggingFaceFp32) {
  const std::string variant = GetParam();
  std::vector<float> want = read_npy(test::vectors_dir() / variant / "logits.npy").to_f32();
  for (std::string backend : {"reference", "auto"}) {
    SCOPED_TRACE(backend);
    int labels = 0;
    if (backend == "auto" && int8::best_kernel() == int8::Kernel::plain) {  // no VNNI: refused, by name
      test::expect_refused_on_this_cpu([&] { logits_of(variant, Precision::int8, backend, &labels); },
                                       "needs a CPU with AVX-512 VNNI or AVX-VNNI");
      continue;
    }
    auto got = logits_of(variant, Precision::int8, backend, &labels);
    ASSERT_EQ(got.size(), want.size());
    for (size_t b = 0; b * labels < got.size(); ++b) {
      const float* g = &got[b * labels];
      const float* h = &want[b * labels];
      double dot = 0, gg = 0, hh = 0;
      for (int i = 0; i < labels; ++i)
        dot += double(g[i]) * h[i], gg += double(g[i]) * g[i], hh += double(h[i]) * h[i];
      const double cosine = dot / std::sqrt(gg * hh);
      std::cout << variant << " int8 " << backend << " image " << b << " cosine " << cosine << "\n";
      EXPECT_GE(cosine, kInt8MinCosine);
      EXPECT_EQ(std::max_element(g, g + labels) - g, std::max_element(h, h + labels) - h);
    }
    auto result = test::AllCloseScaled(got, want, kInt8VsHfFp32);
    std::cout << variant << " int8 " << backend << " vs HF fp32 logits: " << result.message() << "\n";
    EXPECT_TRUE(result);
  }
}

INSTANTIATE_TEST_SUITE_P(Vectors, Int8Golden, ::testing::Values("conv-tiny", "fourier-tiny", "learned-tiny"),
                         [](const auto& info) {
                           std::string s = info.param;
                           for (char& ch : s)
                             if (ch == '-') ch = '_';
                           return s;
                         });

}  // namespace
}  // namespace perceiver
