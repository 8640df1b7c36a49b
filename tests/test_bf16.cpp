// --precision bf16 on the golden vectors: bf16 weights and GEMM inputs (attention included), fp32
// accumulation, fp32 LayerNorm / softmax / residuals.
//
// Tolerances, from what bf16 can do: every GEMM input is rounded to 8 significant bits (relative error up to
// 2^-9 = 0.2 %), in each of the ~7 GEMMs of every layer. Rounding errors of a K-term dot product partly
// average out, but they compound through the layers, and the tiny golden models use initializer_range 0.2
// (ten times the real one), which makes their logits large and sensitive. Measured on these vectors, as
// max|got - want| over max(1, max|want|), fast backend (reference emulation in brackets): conv 0.65 % (0.47
// %), fourier 1.7 % (1.6 %), learned 0.85 % (0.85 %). Bar: 5 %, about three times the worst measured case,
// still far below what a wrong kernel gives (tens of %). The fast backend against the reference backend's
// bf16 emulation (same roundings of the same inputs, different summation order and exp, so an activation near
// a bf16 rounding boundary may round the other way and carry that through the following layers): measured
// 0.34 % / 0.49 % / 0.28 %; bar 2 %.
#include <nlohmann/json.hpp>

#include "formats/npy.h"
#include "kernels/fast_kernels.h"
#include "perceiver/perceiver.h"
#include "test_util.h"

namespace perceiver {
namespace {

constexpr double kBf16VsHfFp32 = 5e-2;
constexpr double kBf16FastVsReference = 2e-2;

std::vector<float> logits_of(const std::string& variant, Precision precision, const std::string& backend) {
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
  return logits;
}

class Bf16Golden : public ::testing::TestWithParam<std::string> {};

TEST_P(Bf16Golden, LogitsCloseToHuggingFaceFp32) {
  const std::string variant = GetParam();
  std::vector<float> want = read_npy(test::vectors_dir() / variant / "logits.npy").to_f32();
  for (std::string backend : {"reference", "auto"}) {
    SCOPED_TRACE(backend);
    if (backend == "auto" && !fast::use_avx512()) {  // the fast backend refuses bf16 without AVX-512
      test::expect_refused_on_this_cpu([&] { logits_of(variant, Precision::bf16, backend); },
                                       "needs a CPU with AVX-512");
      continue;
    }
    auto got = logits_of(variant, Precision::bf16, backend);
    auto result = test::AllCloseScaled(got, want, kBf16VsHfFp32);
    std::cout << variant << " bf16 " << backend << " vs HF fp32 logits: " << result.message() << "\n";
    EXPECT_TRUE(result);
  }
}

TEST_P(Bf16Golden, FastMatchesReferenceEmulation) {
  if (!fast::use_avx512()) PERCEIVER_SKIP_FOR_CPU("this CPU has no AVX-512: no fast bf16");
  const std::string variant = GetParam();
  auto got = logits_of(variant, Precision::bf16, "auto");
  auto want = logits_of(variant, Precision::bf16, "reference");
  auto result = test::AllCloseScaled(got, want, kBf16FastVsReference);
  std::cout << variant << " bf16 auto vs bf16 reference: " << result.message() << "\n";
  EXPECT_TRUE(result);
}

INSTANTIATE_TEST_SUITE_P(Vectors, Bf16Golden, ::testing::Values("conv-tiny", "fourier-tiny", "learned-tiny"),
                         [](const auto& info) {
                           std::string s = info.param;
                           for (char& ch : s)
                             if (ch == '-') ch = '_';
                           return s;
                         });

}  // namespace
}  // namespace perceiver
