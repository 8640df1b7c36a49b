// Backward kernels of the trainable decoder (src/train): every op and the whole PerceiverLayer / classifier
// head against central finite differences in float64, against PyTorch autograd (tests/data/decoder_grads,
// made by tests/data/make_decoder_grads.py), the fast float kernels against the plain ones, and thread-count
// independence.
//
// Tolerances (max |got - want| <= tol * max(1, max |want|) over a tensor):
//   finite differences, float64, h = 1e-6 ........... 1e-6   (truncation ~h^2, rounding ~1e-16/h)
//   C++ float64 vs PyTorch float64 ................... 1e-10
//   C++ float32 training path vs PyTorch float64 ..... 2e-4
//   fast float kernels vs plain float loops ........... 1e-6  (the same operation order: equal in practice)
//   1 thread vs 3 threads ............................. bit-identical
#include <omp.h>

#include <cmath>
#include <cstring>
#include <functional>

#include "formats/npy.h"
#include "test_util.h"
#include "train/fast_ops.h"
#include "train/head.h"
#include "train/ops.h"
#include "train/rng.h"

namespace perceiver::train {
namespace {

std::vector<double> randn(size_t n, Rng& rng, double scale = 1.0) {
  std::vector<double> v(n);
  for (auto& x : v) x = scale * rng.normal();
  return v;
}

::testing::AssertionResult Close(const std::vector<double>& got, const std::vector<double>& want, double tol,
                                 const std::string& what) {
  if (got.size() != want.size())
    return ::testing::AssertionFailure() << what << ": size " << got.size() << " vs " << want.size();
  double scale = 1, worst = 0;
  size_t at = 0;
  for (double w : want) scale = std::max(scale, std::abs(w));
  for (size_t i = 0; i < got.size(); ++i)
    if (!(std::abs(got[i] - want[i]) <= worst)) {
      worst = std::abs(got[i] - want[i]);
      at = i;
      if (std::isnan(got[i])) worst = INFINITY;
    }
  if (worst <= tol * scale) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << what << ": max error " << worst << " at " << at << " (got "
                                       << got[at] << ", want " << want[at] << "), allowed " << tol * scale;
}

// Central differences of f with respect to every element of x.
std::vector<double> finite_diff(std::vector<double>& x, const std::function<double()>& f, double h = 1e-6) {
  std::vector<double> g(x.size());
  for (size_t i = 0; i < x.size(); ++i) {
    const double keep = x[i];
    x[i] = keep + h;
    const double up = f();
    x[i] = keep - h;
    const double down = f();
    x[i] = keep;
    g[i] = (up - down) / (2 * h);
  }
  return g;
}

double dot(const std::vector<double>& a, const std::vector<double>& b) {
  double s = 0;
  for (size_t i = 0; i < a.size(); ++i) s += a[i] * b[i];
  return s;
}

constexpr double kFdTol = 1e-6;

TEST(TrainGradFD, Linear) {
  Rng rng(1);
  const int M = 4, N = 5, K = 3;
  auto x = randn(M * K, rng), W = randn(N * K, rng), b = randn(N, rng), r = randn(M * N, rng);
  std::vector<double> y(M * N);
  auto loss = [&] {
    ref::linear_forward(x.data(), W.data(), b.data(), M, N, K, y.data());
    return dot(y, r);
  };
  std::vector<double> dx(M * K, 0), dW(N * K, 0), db(N, 0);
  ref::linear_backward(x.data(), W.data(), r.data(), M, N, K, dx.data(), dW.data(), db.data());
  EXPECT_TRUE(Close(dx, finite_diff(x, loss), kFdTol, "dx"));
  EXPECT_TRUE(Close(dW, finite_diff(W, loss), kFdTol, "dW"));
  EXPECT_TRUE(Close(db, finite_diff(b, loss), kFdTol, "db"));
}

TEST(TrainGradFD, LayerNorm) {
  Rng rng(2);
  const int M = 3, C = 7;
  auto x = randn(M * C, rng, 2.0), g = randn(C, rng), b = randn(C, rng), r = randn(M * C, rng);
  for (int c = 0; c < C; ++c) x[c] += 3.0;  // a row with a large mean
  std::vector<double> y(M * C), mean(M), rstd(M);
  auto loss = [&] {
    ref::layer_norm_forward(x.data(), g.data(), b.data(), M, C, 1e-5, y.data(), mean.data(), rstd.data());
    return dot(y, r);
  };
  loss();
  std::vector<double> dx(M * C, 0), dg(C, 0), db(C, 0);
  ref::layer_norm_backward(x.data(), g.data(), mean.data(), rstd.data(), r.data(), M, C, dx.data(), dg.data(),
                           db.data());
  EXPECT_TRUE(Close(dx, finite_diff(x, loss), kFdTol, "dx"));
  EXPECT_TRUE(Close(dg, finite_diff(g, loss), kFdTol, "dgamma"));
  EXPECT_TRUE(Close(db, finite_diff(b, loss), kFdTol, "dbeta"));
}

TEST(TrainGradFD, Gelu) {
  Rng rng(3);
  auto x = randn(40, rng, 3.0), r = randn(40, rng);
  std::vector<double> y(40);
  auto loss = [&] {
    ref::gelu_forward(x.data(), x.size(), y.data());
    return dot(y, r);
  };
  std::vector<double> dx(40, 0);
  ref::gelu_backward(x.data(), r.data(), x.size(), dx.data());
  EXPECT_TRUE(Close(dx, finite_diff(x, loss), kFdTol, "dx"));
  EXPECT_NEAR(ref::gelu(1.0), 0.8413447460685429, 1e-15);  // 1 * Phi(1)
}

TEST(TrainGradFD, MultiHeadAttention) {
  Rng rng(4);
  ref::AttentionShape s{2, 2, 3, 4, 3, 2, 1.0 / std::sqrt(3.0)};
  const int QK = s.heads * s.dqk, V = s.heads * s.dv;
  auto q = randn(s.batch * s.nq * QK, rng), k = randn(s.batch * s.nk * QK, rng),
       v = randn(s.batch * s.nk * V, rng);
  auto r = randn(s.batch * s.nq * V, rng);
  std::vector<double> out(r.size()), probs(size_t(s.batch) * s.heads * s.nq * s.nk);
  auto loss = [&] {
    ref::attention_forward(s, q.data(), k.data(), v.data(), out.data(), probs.data());
    return dot(out, r);
  };
  loss();
  std::vector<double> dq(q.size(), 0), dk(k.size(), 0), dv(v.size(), 0);
  ref::attention_backward(s, q.data(), k.data(), v.data(), probs.data(), r.data(), dq.data(), dk.data(),
                          dv.data());
  EXPECT_TRUE(Close(dq, finite_diff(q, loss), kFdTol, "dq"));
  EXPECT_TRUE(Close(dk, finite_diff(k, loss), kFdTol, "dk"));
  EXPECT_TRUE(Close(dv, finite_diff(v, loss), kFdTol, "dv"));
}

TEST(TrainGradFD, SoftmaxCrossEntropy) {
  Rng rng(5);
  const int M = 4, C = 5;
  auto z = randn(M * C, rng, 3.0);
  std::vector<int> labels = {0, 4, 2, 2};
  std::vector<double> dz(M * C, 0);
  const double loss0 = ref::softmax_cross_entropy(z.data(), labels.data(), M, C, dz.data());
  EXPECT_TRUE(Close(
      dz,
      finite_diff(z,
                  [&] { return ref::softmax_cross_entropy<double>(z.data(), labels.data(), M, C, nullptr); }),
      kFdTol, "dlogits"));
  // Large logits stay finite (max subtraction).
  std::vector<double> big = {1000, 0, -1000, 0, 0};
  int label = 0;
  EXPECT_NEAR(ref::softmax_cross_entropy<double>(big.data(), &label, 1, C, nullptr), 0.0, 1e-12);
  EXPECT_GT(loss0, 0);
}

// Every parameter and both inputs of a PerceiverLayer<double> against finite differences of sum(out * r).
void check_layer_fd(const LayerShape& shape, int batch, int nq, int nk) {
  Rng rng(6);
  PerceiverLayer<double> layer(shape, "layer.");
  std::printf("%s-attention layer: %s path\n", shape.is_cross ? "cross" : "self",
              layer.uses_query_folding(nq) ? "folded" : "generic");
  for (Param<double>* p : layer.params())  // well away from the 1/0 init so every term matters
    for (auto& v : p->value) v = (p->kind == Param<double>::norm_scale ? 1.0 : 0.0) + 0.4 * rng.normal();
  const int kv_dim = shape.is_cross ? shape.kv_dim : shape.q_dim;
  auto x = randn(size_t(batch) * nq * shape.q_dim, rng), kv = randn(size_t(batch) * nk * kv_dim, rng);
  auto r = randn(x.size(), rng);
  std::vector<double> out(x.size());
  auto loss = [&] {
    layer.forward(x.data(), kv.data(), batch, nq, nk, out.data(), nullptr);
    return dot(out, r);
  };
  PerceiverLayer<double>::Cache cache;
  layer.forward(x.data(), kv.data(), batch, nq, nk, out.data(), &cache);
  std::vector<double> dx(x.size(), 0), dkv(kv.size(), 0);
  layer.backward(cache, r.data(), dx.data(), shape.is_cross ? dkv.data() : nullptr);
  EXPECT_TRUE(Close(dx, finite_diff(x, loss), kFdTol, "dx"));
  if (shape.is_cross) {
    EXPECT_TRUE(Close(dkv, finite_diff(kv, loss), kFdTol, "dkv"));
  }
  for (Param<double>* p : layer.params())
    EXPECT_TRUE(Close(p->grad, finite_diff(p->value, loss), kFdTol, p->name));
}

TEST(TrainGradFD, CrossAttentionLayerOneHead) {
  LayerShape s;
  s.q_dim = 5, s.kv_dim = 4, s.qk_channels = 5, s.v_channels = 5, s.heads = 1, s.mlp_hidden = 5;
  s.is_cross = true;
  check_layer_fd(s, 2, 1, 6);
}

// The decoder's folded cross-attention (few queries: keys and values never formed) against the generic path.
TEST(TrainGradFD, FoldedCrossAttentionMatchesGeneric) {
  for (int heads : {1, 2}) {
    SCOPED_TRACE(heads);
    LayerShape s;
    s.q_dim = 8, s.kv_dim = 5, s.qk_channels = 8, s.v_channels = 6, s.heads = heads, s.mlp_hidden = 8;
    s.is_cross = true;
    const int B = 3, nq = 1, nk = 7;
    PerceiverLayer<double> folded(s, "l."), generic(s, "l.");
    generic.set_query_folding(false);
    ASSERT_TRUE(folded.uses_query_folding(nq));
    ASSERT_FALSE(generic.uses_query_folding(nq));
    Rng rng(11);
    auto fp = folded.params(), gp = generic.params();
    for (size_t i = 0; i < fp.size(); ++i) {
      for (auto& v : fp[i]->value)
        v = (fp[i]->kind == Param<double>::norm_scale ? 1.0 : 0.0) + 0.4 * rng.normal();
      gp[i]->value = fp[i]->value;
    }
    auto x = randn(size_t(B) * nq * s.q_dim, rng), kv = randn(size_t(B) * nk * s.kv_dim, rng);
    auto r = randn(x.size(), rng);
    std::vector<double> out1(x.size()), out2(x.size()), dx1(x.size(), 0), dx2(x.size(), 0),
        dkv1(kv.size(), 0), dkv2(kv.size(), 0);
    PerceiverLayer<double>::Cache c1, c2;
    folded.forward(x.data(), kv.data(), B, nq, nk, out1.data(), &c1);
    generic.forward(x.data(), kv.data(), B, nq, nk, out2.data(), &c2);
    EXPECT_TRUE(Close(out1, out2, 1e-12, "out"));
    folded.backward(c1, r.data(), dx1.data(), dkv1.data());
    generic.backward(c2, r.data(), dx2.data(), dkv2.data());
    EXPECT_TRUE(Close(dx1, dx2, 1e-12, "dx"));
    EXPECT_TRUE(Close(dkv1, dkv2, 1e-12, "dkv"));
    for (size_t i = 0; i < fp.size(); ++i) EXPECT_TRUE(Close(fp[i]->grad, gp[i]->grad, 1e-12, fp[i]->name));
  }
}

TEST(TrainGradFD, CrossAttentionLayerNoResidualTwoHeads) {
  LayerShape s;
  s.q_dim = 4, s.kv_dim = 6, s.qk_channels = 6, s.v_channels = 4, s.heads = 2, s.mlp_hidden = 8;
  s.is_cross = true;
  s.query_residual = false;
  check_layer_fd(s, 2, 3, 5);
}

TEST(TrainGradFD, SelfAttentionLayerTwoHeads) {
  LayerShape s;
  s.q_dim = 6, s.kv_dim = 6, s.qk_channels = 6, s.v_channels = 6, s.heads = 2, s.mlp_hidden = 6;
  check_layer_fd(s, 2, 4, 4);
}

TEST(TrainGradFD, ClassifierHeadWithCrossEntropy) {
  Rng rng(7);
  LayerShape s;
  s.q_dim = 6, s.kv_dim = 5, s.qk_channels = 6, s.v_channels = 6, s.heads = 1, s.mlp_hidden = 6;
  s.is_cross = true;
  ClassifierHead<double> head(s, 3);
  head.init_hf(rng, 0.5);
  for (Param<double>* p : head.params())
    if (p->kind != Param<double>::weight && p->kind != Param<double>::embedding)
      for (auto& v : p->value) v += 0.2 * rng.normal();
  const int B = 3, L = 4;
  auto latents = randn(size_t(B) * L * s.kv_dim, rng);
  std::vector<int> labels = {2, 0, 1};
  std::vector<double> logits(B * 3);
  auto loss = [&] {
    head.forward(latents.data(), B, L, logits.data(), nullptr, nullptr);
    return ref::softmax_cross_entropy<double>(logits.data(), labels.data(), B, 3, nullptr);
  };
  ClassifierHead<double>::Cache cache;
  head.forward(latents.data(), B, L, logits.data(), nullptr, &cache);
  std::vector<double> dlogits(B * 3, 0), dlatents(latents.size(), 0);
  ref::softmax_cross_entropy(logits.data(), labels.data(), B, 3, dlogits.data());
  head.zero_grad();
  head.backward(cache, dlogits.data(), dlatents.data());
  EXPECT_TRUE(Close(dlatents, finite_diff(latents, loss), kFdTol, "dlatents"));
  for (Param<double>* p : head.params())
    EXPECT_TRUE(Close(p->grad, finite_diff(p->value, loss), kFdTol, p->name));
}

// --- PyTorch
// ------------------------------------------------------------------------------------------------

std::filesystem::path grads_dir() { return test::source_dir() / "tests" / "data" / "decoder_grads"; }

std::vector<double> read_f8(const std::filesystem::path& path) {
  NpyArray a = read_npy(path);
  EXPECT_EQ(a.dtype, "f8") << path;
  std::vector<double> v(size_t(a.numel()));
  std::memcpy(v.data(), a.bytes.data(), v.size() * sizeof(double));
  return v;
}

constexpr double kTorch64Tol = 1e-10, kTorch32Tol = 2e-4;

TEST(TrainGradTorch, ClassifierDecoder) {
  const auto dir = grads_dir() / "decoder";
  NpyArray lat = read_npy(dir / "latents.npy");
  ASSERT_EQ(lat.shape.size(), 3u);
  const int B = int(lat.shape[0]), L = int(lat.shape[1]), Dkv = int(lat.shape[2]);
  const auto qshape =
      read_npy(dir / "p.perceiver.decoder.decoder.output_position_encodings.position_embeddings.npy").shape;
  const auto fshape = read_npy(dir / "p.perceiver.decoder.decoder.final_layer.weight.npy").shape;
  const int D = int(qshape[1]), C = int(fshape[0]);
  LayerShape s;
  s.q_dim = D, s.kv_dim = Dkv, s.qk_channels = D, s.v_channels = D, s.heads = 1, s.mlp_hidden = D;
  s.is_cross = true;
  std::vector<int64_t> labels64 = read_npy(dir / "labels.npy").to_i64();
  std::vector<int> labels(labels64.begin(), labels64.end());
  const double want_loss = read_f8(dir / "loss.npy")[0];

  // float64: the reference gradients to rounding.
  ClassifierHead<double> head(s, C);
  for (Param<double>* p : head.params()) p->value = read_f8(dir / ("p." + p->name + ".npy"));
  std::vector<double> latents = read_f8(dir / "latents.npy"), logits(B * C), dlogits(B * C, 0),
                      dlat(latents.size(), 0);
  ClassifierHead<double>::Cache cache;
  head.forward(latents.data(), B, L, logits.data(), nullptr, &cache);
  EXPECT_TRUE(Close(logits, read_f8(dir / "logits.npy"), kTorch64Tol, "logits"));
  EXPECT_NEAR(ref::softmax_cross_entropy(logits.data(), labels.data(), B, C, dlogits.data()), want_loss,
              1e-12);
  head.backward(cache, dlogits.data(), dlat.data());
  EXPECT_TRUE(Close(dlat, read_f8(dir / "g.latents.npy"), kTorch64Tol, "g.latents"));
  for (Param<double>* p : head.params())
    EXPECT_TRUE(Close(p->grad, read_f8(dir / ("g." + p->name + ".npy")), kTorch64Tol, p->name));

  // float32, the training path (fast kernels).
  ClassifierHead<float> head32(s, C);
  for (Param<float>* p : head32.params()) {
    auto v = read_f8(dir / ("p." + p->name + ".npy"));
    p->value.assign(v.begin(), v.end());
  }
  std::vector<float> lat32(latents.begin(), latents.end()), logits32(B * C), dlogits32(B * C, 0),
      dlat32(latents.size(), 0);
  ClassifierHead<float>::Cache cache32;
  head32.forward(lat32.data(), B, L, logits32.data(), nullptr, &cache32);
  EXPECT_NEAR(ref::softmax_cross_entropy(logits32.data(), labels.data(), B, C, dlogits32.data()), want_loss,
              1e-5);
  head32.backward(cache32, dlogits32.data(), dlat32.data());
  EXPECT_TRUE(
      Close({dlat32.begin(), dlat32.end()}, read_f8(dir / "g.latents.npy"), kTorch32Tol, "g.latents f32"));
  for (Param<float>* p : head32.params())
    EXPECT_TRUE(Close({p->grad.begin(), p->grad.end()}, read_f8(dir / ("g." + p->name + ".npy")), kTorch32Tol,
                      p->name + " f32"));
}

TEST(TrainGradTorch, SelfAttentionLayerTwoHeads) {
  const auto dir = grads_dir() / "self_attention";
  NpyArray xa = read_npy(dir / "x.npy");
  const int B = int(xa.shape[0]), N = int(xa.shape[1]), D = int(xa.shape[2]);
  const std::string prefix = "perceiver.encoder.self_attends.0.";
  const int hidden = int(read_npy(dir / ("p." + prefix + "mlp.dense1.bias.npy")).shape[0]);
  LayerShape s;
  s.q_dim = s.kv_dim = s.qk_channels = s.v_channels = D;
  s.heads = 2;
  s.mlp_hidden = hidden;
  PerceiverLayer<double> layer(s, prefix);
  for (Param<double>* p : layer.params()) p->value = read_f8(dir / ("p." + p->name + ".npy"));
  std::vector<double> x = read_f8(dir / "x.npy"), r = read_f8(dir / "r.npy"), out(x.size()), dx(x.size(), 0);
  PerceiverLayer<double>::Cache cache;
  layer.forward(x.data(), nullptr, B, N, N, out.data(), &cache);
  EXPECT_TRUE(Close(out, read_f8(dir / "out.npy"), kTorch64Tol, "out"));
  EXPECT_NEAR(dot(out, r), read_f8(dir / "loss.npy")[0], 1e-10);
  layer.backward(cache, r.data(), dx.data(), nullptr);
  EXPECT_TRUE(Close(dx, read_f8(dir / "g.x.npy"), kTorch64Tol, "g.x"));
  for (Param<double>* p : layer.params())
    EXPECT_TRUE(Close(p->grad, read_f8(dir / ("g." + p->name + ".npy")), kTorch64Tol, p->name));
}

// --- fast float kernels, threads --------------------------------------------------------------------------

std::vector<float> randf(size_t n, Rng& rng) {
  std::vector<float> v(n);
  for (auto& x : v) x = static_cast<float>(rng.normal());
  return v;
}

std::vector<double> widen(const std::vector<float>& v) { return {v.begin(), v.end()}; }

TEST(TrainFastKernels, LinearMatchesReference) {
  Rng rng(8);
  for (auto [M, N, K] : {std::tuple{1, 1, 1}, {7, 13, 9}, {67, 40, 33}, {130, 128, 128}, {5, 10, 128}}) {
    auto x = randf(size_t(M) * K, rng), W = randf(size_t(N) * K, rng), b = randf(N, rng),
         dy = randf(size_t(M) * N, rng);
    std::vector<float> y1(size_t(M) * N), y2(y1.size());
    ref::linear_forward(x.data(), W.data(), b.data(), M, N, K, y1.data());
    fast::linear_forward(x.data(), W.data(), b.data(), M, N, K, y2.data());
    EXPECT_TRUE(Close(widen(y2), widen(y1), 1e-6, "y"));
    std::vector<float> dx1(x.size(), 1.0f), dx2(x.size(), 1.0f), dW1(W.size(), 0.5f), dW2(W.size(), 0.5f),
        db1(N, 0.25f), db2(N, 0.25f);
    ref::linear_backward(x.data(), W.data(), dy.data(), M, N, K, dx1.data(), dW1.data(), db1.data());
    fast::linear_backward(x.data(), W.data(), dy.data(), M, N, K, dx2.data(), dW2.data(), db2.data());
    EXPECT_TRUE(Close(widen(dx2), widen(dx1), 1e-6, "dx"));
    EXPECT_TRUE(Close(widen(dW2), widen(dW1), 1e-6, "dW"));
    EXPECT_TRUE(Close(widen(db2), widen(db1), 1e-6, "db"));
  }
}

TEST(TrainFastKernels, HeadIsThreadCountIndependent) {
  LayerShape s;
  s.q_dim = 32, s.kv_dim = 24, s.qk_channels = 32, s.v_channels = 32, s.heads = 1, s.mlp_hidden = 32;
  s.is_cross = true;
  auto run = [&](int threads) {
    omp_set_num_threads(threads);
    Rng rng(9);
    ClassifierHead<float> head(s, 7);
    head.init_hf(rng, 0.1);
    const int B = 37, L = 19;
    auto latents = randf(size_t(B) * L * s.kv_dim, rng);
    std::vector<int> labels(B);
    for (int i = 0; i < B; ++i) labels[i] = i % 7;
    std::vector<float> logits(B * 7), dlogits(B * 7, 0), dlat(latents.size(), 0);
    ClassifierHead<float>::Cache cache;
    head.forward(latents.data(), B, L, logits.data(), nullptr, &cache);
    ref::softmax_cross_entropy(logits.data(), labels.data(), B, 7, dlogits.data());
    head.backward(cache, dlogits.data(), dlat.data());
    std::vector<float> all = dlat;
    for (Param<float>* p : head.params()) all.insert(all.end(), p->grad.begin(), p->grad.end());
    return all;
  };
  const int keep = omp_get_max_threads();
  auto one = run(1), three = run(3);
  omp_set_num_threads(keep);
  ASSERT_EQ(one.size(), three.size());
  EXPECT_EQ(0, std::memcmp(one.data(), three.data(), one.size() * sizeof(float)));
}

TEST(TrainRng, KnownSequenceAndNormalMoments) {
  Rng a(42), b(42), c(43);
  EXPECT_EQ(a.next(), b.next());
  EXPECT_NE(a.next(), c.next());
  Rng r(0);
  double sum = 0, sq = 0;
  const int n = 200000;
  for (int i = 0; i < n; ++i) {
    const double x = r.normal();
    sum += x;
    sq += x * x;
  }
  EXPECT_NEAR(sum / n, 0.0, 0.01);
  EXPECT_NEAR(sq / n, 1.0, 0.01);
}

}  // namespace
}  // namespace perceiver::train
