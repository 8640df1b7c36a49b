// The Perceiver IO image classifiers of Hugging Face transformers (modeling_perceiver.py), forward pass only:
//   PerceiverForImageClassificationConvProcessing / ...Fourier / ...Learned.
// Shapes: B batch, N input tokens, C input channels (322/261/512), L latents, D latent width.
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <map>
#include <set>

#include "formats/tensor_file.h"
#include "kernels/kernels.h"
#include "model/config.h"
#include "model/position_encoding.h"
#include "perceiver/perceiver.h"

namespace perceiver {
namespace {

// Default bound on the activations of one forward pass (see PerceiverModel::forward).
constexpr size_t kPassActivationBytes = size_t(32) << 20;

constexpr float kLayerNormEps = 1e-5f;  // nn.LayerNorm default; config.layer_norm_eps is never read by HF
// fold_constant_queries computes for up to this many queries directly, for more with the backend's GEMMs.
constexpr int kDirectFoldQueries = 8;
constexpr float kBatchNormEps = 1e-5f;

// Conv stem rows per im2col band: about 1 MB of im2col (16 rows at 224x224).
inline int stem_band_rows(int stem_width) { return std::max(1, (1 << 20) / (stem_width * 3 * 49 * 4)); }

// One tensor as fp32: a view straight into the weight file's mapping when it is stored as F32, else an owned
// converted (or, for random models, generated) copy.
struct Weight {
  const float* data = nullptr;
  size_t size = 0;
  std::vector<float> owned;
  const TensorRef* ref = nullptr;  // the file's tensor, when it came from a file
  bool mapped = false;             // data points into the memory-mapped weights file (zero-copy F32)

  const float& operator[](size_t i) const { return data[i]; }
  std::vector<float> vec() const { return std::vector<float>(data, data + size); }
};

// Reads tensors by name from a weight file, checking dtype and shape, and remembers which were used. Without
// a file it makes up random weights of the requested shapes (Model::create_random).
class WeightReader {
 public:
  // F32 tensors are used where the file holds them (zero-copy). Those in a memory mapping of the file
  // (TensorRef::mapped) have their pages mapped up front (populate_mapped) and dropped by release().
  explicit WeightReader(TensorFile& file) : file_(&file) {}
  explicit WeightReader(uint64_t seed) : rng_state_(seed * 0x9e3779b97f4a7c15ull + 1) {}

  Weight get(const std::string& name, const std::vector<int64_t>& shape) {
    Weight w;
    if (!name.ends_with("running_mean") && !name.ends_with("running_var"))
      num_parameters_ += int64_t(count(shape));
    if (!file_) {
      w.owned = random_tensor(name, count(shape));
    } else if (const TensorRef* t = file_->find(name); !t) {
      missing_.push_back(name);
      // Zeros stand in until finish() reports every missing tensor at once; past a budget, report now rather
      // than allocate what config.json merely claims (a hostile config with an empty weights file).
      missing_elements_ += count(shape);
      if (missing_elements_ > kMaxMissingElements)
        throw Error(ErrorKind::model, file_->path().string() +
                                          ": weights do not match config.json: missing " +
                                          name_list(missing_) + " and possibly more");
      w.owned.assign(count(shape), 0.0f);
    } else {
      used_.insert(name);
      if (t->shape != shape) {
        TensorRef want;
        want.shape = shape;
        throw Error(ErrorKind::model, file_->path().string() + ": tensor '" + name + "' has shape " +
                                          t->shape_string() + ", expected " + want.shape_string());
      }
      if (t->dtype == DType::i64)
        throw Error(ErrorKind::model,
                    file_->path().string() + ": tensor '" + name + "' has dtype I64, expected a float");
      w.ref = t;
      if (t->dtype == DType::f32) {  // zero-copy; mapped pages in one system call, not a fault per page
        if (t->mapped) populate_mapped(t->data, t->nbytes);
        w.mapped = t->mapped;
        w.data = reinterpret_cast<const float*>(t->data);
        w.size = count(shape);
        return w;
      }
      w.owned = tensor_to_f32(*t, file_->path());
    }
    w.data = w.owned.data();
    w.size = w.owned.size();
    return w;
  }

  // The tensor has been packed (copied) and is not needed any more: give its file pages back, so that the
  // mapped file and the packed weights do not both count in the resident set while loading.
  void release(const Weight& w, const PackedLinear& packed) const {
    if (!packed.reads_in_place) release(w);
  }
  // The same, for a tensor that nothing reads any more. Mapped tensors give their pages back; storages read
  // into memory (pytorch_model.bin's compressed or misaligned entries) are freed once all their tensors are
  // released: loading then never holds the whole file and all the packed weights at once.
  void release(const Weight& w) const {
    if (!w.ref || w.ref->nbytes == 0) return;
    if (!w.mapped) {
      if (file_) file_->release(*w.ref);
      return;
    }
    drop_mapped(w.ref->data, w.ref->nbytes);
  }

  // Every needed tensor present, nothing unexpected left over (BatchNorm's num_batches_tracked is ignored).
  void finish() const {
    if (!file_) return;
    std::vector<std::string> unexpected;
    for (const auto& t : file_->tensors())
      if (!used_.count(t.name) && !t.name.ends_with("num_batches_tracked")) unexpected.push_back(t.name);
    if (missing_.empty() && unexpected.empty()) return;
    const auto& list = name_list;
    std::string msg = file_->path().string() + ": weights do not match config.json:";
    if (!missing_.empty()) msg += " missing " + list(missing_);
    if (!missing_.empty() && !unexpected.empty()) msg += ";";
    if (!unexpected.empty()) msg += " unexpected " + list(unexpected);
    throw Error(ErrorKind::model, msg);
  }

  // Parameters read (BatchNorm running statistics excluded), as HF counts them.
  int64_t num_parameters() const { return num_parameters_; }

  static std::string name_list(const std::vector<std::string>& names) {
    std::string s;
    for (size_t i = 0; i < names.size() && i < 5; ++i) s += (i ? ", '" : "'") + printable(names[i]) + "'";
    if (names.size() > 5) s += " and " + std::to_string(names.size() - 5) + " more";
    return s;
  }

  static size_t count(const std::vector<int64_t>& shape) {
    size_t n = 1;
    for (auto d : shape) n *= static_cast<size_t>(d);
    return n;
  }

 private:
  // HF-like initialisation: weights ~ uniform with std 0.02, biases small, LayerNorm/BatchNorm scales near 1,
  // running variances near 1. Uniform rather than normal: cheap, and the values only need to be sane.
  std::vector<float> random_tensor(const std::string& name, size_t n) {
    std::vector<float> v(n);
    float centre = 0.0f, half_width = 0.02f * 1.7320508f;
    const bool norm = name.find("norm") != std::string::npos;
    if (name.ends_with("running_var") || (norm && name.ends_with(".weight"))) {
      centre = 1.0f;
      half_width = 0.1f;
    } else if (name.ends_with(".bias") || name.ends_with("running_mean")) {
      half_width = 0.01f;
    }
    for (auto& x : v) {
      rng_state_ = rng_state_ * 6364136223846793005ull + 1442695040888963407ull;  // 64-bit LCG, top 24 bits
      const float u = static_cast<float>(rng_state_ >> 40) * (1.0f / 16777216.0f);
      x = centre + half_width * (2.0f * u - 1.0f);
    }
    return v;
  }

  TensorFile* file_ = nullptr;
  uint64_t rng_state_ = 0;
  std::set<std::string> used_;
  std::vector<std::string> missing_;
  size_t missing_elements_ = 0;
  static constexpr size_t kMaxMissingElements = size_t{1} << 24;  // zeros allocated for missing tensors
  int64_t num_parameters_ = 0;
};

struct LayerNormWeights {
  std::vector<float> gamma, beta;
};

// One PerceiverLayer: attention (with optional query residual) then a GELU MLP, both pre-LayerNorm.
struct LayerWeights {
  LayerShape shape;
  LayerNormWeights ln_query, ln_kv, ln_mlp;  // ln_kv: cross-attention only
  // Self-attention: one GEMM for Q, K and V (weights stacked, output [rows, 2 qk + v]) when packed, or three
  // (query, key, value) when the weights are read in place; cross-attention: query from the query stream, key
  // and value from the key/value stream.
  std::unique_ptr<PackedLinear> qkv, query, key, value, output, mlp1, mlp2;
  // Cross-attention with input-independent queries and one head (see fold_constant_queries): (LN(x) Wq^T +
  // bq) Wk, [nq, kv_dim]; query and key are then not loaded. Empty otherwise.
  std::vector<float> folded_queries;
};

}  // namespace

class PerceiverModel final : public Model {
 public:
  // Reads every weight through `reader` (a file, or random weights) and packs it for the backend.
  PerceiverModel(PerceiverConfig config, WeightReader& reader, const ModelOptions& options);

  const ModelInfo& info() const override { return info_; }
  void check_input_size(int height, int width) const override;
  double flops_per_image(int height, int width) const override;
  void forward(const ForwardArgs& args) override;
  // Keeps the mapped weights file alive when some layer reads its weights in place.
  void keep_mapped_file(std::unique_ptr<TensorFile> file) {
    if (info_.weights_in_place) mapped_file_ = std::move(file);
  }

 private:
  // Geometry of the encoder input for an image size.
  struct InputGeometry {
    int tokens_h = 0, tokens_w = 0;  // token grid (conv: after the stem)
    int stem_h = 0, stem_w = 0;      // conv stem output before pooling
    int tokens() const { return tokens_h * tokens_w; }
  };
  InputGeometry geometry(int height, int width) const;
  // Floats of activations per image, by workspace buffer (prepare() allocates batch x these).
  struct ActivationSizes {
    size_t stem_out = 0, pixels_hwc = 0, inputs = 0, kv_norm = 0, keys = 0, values = 0, latents = 0,
           decoder_x = 0, queries = 0, context = 0, qkv = 0, hidden = 0;
    size_t floats() const;
  };
  ActivationSizes activation_sizes(int height, int width) const;
  int auto_images_per_pass(int height, int width) const;

  // constant_queries: the layer's query input [nq, q_dim] when it does not depend on the image (the latents
  // of the encoder cross-attention, the decoder's query), else nullptr.
  void load_layer(WeightReader& reader, const std::string& prefix, const LayerShape& shape,
                  LayerWeights* layer, const float* constant_queries = nullptr, int nq = 0);
  std::vector<float> fold_constant_queries(WeightReader& reader, const std::string& prefix,
                                           const LayerShape& s, const LayerNormWeights& ln, const float* x,
                                           int nq);
  LayerNormWeights load_layer_norm(WeightReader& reader, const std::string& prefix, int width);
  std::unique_ptr<PackedLinear> load_linear(WeightReader& reader, const std::string& prefix, int out, int in);
  // Packs weights as the backend wants them; in place (no copy) when they are F32 in the mapped file, the
  // options allow it and the backend can.
  std::unique_ptr<PackedLinear> pack(WeightReader& reader, const std::vector<const Weight*>& weights,
                                     const std::vector<const Weight*>& biases, int in, Precision precision);

  void prepare(int batch, int height, int width);
  void forward_pass(const ForwardArgs& args);  // forward() of one pass of images (or traced)
  void build_inputs(const ForwardArgs& args);  // pixels -> inputs_ [B, N, C]
  // x: [batch * nq, q_dim], updated in place. kv_raw: [batch * nk, kv_dim] for cross-attention, or nullptr.
  void run_layer(const LayerWeights& w, float* x, int batch, int nq, const float* kv_raw, int nk,
                 float* probs, const ForwardArgs& args, const char* attention_out_name);
  void trace(const ForwardArgs& args, std::string_view name, std::vector<int64_t> shape,
             const float* data) const {
    if (args.trace) (*args.trace)(name, shape, data);
  }

  std::unique_ptr<TensorFile> mapped_file_;  // weights read in place by the backend (fp32, safetensors)
  PerceiverConfig config_;
  ModelInfo info_;
  ModelOptions options_;
  std::unique_ptr<Backend> backend_;

  // Preprocessor.
  std::unique_ptr<PackedLinear> conv_stem_;  // conv: [64, 3*7*7] (OIHW flattened)
  std::vector<float> bn_scale_, bn_shift_;   // conv: folded eval-mode BatchNorm, [64]
  std::unique_ptr<PackedLinear> conv1x1_;    // learned: [256, 3]
  std::vector<float> learned_positions_;     // learned: projected position table [N, 256]

  std::vector<float> latents_;  // [L, D]
  LayerWeights encoder_cross_;
  std::vector<LayerWeights> self_attends_;  // shared by every block
  std::vector<float> decoder_query_;        // [1, D]
  LayerWeights decoder_cross_;
  std::unique_ptr<PackedLinear> final_layer_;

  // Activation buffers, planned once per (batch, height, width).
  struct Workspace {
    int batch = 0, height = 0, width = 0;
    InputGeometry geo;
    std::vector<float> fourier;           // [N, 258] position features
    std::vector<float> im2col, stem_out;  // conv stem: [band*W1, 147] (one band of rows), [B*H1*W1, 64]
    std::vector<float> pixels_hwc;        // fourier/learned: [B*H*W, 3]
    std::vector<float> inputs;            // [B, N, C]
    std::vector<float> kv_norm;           // [B, max(N, L), max kv width]
    std::vector<float> keys, values;      // [B, max(N, L), max qk / v]
    std::vector<float> x, x_norm;         // [B, L, D]
    std::vector<float> decoder_x;         // [B, 1, D]
    std::vector<float> queries, context;  // [B, L, max qk / v]
    std::vector<float> qkv;               // self-attention [B, L, 2 qk + v]
    std::vector<float> hidden;            // [B, L, max mlp hidden]
    std::vector<float> probs;             // only when tracing probabilities
    std::vector<float> scratch;           // trace layout conversions
  } ws_;
};

PerceiverModel::PerceiverModel(PerceiverConfig config, WeightReader& reader, const ModelOptions& options)
    : config_(std::move(config)), options_(options) {
  if (options.backend == "reference")
    backend_ = make_reference_backend(options.threads);
  else if (options.backend == "auto" || options.backend == "fast")
    backend_ = make_best_backend(options.threads);
  else
    throw Error(ErrorKind::usage, "unknown backend '" + options.backend + "' (auto, fast, reference)");
  if (options.backend == "fast" && backend_->name() == "reference")
    throw Error(ErrorKind::usage, "the fast backend is not available on this build or CPU");

  const auto& c = config_;
  const int64_t L = c.num_latents, D = c.d_latents;
  const std::string p = "perceiver.";

  switch (c.architecture) {
    case Architecture::conv: {
      const std::string cp = p + "input_preprocessor.convnet.";
      auto w = reader.get(cp + "conv.weight", {kConvStemChannels, 3, 7, 7});
      conv_stem_ = pack(reader, {&w}, {nullptr}, 3 * 7 * 7, Precision::fp32);
      auto gamma = reader.get(cp + "batchnorm.weight", {kConvStemChannels});
      auto beta = reader.get(cp + "batchnorm.bias", {kConvStemChannels});
      auto mean = reader.get(cp + "batchnorm.running_mean", {kConvStemChannels});
      auto var = reader.get(cp + "batchnorm.running_var", {kConvStemChannels});
      bn_scale_.resize(kConvStemChannels);
      bn_shift_.resize(kConvStemChannels);
      for (int o = 0; o < kConvStemChannels; ++o) {
        bn_scale_[o] = gamma[o] / std::sqrt(var[o] + kBatchNormEps);
        bn_shift_[o] = beta[o] - mean[o] * bn_scale_[o];
      }
      break;
    }
    case Architecture::fourier:
      break;
    case Architecture::learned: {
      const std::string lp = p + "input_preprocessor.";
      auto w = reader.get(lp + "convnet_1x1.weight", {kLearnedChannels, 3, 1, 1});
      auto b = reader.get(lp + "convnet_1x1.bias", {kLearnedChannels});
      conv1x1_ = backend_->pack_linear(w.data, b.data, kLearnedChannels, 3, Precision::fp32);
      const int64_t n = int64_t(c.image_size) * c.image_size;
      auto table = reader.get(lp + "position_embeddings.position_embeddings", {n, kLearnedChannels});
      auto proj = load_linear(reader, lp + "positions_projection", kLearnedChannels, kLearnedChannels);
      // The projection of the position table is input-independent: done once here. [N, 256]
      learned_positions_.resize(table.size);
      backend_->linear(*proj, table.data, kLearnedChannels, static_cast<int>(n), learned_positions_.data(),
                       kLearnedChannels, Activation::none, nullptr);
      break;
    }
  }

  latents_ = reader.get(p + "embeddings.latents", {L, D}).vec();
  load_layer(reader, p + "encoder.cross_attention.", c.encoder_cross, &encoder_cross_, latents_.data(),
             int(L));
  self_attends_.resize(c.num_self_attends_per_block);
  for (int i = 0; i < c.num_self_attends_per_block; ++i)
    load_layer(reader, p + "encoder.self_attends." + std::to_string(i) + ".", c.self_attention,
               &self_attends_[i]);
  const std::string dp = p + "decoder.decoder.";
  decoder_query_ = reader.get(dp + "output_position_encodings.position_embeddings", {1, D}).vec();
  load_layer(reader, dp + "decoding_cross_attention.", c.decoder_cross, &decoder_cross_,
             decoder_query_.data(), 1);
  final_layer_ = load_linear(reader, dp + "final_layer", c.num_labels(), c.d_latents);
  reader.finish();

  info_.architecture = c.architecture_name;
  info_.backend = backend_->name();
  info_.labels = c.labels;
  info_.num_labels = c.num_labels();
  info_.num_latents = c.num_latents;
  info_.d_latents = c.d_latents;
  if (c.architecture == Architecture::learned)
    info_.fixed_image_height = info_.fixed_image_width = c.image_size;
  info_.num_parameters = reader.num_parameters();
}

LayerNormWeights PerceiverModel::load_layer_norm(WeightReader& reader, const std::string& prefix, int width) {
  return {reader.get(prefix + ".weight", {width}).vec(), reader.get(prefix + ".bias", {width}).vec()};
}

std::unique_ptr<PackedLinear> PerceiverModel::pack(WeightReader& reader,
                                                   const std::vector<const Weight*>& weights,
                                                   const std::vector<const Weight*>& biases, int in,
                                                   Precision precision) {
  std::vector<LinearPart> parts;
  bool mapped = options_.mmap_weights;
  for (size_t i = 0; i < weights.size(); ++i) {
    parts.push_back(
        {weights[i]->data, biases[i] ? biases[i]->data : nullptr, int(weights[i]->size / size_t(in))});
    mapped = mapped && weights[i]->mapped;
  }
  auto packed = backend_->pack_linear(parts, in, precision, mapped);
  if (packed->reads_in_place) info_.weights_in_place = true;
  for (const Weight* w : weights) reader.release(*w, *packed);
  return packed;
}

std::unique_ptr<PackedLinear> PerceiverModel::load_linear(WeightReader& reader, const std::string& prefix,
                                                          int out, int in) {
  auto w = reader.get(prefix + ".weight", {out, in});
  auto b = reader.get(prefix + ".bias", {out});
  return pack(reader, {&w}, {&b}, in, options_.precision);
}

// Cross-attention whose queries do not depend on the image, with one head. The scores are
//   q K^T = (LN(x) Wq^T + bq) (LN(kv) Wk^T + bk)^T = (q Wk) LN(kv)^T + (q . bk)
// and the last term is the same for every key of a query, which softmax ignores: so q Wk [nq, kv_dim] is
// computed once here, and per image the scores come from LN(kv) itself, without the key projection. The
// value projection moves after the weighted sum (the probabilities sum to 1, so the bias passes through):
//   P (LN(kv) Wv^T + bv) = (P LN(kv)) Wv^T + bv.
// For the conv model that is 3.5 of its 369 GFLOP (the key and value projections of 3025 input tokens and of
// the decoder's 512 latents), more for the Fourier and learned models (50176 tokens). In fp32 whatever the
// precision of the model: it is done once.
std::vector<float> PerceiverModel::fold_constant_queries(WeightReader& reader, const std::string& prefix,
                                                         const LayerShape& s, const LayerNormWeights& ln,
                                                         const float* x, int nq) {
  const int qk = s.qk_channels, kv = s.kv_dim;
  std::vector<float> x_norm(size_t(nq) * s.q_dim), q(size_t(nq) * qk), folded(size_t(nq) * kv);
  backend_->layer_norm(x, nq, s.q_dim, ln.gamma.data(), ln.beta.data(), kLayerNormEps, x_norm.data());
  auto wq = reader.get(prefix + "attention.self.query.weight", {qk, s.q_dim});
  auto bq = reader.get(prefix + "attention.self.query.bias", {qk});
  auto wk = reader.get(prefix + "attention.self.key.weight", {qk, kv});
  reader.get(prefix + "attention.self.key.bias", {qk});  // read (it is part of the model), not needed
  if (nq <= kDirectFoldQueries) {
    // A few queries (the decoder's one): both products directly, in double, reading the weights as they lie;
    // packing them for a GEMM would take longer.
    std::vector<double> qi(qk), fi(kv);
    for (int i = 0; i < nq; ++i) {
      const float* xi = &x_norm[size_t(i) * s.q_dim];
      for (int c = 0; c < qk; ++c) {
        const float* w = wq.data + size_t(c) * s.q_dim;
        double sum = bq[c];
        for (int d = 0; d < s.q_dim; ++d) sum += double(xi[d]) * w[d];
        qi[c] = sum;
      }
      std::fill(fi.begin(), fi.end(), 0.0);
      for (int c = 0; c < qk; ++c) {
        const float* w = wk.data + size_t(c) * kv;
        for (int j = 0; j < kv; ++j) fi[j] += qi[c] * w[j];
      }
      for (int j = 0; j < kv; ++j) folded[size_t(i) * kv + j] = float(fi[j]);
    }
    reader.release(wq);
    reader.release(wk);
    return folded;
  }
  auto query = backend_->pack_linear(wq.data, bq.data, qk, s.q_dim, Precision::fp32);
  reader.release(wq, *query);
  backend_->linear(*query, x_norm.data(), s.q_dim, nq, q.data(), qk, Activation::none, nullptr);
  std::vector<float> wk_t(size_t(kv) * qk);  // Wk^T [kv, qk], in 32 x 32 blocks
  for (int i0 = 0; i0 < qk; i0 += 32)
    for (int j0 = 0; j0 < kv; j0 += 32)
      for (int i = i0; i < std::min(qk, i0 + 32); ++i)
        for (int j = j0; j < std::min(kv, j0 + 32); ++j) wk_t[size_t(j) * qk + i] = wk[size_t(i) * kv + j];
  reader.release(wk);
  backend_->linear(*backend_->pack_linear(wk_t.data(), nullptr, kv, qk, Precision::fp32), q.data(), qk, nq,
                   folded.data(), kv, Activation::none, nullptr);
  return folded;
}

void PerceiverModel::load_layer(WeightReader& reader, const std::string& prefix, const LayerShape& s,
                                LayerWeights* layer, const float* constant_queries, int nq) {
  layer->shape = s;
  layer->ln_query = load_layer_norm(reader, prefix + "attention.self.layernorm1", s.q_dim);
  if (s.is_cross) {
    layer->ln_kv = load_layer_norm(reader, prefix + "attention.self.layernorm2", s.kv_dim);
    if (constant_queries && s.heads == 1) {
      layer->folded_queries = fold_constant_queries(reader, prefix, s, layer->ln_query, constant_queries, nq);
    } else {
      layer->query = load_linear(reader, prefix + "attention.self.query", s.qk_channels, s.q_dim);
      layer->key = load_linear(reader, prefix + "attention.self.key", s.qk_channels, s.kv_dim);
    }
    layer->value = load_linear(reader, prefix + "attention.self.value", s.v_channels, s.kv_dim);
  } else {  // Q, K and V all read LN(x): one GEMM with the three weight matrices stacked
    std::vector<Weight> weights, biases;
    for (const auto& [name, rows] : {std::pair<const char*, int>{"query", s.qk_channels},
                                     {"key", s.qk_channels},
                                     {"value", s.v_channels}}) {
      weights.push_back(reader.get(prefix + "attention.self." + name + ".weight", {rows, s.q_dim}));
      biases.push_back(reader.get(prefix + "attention.self." + name + ".bias", {rows}));
    }
    // Weights read in place from the file stay three GEMMs with dense outputs: oneDNN runs unpacked weights
    // 15% slower when it writes into the strided [Q | K | V] rows. Packed, they are one stacked GEMM.
    const bool in_place = options_.mmap_weights && backend_->reads_in_place(options_.precision) &&
                          weights[0].mapped && weights[1].mapped && weights[2].mapped;
    if (in_place) {
      layer->query = pack(reader, {&weights[0]}, {&biases[0]}, s.q_dim, options_.precision);
      layer->key = pack(reader, {&weights[1]}, {&biases[1]}, s.q_dim, options_.precision);
      layer->value = pack(reader, {&weights[2]}, {&biases[2]}, s.q_dim, options_.precision);
    } else {
      layer->qkv = pack(reader, {&weights[0], &weights[1], &weights[2]}, {&biases[0], &biases[1], &biases[2]},
                        s.q_dim, options_.precision);
    }
  }
  layer->output = load_linear(reader, prefix + "attention.output.dense", s.q_dim, s.v_channels);
  layer->ln_mlp = load_layer_norm(reader, prefix + "layernorm", s.q_dim);
  layer->mlp1 = load_linear(reader, prefix + "mlp.dense1", s.mlp_hidden, s.q_dim);
  layer->mlp2 = load_linear(reader, prefix + "mlp.dense2", s.q_dim, s.mlp_hidden);
}

PerceiverModel::InputGeometry PerceiverModel::geometry(int height, int width) const {
  InputGeometry g;
  if (config_.architecture == Architecture::conv) {
    g.stem_h = conv_stem_out(height);
    g.stem_w = conv_stem_out(width);
    g.tokens_h = conv_pool_out(g.stem_h);
    g.tokens_w = conv_pool_out(g.stem_w);
  } else {
    g.tokens_h = height;
    g.tokens_w = width;
  }
  return g;
}

void PerceiverModel::check_input_size(int height, int width) const {
  auto bad = [&](const std::string& why) {
    throw Error(ErrorKind::bad_input, "input size " + std::to_string(height) + "x" + std::to_string(width) +
                                          " is not admitted by " + config_.architecture_name + ": " + why);
  };
  if (height <= 0 || width <= 0 || height > 8192 || width > 8192) bad("sides must be in 1..8192");
  switch (config_.architecture) {
    case Architecture::conv:
      if (height < 5 || width < 5) bad("the conv stem needs at least 5x5 pixels");
      break;
    case Architecture::fourier:
      break;
    case Architecture::learned:
      if (int64_t(height) * width != int64_t(config_.image_size) * config_.image_size)
        bad("its position table covers " + std::to_string(config_.image_size) + "x" +
            std::to_string(config_.image_size) + " pixels");
      break;
  }
  if (int64_t(geometry(height, width).tokens()) * config_.input_channels > (int64_t(1) << 31) / 4)
    bad("too many input tokens");
}

double PerceiverModel::flops_per_image(int height, int width) const {
  const auto& c = config_;
  const double n = geometry(height, width).tokens(), l = c.num_latents;
  auto layer_macs = [](const LayerShape& s, double nq, double nk) {
    return nq * s.q_dim * s.qk_channels + 2 * nk * s.kv_dim * (s.qk_channels + s.v_channels) / 2 +
           nq * nk * (s.qk_channels + s.v_channels) + nq * s.v_channels * s.q_dim +
           2 * nq * s.q_dim * s.mlp_hidden;
  };
  double macs = layer_macs(c.encoder_cross, l, n) +
                double(c.num_blocks) * c.num_self_attends_per_block * layer_macs(c.self_attention, l, l) +
                layer_macs(c.decoder_cross, 1, l) + double(c.d_latents) * c.num_labels();
  if (c.architecture == Architecture::conv) {
    auto g = geometry(height, width);
    macs += double(g.stem_h) * g.stem_w * kConvStemChannels * 3 * 49;
  } else if (c.architecture == Architecture::learned) {
    macs += n * 3 * kLearnedChannels;
  }
  return 2 * macs;
}

PerceiverModel::ActivationSizes PerceiverModel::activation_sizes(int height, int width) const {
  const InputGeometry geo = geometry(height, width);
  const auto& c = config_;
  const size_t N = geo.tokens(), C = c.input_channels, L = c.num_latents, D = c.d_latents;
  const auto& ec = c.encoder_cross;
  const auto& sa = c.self_attention;
  const auto& dc = c.decoder_cross;
  ActivationSizes s;
  if (c.architecture == Architecture::conv)
    s.stem_out = size_t(geo.stem_h) * geo.stem_w * kConvStemChannels;
  else
    s.pixels_hwc = size_t(height) * width * 3;
  s.inputs = N * C;
  s.kv_norm = std::max(N * C, L * D);
  // keys also holds P LN(kv) [nq, kv_dim] of a folded cross-attention, queries its folded queries.
  s.keys = std::max(
      {N * ec.qk_channels, L * sa.qk_channels, L * dc.qk_channels, L * ec.kv_dim, size_t(dc.kv_dim)});
  s.values = std::max({N * ec.v_channels, L * sa.v_channels, L * dc.v_channels});
  s.latents = L * D;
  s.decoder_x = D;
  s.queries =
      std::max(L * std::max({ec.qk_channels, sa.qk_channels, dc.qk_channels, ec.kv_dim}), size_t(dc.kv_dim));
  s.context = L * std::max({ec.v_channels, sa.v_channels, dc.v_channels});
  s.qkv = L * (2 * sa.qk_channels + sa.v_channels);
  s.hidden = L * std::max({ec.mlp_hidden, sa.mlp_hidden, dc.mlp_hidden});
  return s;
}

size_t PerceiverModel::ActivationSizes::floats() const {
  return stem_out + pixels_hwc + inputs + kv_norm + keys + values + 2 * latents + decoder_x + queries +
         context + qkv + hidden;
}

int PerceiverModel::auto_images_per_pass(int height, int width) const {
  // As many images as fit in kPassActivationBytes of activations: one for the ImageNet models (about 40 MB
  // each), dozens for small ones, whose one-image GEMMs are too small to amortise a parallel region each.
  const size_t per_image = sizeof(float) * activation_sizes(height, width).floats();
  const int threads = options_.threads > 0 ? options_.threads : omp_get_num_procs();
  const size_t by_memory = kPassActivationBytes / std::max<size_t>(per_image, 1);
  return static_cast<int>(std::clamp<size_t>(by_memory, std::max(1, (threads + 7) / 8), 1024));
}

void PerceiverModel::prepare(int batch, int height, int width) {
  auto& w = ws_;
  // Planned for up to w.batch images of this size: a smaller batch (the last pass of a chunked forward) fits.
  if (batch <= w.batch && w.height == height && w.width == width) return;
  const auto& c = config_;
  w.batch = batch;
  w.height = height;
  w.width = width;
  w.geo = geometry(height, width);
  const ActivationSizes s = activation_sizes(height, width);
  const size_t B = batch;
  if (c.architecture != Architecture::learned) {
    const int res = c.architecture == Architecture::conv ? 56 : 224;  // HF's max_resolution per class
    w.fourier = fourier_position_encoding(w.geo.tokens_h, w.geo.tokens_w, res, res, kFourierBands);
  }
  if (c.architecture == Architecture::conv)
    w.im2col.assign(size_t(stem_band_rows(w.geo.stem_w)) * w.geo.stem_w * 3 * 49, 0.0f);
  const std::pair<std::vector<float>*, size_t> buffers[] = {
      {&w.stem_out, s.stem_out},   {&w.pixels_hwc, s.pixels_hwc},
      {&w.inputs, s.inputs},       {&w.kv_norm, s.kv_norm},
      {&w.keys, s.keys},           {&w.values, s.values},
      {&w.x, s.latents},           {&w.x_norm, s.latents},
      {&w.decoder_x, s.decoder_x}, {&w.queries, s.queries},
      {&w.context, s.context},     {&w.qkv, s.qkv},
      {&w.hidden, s.hidden}};
  for (const auto& [buffer, per_image] : buffers) buffer->assign(B * per_image, 0.0f);
  w.probs.clear();
}

void PerceiverModel::build_inputs(const ForwardArgs& args) {
  auto& w = ws_;
  const auto& c = config_;
  const int B = args.batch, H = args.height, W = args.width, C = c.input_channels;
  const int N = w.geo.tokens();
  const float* pixels = args.pixels;  // [B, 3, H, W]
  float* inputs = w.inputs.data();    // [B, N, C]
  int pos_offset = 0;                 // first position channel

  if (c.architecture == Architecture::conv) {
    const int H1 = w.geo.stem_h, W1 = w.geo.stem_w, H2 = w.geo.tokens_h, W2 = w.geo.tokens_w;
    const int K = 3 * 49;
    // im2col of the zero-padded (3 each side) image for the 7x7 stride-2 conv, [rows*W1, 3*7*7], a band of
    // stem rows at a time (about 1 MB) so that the buffer stays small and in cache; then the GEMM of the
    // band.
    float* stem = w.stem_out.data();  // [B, H1, W1, 64] channels-last
    const int band = stem_band_rows(W1);
    for (int r0 = 0; r0 < B * H1; r0 += band) {
      const int rows = std::min(band, B * H1 - r0);
#pragma omp parallel for collapse(2) schedule(static)
      for (int r = 0; r < rows; ++r)
        for (int x = 0; x < W1; ++x) {
          const int b = (r0 + r) / H1, y = (r0 + r) % H1;
          float* col = &w.im2col[(size_t(r) * W1 + x) * K];
          for (int i = 0; i < 3; ++i)
            for (int ky = 0; ky < 7; ++ky)
              for (int kx = 0; kx < 7; ++kx) {
                const int iy = 2 * y + ky - 3, ix = 2 * x + kx - 3;
                col[i * 49 + ky * 7 + kx] = (iy < 0 || iy >= H || ix < 0 || ix >= W)
                                                ? 0.0f
                                                : pixels[((size_t(b) * 3 + i) * H + iy) * W + ix];
              }
        }
      backend_->linear(*conv_stem_, w.im2col.data(), K, rows * W1, stem + size_t(r0) * W1 * kConvStemChannels,
                       kConvStemChannels, Activation::none, nullptr);
    }
    auto trace_nchw = [&](const char* name, const float* src, int h, int wd, long src_stride_token,
                          long src_stride_batch) {
      if (!args.trace) return;
      w.scratch.resize(size_t(B) * kConvStemChannels * h * wd);
      for (int b = 0; b < B; ++b)
        for (int o = 0; o < kConvStemChannels; ++o)
          for (int t = 0; t < h * wd; ++t)
            w.scratch[(size_t(b) * kConvStemChannels + o) * h * wd + t] =
                src[b * src_stride_batch + t * src_stride_token + o];
      trace(args, name, {B, kConvStemChannels, h, wd}, w.scratch.data());
    };
    trace_nchw("conv_out", stem, H1, W1, kConvStemChannels, long(H1) * W1 * kConvStemChannels);
    // BatchNorm (eval) + ReLU in place.
    const size_t stem_pixels = size_t(B) * H1 * W1;
#pragma omp parallel for schedule(static)
    for (size_t t = 0; t < stem_pixels; ++t)
      for (int o = 0; o < kConvStemChannels; ++o) {
        float& v = stem[t * kConvStemChannels + o];
        v = std::max(0.0f, v * bn_scale_[o] + bn_shift_[o]);
      }
      // 3x3 stride-2 max-pool, no padding, straight into the first 64 channels of each token.
#pragma omp parallel for collapse(2) schedule(static)
    for (int b = 0; b < B; ++b)
      for (int y = 0; y < H2; ++y)
        for (int x = 0; x < W2; ++x) {
          float* dst = &inputs[(size_t(b) * N + size_t(y) * W2 + x) * C];
          for (int o = 0; o < kConvStemChannels; ++o) {
            float m = -INFINITY;
            for (int dy = 0; dy < 3; ++dy)
              for (int dx = 0; dx < 3; ++dx)
                m = std::max(m,
                             stem[((size_t(b) * H1 + 2 * y + dy) * W1 + 2 * x + dx) * kConvStemChannels + o]);
            dst[o] = m;
          }
        }
    trace_nchw("conv_pool_out", inputs, H2, W2, C, long(N) * C);
    pos_offset = kConvStemChannels;
  } else {
    // NCHW -> [B*H*W, 3] channels-last.
    for (int b = 0; b < B; ++b)
      for (int i = 0; i < 3; ++i)
        for (int t = 0; t < H * W; ++t)
          w.pixels_hwc[(size_t(b) * H * W + t) * 3 + i] = pixels[(size_t(b) * 3 + i) * H * W + t];
    if (c.architecture == Architecture::fourier) {
      for (size_t t = 0; t < size_t(B) * N; ++t)
        std::memcpy(&inputs[t * C], &w.pixels_hwc[t * 3], 3 * sizeof(float));
      pos_offset = 3;
    } else {  // learned: 1x1 conv to 256 channels, then the projected position table
      backend_->linear(*conv1x1_, w.pixels_hwc.data(), 3, B * N, inputs, C, Activation::none, nullptr);
      for (int b = 0; b < B; ++b)
        for (int t = 0; t < N; ++t)
          std::memcpy(&inputs[(size_t(b) * N + t) * C + kLearnedChannels],
                      &learned_positions_[size_t(t) * kLearnedChannels], kLearnedChannels * sizeof(float));
    }
  }
  if (c.architecture != Architecture::learned) {
    const int pos_channels = C - pos_offset;
    for (int b = 0; b < B; ++b)
      for (int t = 0; t < N; ++t)
        std::memcpy(&inputs[(size_t(b) * N + t) * C + pos_offset], &w.fourier[size_t(t) * pos_channels],
                    pos_channels * sizeof(float));
  }
  trace(args, "preproc_output", {B, N, C}, inputs);
}

void PerceiverModel::run_layer(const LayerWeights& lw, float* x, int batch, int nq, const float* kv_raw,
                               int nk, float* probs, const ForwardArgs& args,
                               const char* attention_out_name) {
  auto& w = ws_;
  const LayerShape& s = lw.shape;
  const int rows_q = batch * nq, rows_kv = batch * nk;
  float* x_norm = w.x_norm.data();
  backend_->layer_norm(x, rows_q, s.q_dim, lw.ln_query.gamma.data(), lw.ln_query.beta.data(), kLayerNormEps,
                       x_norm);
  AttentionArgs a;
  a.dqk = s.qk_channels / s.heads;
  a.dv = s.v_channels / s.heads;
  a.ldo = s.v_channels;
  a.out = w.context.data();
  const bool folded = kv_raw && !lw.folded_queries.empty();
  if (folded) {  // constant queries, one head: attend over LN(kv_raw) itself (fold_constant_queries)
    backend_->layer_norm(kv_raw, rows_kv, s.kv_dim, lw.ln_kv.gamma.data(), lw.ln_kv.beta.data(),
                         kLayerNormEps, w.kv_norm.data());
    for (int b = 0; b < batch; ++b)
      std::memcpy(w.queries.data() + size_t(b) * lw.folded_queries.size(), lw.folded_queries.data(),
                  sizeof(float) * lw.folded_queries.size());
    a.q = w.queries.data();
    a.k = a.v = w.kv_norm.data();
    a.ldq = a.ldk = a.ldv = a.ldo = s.kv_dim;
    a.dqk = a.dv = s.kv_dim;  // the scale below stays that of the original head width
    a.out = w.keys.data();    // P LN(kv): [rows_q, kv_dim]
  } else if (kv_raw) {        // cross-attention: queries from LN(x), keys and values from LN(kv_raw)
    backend_->layer_norm(kv_raw, rows_kv, s.kv_dim, lw.ln_kv.gamma.data(), lw.ln_kv.beta.data(),
                         kLayerNormEps, w.kv_norm.data());
    const float* kv = w.kv_norm.data();
    backend_->linear(*lw.query, x_norm, s.q_dim, rows_q, w.queries.data(), s.qk_channels, Activation::none,
                     nullptr);
    backend_->linear(*lw.key, kv, s.kv_dim, rows_kv, w.keys.data(), s.qk_channels, Activation::none, nullptr);
    backend_->linear(*lw.value, kv, s.kv_dim, rows_kv, w.values.data(), s.v_channels, Activation::none,
                     nullptr);
    a.q = w.queries.data();
    a.k = w.keys.data();
    a.v = w.values.data();
    a.ldq = a.ldk = s.qk_channels;
    a.ldv = s.v_channels;
  } else if (lw.qkv) {  // self-attention: [Q | K | V] = LN(x) [Wq | Wk | Wv]^T in one GEMM
    const int n = 2 * s.qk_channels + s.v_channels;
    backend_->linear(*lw.qkv, x_norm, s.q_dim, rows_q, w.qkv.data(), n, Activation::none, nullptr);
    a.q = w.qkv.data();
    a.k = w.qkv.data() + s.qk_channels;
    a.v = w.qkv.data() + 2 * s.qk_channels;
    a.ldq = a.ldk = a.ldv = n;
  } else {  // self-attention, three GEMMs: Q, K and V dense one after another in the same buffer
    float* q = w.qkv.data();
    float* k = q + size_t(rows_q) * s.qk_channels;
    float* v = k + size_t(rows_q) * s.qk_channels;
    backend_->linear(*lw.query, x_norm, s.q_dim, rows_q, q, s.qk_channels, Activation::none, nullptr);
    backend_->linear(*lw.key, x_norm, s.q_dim, rows_q, k, s.qk_channels, Activation::none, nullptr);
    backend_->linear(*lw.value, x_norm, s.q_dim, rows_q, v, s.v_channels, Activation::none, nullptr);
    a.q = q;
    a.k = k;
    a.v = v;
    a.ldq = a.ldk = s.qk_channels;
    a.ldv = s.v_channels;
  }
  a.probs = probs;
  a.batch = batch;
  a.heads = s.heads;
  a.nq = nq;
  a.nk = nk;
  a.scale = static_cast<float>(1.0 / std::sqrt(double(s.qk_channels / s.heads)));
  a.precision = options_.precision;
  backend_->attention(a);
  if (folded)  // context = (P LN(kv)) Wv^T + bv
    backend_->linear(*lw.value, w.keys.data(), s.kv_dim, rows_q, w.context.data(), s.v_channels,
                     Activation::none, nullptr);

  // Output projection; the query residual adds the un-normalised input.
  if (s.query_residual) {
    backend_->linear(*lw.output, w.context.data(), s.v_channels, rows_q, x, s.q_dim, Activation::none, x);
  } else {
    backend_->linear(*lw.output, w.context.data(), s.v_channels, rows_q, x_norm, s.q_dim, Activation::none,
                     nullptr);
    std::memcpy(x, x_norm, sizeof(float) * size_t(rows_q) * s.q_dim);
  }
  if (attention_out_name) trace(args, attention_out_name, {batch, nq, s.q_dim}, x);
  // x += MLP(LN(x))
  backend_->layer_norm(x, rows_q, s.q_dim, lw.ln_mlp.gamma.data(), lw.ln_mlp.beta.data(), kLayerNormEps,
                       x_norm);
  backend_->linear(*lw.mlp1, x_norm, s.q_dim, rows_q, w.hidden.data(), s.mlp_hidden, Activation::gelu,
                   nullptr);
  backend_->linear(*lw.mlp2, w.hidden.data(), s.mlp_hidden, rows_q, x, s.q_dim, Activation::none, x);
}

void PerceiverModel::forward(const ForwardArgs& args) {
  if (!args.pixels) throw Error(ErrorKind::internal, "forward: no pixels");
  if (args.batch <= 0) throw Error(ErrorKind::bad_input, "forward: batch size must be positive");
  check_input_size(args.height, args.width);
  // A batch goes through the network a few images at a time (ModelOptions::images_per_pass; by default as
  // many as fit in kPassActivationBytes). On CPUs a bigger pass does not make the GEMMs faster once they have
  // a few hundred rows, while the activations grow with it and spill out of the caches: for the ImageNet
  // model (512 latents) on 2 cores, passes of 1, 2 and 4 images ran within 1% per image of each other and 8
  // 2-3% slower, with twice the memory. Small models (64 latents) need dozens of images per pass to
  // amortise the parallel regions. A traced run keeps its batch (the trace has batch-shaped tensors).
  const int per_pass = args.trace                     ? args.batch
                       : options_.images_per_pass > 0 ? options_.images_per_pass
                                                      : auto_images_per_pass(args.height, args.width);
  if (args.batch <= per_pass) return forward_pass(args);
  const size_t pixels = size_t(3) * args.height * args.width;
  const size_t L = config_.num_latents, D = config_.d_latents, labels = config_.num_labels();
  for (int b0 = 0; b0 < args.batch; b0 += per_pass) {
    ForwardArgs part = args;
    part.batch = std::min(per_pass, args.batch - b0);
    part.pixels = args.pixels + b0 * pixels;
    if (args.logits) part.logits = args.logits + b0 * labels;
    if (args.latents) part.latents = args.latents + b0 * L * D;
    if (args.decoder_features) part.decoder_features = args.decoder_features + b0 * D;
    forward_pass(part);
  }
}

void PerceiverModel::forward_pass(const ForwardArgs& args) {
  prepare(args.batch, args.height, args.width);
  auto& w = ws_;
  const auto& c = config_;
  const int B = args.batch, L = c.num_latents, D = c.d_latents, N = w.geo.tokens();

  build_inputs(args);

  // Encoder cross-attention: latents [B, L, D] attend to the inputs [B, N, C].
  for (int b = 0; b < B; ++b) std::memcpy(&w.x[size_t(b) * L * D], latents_.data(), sizeof(float) * L * D);
  trace(args, "latents_init", {B, L, D}, w.x.data());
  auto probs_for = [&](int heads, int nq, int nk) -> float* {
    if (!args.trace || !args.trace_attention_probs) return nullptr;
    w.probs.resize(size_t(B) * heads * nq * nk);
    return w.probs.data();
  };
  float* probs = probs_for(c.encoder_cross.heads, L, N);
  run_layer(encoder_cross_, w.x.data(), B, L, w.inputs.data(), N, probs, args, "cross_attn_attention_out");
  if (probs) trace(args, "cross_attn_probs", {B, c.encoder_cross.heads, L, N}, probs);
  trace(args, "latents_after_cross_attn", {B, L, D}, w.x.data());

  // num_blocks x the same num_self_attends_per_block layers.
  for (int block = 0; block < c.num_blocks; ++block)
    for (int i = 0; i < c.num_self_attends_per_block; ++i) {
      probs = probs_for(c.self_attention.heads, L, L);
      run_layer(self_attends_[i], w.x.data(), B, L, nullptr, L, probs, args, nullptr);
      const std::string suffix = "_b" + std::to_string(block) + "_l" + std::to_string(i);
      if (probs) trace(args, "self_attn_probs" + suffix, {B, c.self_attention.heads, L, L}, probs);
      trace(args, "latents_after_self_attn" + suffix, {B, L, D}, w.x.data());
    }
  if (args.latents) std::memcpy(args.latents, w.x.data(), sizeof(float) * size_t(B) * L * D);

  // Classification decoder: one trainable query [1, D] attends to the latents.
  const std::vector<float>& z = w.x;            // encoder output [B, L, D]
  std::vector<float>& decoder_x = w.decoder_x;  // [B, 1, D]
  for (int b = 0; b < B; ++b)
    std::memcpy(&decoder_x[size_t(b) * D], decoder_query_.data(), sizeof(float) * D);
  trace(args, "decoder_query", {B, 1, D}, decoder_x.data());
  probs = probs_for(1, 1, L);
  run_layer(decoder_cross_, decoder_x.data(), B, 1, z.data(), L, probs, args, nullptr);
  if (probs) trace(args, "decoder_cross_attn_probs", {B, 1, 1, L}, probs);
  trace(args, "decoder_cross_attn_out", {B, 1, D}, decoder_x.data());
  if (args.decoder_features)
    std::memcpy(args.decoder_features, decoder_x.data(), sizeof(float) * size_t(B) * D);
  if (args.logits) {
    backend_->linear(*final_layer_, decoder_x.data(), D, B, args.logits, c.num_labels(), Activation::none,
                     nullptr);
    trace(args, "logits", {B, c.num_labels()}, args.logits);
  }
}

std::unique_ptr<Model> Model::load(const std::filesystem::path& model_dir, const ModelOptions& options) {
  if (!std::filesystem::is_directory(model_dir))
    throw Error(ErrorKind::model, model_dir.string() + ": not a model directory");
  PerceiverConfig config = load_config(model_dir / "config.json");
  std::filesystem::path weights_path = options.weights_file;
  if (weights_path.empty()) {
    weights_path = model_dir / "model.safetensors";
    if (!std::filesystem::exists(weights_path)) weights_path = model_dir / "pytorch_model.bin";
    if (!std::filesystem::exists(weights_path))
      throw Error(ErrorKind::model,
                  model_dir.string() + ": neither model.safetensors nor pytorch_model.bin found");
  }
  auto file = open_weights(weights_path);
  WeightReader reader(*file);
  auto model = std::make_unique<PerceiverModel>(std::move(config), reader, options);
  model->keep_mapped_file(std::move(file));  // else the file and its mapping go away here
  return model;
}

std::unique_ptr<Model> Model::create_random(const std::string& config_json, uint64_t seed,
                                            const ModelOptions& options) {
  WeightReader reader(seed);
  return std::make_unique<PerceiverModel>(parse_config(config_json, "config.json"), reader, options);
}

}  // namespace perceiver
