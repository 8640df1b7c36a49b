// perceiver.cpp: Perceiver IO image classifiers (Hugging Face checkpoints) in C++.
//
//   auto model = perceiver::Model::load("deepmind/vision-perceiver-conv");  // a directory or a hub id
//   auto ctx = model->create_context();                                   // one per thread
//   auto top5 = ctx->classify({perceiver::decode_image_file("cat.jpg")}, 5)[0];
//   // top5[0].label == "tabby, tabby cat", top5[0].probability ~ 0.8
//
// Threads: a loaded Model is immutable; all its const methods may be called from any number of threads at
// once. A Context holds everything a forward pass writes (activations, kernel scratch) and is used by one
// thread at a time; create one per thread or worker (it costs its activation memory only, the weights are
// the model's). Model's non-const convenience calls (forward, classify below) share one internal context
// behind a mutex: safe from several threads, but serialised.
//
// Errors: every failure throws perceiver::Error (error.h), one line naming the file or field and the problem,
// with an ErrorKind that the CLI maps to its exit code.
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "perceiver/error.h"
#include "perceiver/image.h"

#define PERCEIVER_VERSION "0.2.0"

namespace perceiver {

// fp32: exact (HF within 1e-4). bf16: GEMM inputs rounded to bf16, fp32 accumulation (AVX-512 CPUs).
// int8: linear layers quantised (weights per output channel at load, activations per row at run time).
enum class Precision { fp32, bf16, int8 };
const char* precision_name(Precision precision);  // "fp32", "bf16", "int8"
// "fp32" / "bf16" / "int8"; throws Error(usage) naming the value otherwise.
Precision parse_precision(const std::string& name);

// This CPU's peak rate of the instruction the GEMMs of `precision` are built on (fp32: vfmadd231ps; bf16:
// vdpbf16ps; int8: vpdpbusd), in GFLOP/s (int8: GOP/s; a multiply-add counts 2), on `threads` threads
// (<= 0: all cores): a register-only loop of independent instructions, about `seconds` long. gflops_per_s
// is 0 where the CPU lacks the instruction. For `perceiver bench`'s fraction of peak.
struct CpuPeak {
  double gflops_per_s = 0;
  std::string instruction;  // e.g. "vpdpbusd zmm"
};
CpuPeak measure_cpu_peak(Precision precision, int threads, double seconds = 0.25);

// Whether each OpenMP thread of a forward pass runs on a CPU of its own (ModelOptions::pin_threads).
enum class ThreadPinning { automatic, on, off };
ThreadPinning parse_thread_pinning(const std::string& name);  // "auto", "on", "off"; else Error(usage)

struct ModelOptions {
  std::filesystem::path weights_file;  // empty: model.safetensors if present, else pytorch_model.bin
  Precision precision = Precision::fp32;
  int threads = 0;  // <= 0: all cores available to the process
  // Pin each thread of a forward pass to a CPU of its own; the calling thread gets its affinity back after
  // the pass. automatic: when the threads are as many as the CPUs the process may use and OMP_PROC_BIND,
  // OMP_PLACES and GOMP_CPU_AFFINITY are unset (PERCEIVER_PIN_THREADS=1 or 0 decides instead when set).
  // Faster and steadier where other processes share the cores (docs/performance.md, "Latency variance").
  ThreadPinning pin_threads = ThreadPinning::automatic;
  std::string backend = "auto";  // "auto" (fastest available), "reference" (plain loops), "fast"
  // fp32 weights stored as F32 in model.safetensors (or in pytorch_model.bin's stored, aligned entries, as
  // torch.save writes them) are read in place from the memory-mapped file where the backend can (no copy:
  // faster loads, pages shared between processes). The file must then not be modified or truncated while the
  // model lives. false: copy every weight into memory at load.
  bool mmap_weights = true;
  // A forward pass runs a batch through the network this many images at a time (bounded memory; on CPUs
  // larger passes are not faster once GEMMs have a few hundred rows). <= 0: as many as fit in about 32 MB of
  // activations (one for the ImageNet models, dozens for small ones), and at least one per 8 threads.
  int images_per_pass = 0;

  // Hub ids (Model::load with something that is not a directory): the git revision, and whether to print a
  // download progress bar on stderr. The cache and offline rules are those of huggingface_hub (HF_HOME,
  // HF_HUB_CACHE, HF_HUB_OFFLINE, HF_ENDPOINT, HF_TOKEN; see docs/hub.md).
  std::string revision = "main";
  bool hub_progress = false;
  // Without preprocessor_config.json, images are refused (Error(model)) unless this asks for
  // PerceiverImageProcessor's defaults (centre crop 256, resize 224 bicubic, ImageNet mean/std).
  bool preprocess_defaults = false;
};

struct ModelInfo {
  std::string architecture;  // e.g. "PerceiverForImageClassificationConvProcessing"
  std::string backend;       // the kernels in use
  Precision precision = Precision::fp32;
  int num_labels = 0;
  std::vector<std::string> labels;  // id2label, index order
  int num_latents = 0, d_latents = 0;
  int fixed_image_height = 0, fixed_image_width = 0;  // learned model: the only size it admits; else 0
  int64_t num_parameters = 0;
  bool weights_in_place = false;  // some layers read their weights straight from the mapped weights file
  std::filesystem::path model_dir;     // where config.json was read (the hub snapshot for hub ids); empty if random
  std::filesystem::path weights_file;  // the weights file read; empty if random
  std::string config_json;          // the text of config.json
  bool has_preprocessor = false;    // images can be classified (preprocessor_config.json or defaults)
  int image_height = 0, image_width = 0;  // the preprocessor's output size (0 when it has none)
};

// Called with intermediate activations during a forward pass when set (tests, debugging). Names and shapes
// follow the golden vectors' manifest.json, e.g. "preproc_output" [B, N, C], "latents_after_self_attn_b0_l1"
// [B, L, D], and with ForwardArgs::trace_attention_probs the softmax probabilities "cross_attn_probs"
// [B, heads, L, N], "self_attn_probs_b{block}_l{layer}" [B, heads, L, L], "decoder_cross_attn_probs"
// [B, heads, 1, L] (HF's output_attentions).
using TraceFn =
    std::function<void(std::string_view name, const std::vector<int64_t>& shape, const float* data)>;

struct ForwardArgs {
  const float* pixels = nullptr;  // [batch, 3, height, width], normalised (Model::preprocess)
  int batch = 1, height = 0, width = 0;
  float* logits = nullptr;            // [batch, num_labels] or nullptr
  float* latents = nullptr;           // [batch, num_latents, d_latents] encoder output, or nullptr
  float* decoder_features = nullptr;  // [batch, d_latents] decoder output before the final linear, or nullptr
  const TraceFn* trace = nullptr;
  bool trace_attention_probs = false;  // also trace softmax probabilities (materialises them: slower)
};

// One class of a classification: softmax probability over all labels.
struct Prediction {
  int id = 0;
  std::string label;
  float probability = 0;
};

// Softmax of one row of logits and its k most probable classes, most probable first (ties: lower id first).
std::vector<Prediction> top_k(const float* logits, const std::vector<std::string>& labels, int k);

// What `embed` returns per image: the mean of the encoder latents [D], all latents [L, D], or the decoder's
// output before its final linear [D].
enum class Pool { mean, latents, decoder };
Pool parse_pool(const std::string& name);  // "mean" / "latents" / "decoder"; throws Error(usage)

// A float32 array, row-major.
struct Tensor {
  std::vector<int64_t> shape;
  std::vector<float> data;
};

class Model;

// config.json of deepmind/vision-perceiver-conv (as HF's conversion script writes it; labels generic): the
// full-size model of benchmarks and tests, with Model::create_random.
std::string vision_perceiver_conv_config_json();

// The directory of a model: `model` itself when it is a directory, else the hub snapshot of the repo id it
// names (downloaded into the Hugging Face cache once; ModelOptions::revision, hub_progress). Throws
// Error(model) / Error(network).
std::filesystem::path resolve_model_dir(const std::filesystem::path& model, const ModelOptions& options = {});

// PerceiverImageProcessor as a model's preprocessor_config.json configures it (bit-faithful to transformers'
// PIL path: centre crop, Pillow resize, rescale, normalise). Immutable, thread-safe.
class ImageProcessor {
 public:
  // The processor of a model directory or hub id, without loading the weights: its preprocessor_config.json,
  // or PerceiverImageProcessor's defaults when it has none and options.preprocess_defaults is set; else
  // throws Error(model).
  static ImageProcessor load(const std::filesystem::path& model, const ModelOptions& options = {});
  // The output's [height, width] for this image.
  void preprocessed_size(const Image& image, int* height, int* width) const;
  // Normalised pixels [3, height, width] into `out`.
  void preprocess(const Image& image, float* out) const;
  Tensor preprocess(const Image& image) const;  // [1, 3, H, W]

  struct Config;
  explicit ImageProcessor(std::shared_ptr<const Config> config) : config_(std::move(config)) {}

 private:
  std::shared_ptr<const Config> config_;
};

// Everything one forward pass writes. Sized on first use for a (batch, image size) and reused without
// allocation for the same shapes. Not thread-safe: one thread at a time. Must not outlive its model.
class Context {
 public:
  ~Context();
  Context(const Context&) = delete;
  Context& operator=(const Context&) = delete;

  const Model& model() const;

  // The network on preprocessed pixels (see ForwardArgs).
  void forward(const ForwardArgs& args);
  // pixels: [batch, 3, height, width] -> logits: [batch, num_labels]
  void logits(const float* pixels, int batch, int height, int width, float* logits);

  // The pipeline on images: preprocessed as the model's PerceiverImageProcessor (in parallel), run
  // `batch_size` at a time (images whose preprocessed sizes differ go in separate passes).
  // Throws Error(model) if the model has no preprocessor (ModelInfo::has_preprocessor).
  // logits: [images.size(), num_labels]
  Tensor logits(const std::vector<Image>& images, int batch_size = 8);
  // Per image, its top_k classes.
  std::vector<std::vector<Prediction>> classify(const std::vector<Image>& images, int top_k = 5,
                                                int batch_size = 8);
  // mean / decoder: [images.size(), D]; latents: [images.size(), L, D].
  Tensor embed(const std::vector<Image>& images, Pool pool, int batch_size = 8);

  // Streams `count` images through the network `batch_size` at a time, decoding and preprocessing each
  // batch in parallel: source(i) returns image i (called from several threads at once; it may throw, e.g.
  // a decode error, which is rethrown here). After each pass `sink` gets the results of images [first,
  // first + count), each output null unless asked for in `outputs` (ImageBatch::logits | ...).
  struct ImageBatch {
    enum Output : unsigned { logits_output = 1, latents_output = 2, decoder_features_output = 4 };
    int64_t first = 0;
    int count = 0;
    const float* logits = nullptr;            // [count, num_labels]
    const float* latents = nullptr;           // [count, num_latents, d_latents]
    const float* decoder_features = nullptr;  // [count, d_latents]
  };
  // `name`, when given, names image i in error messages ("<name>: <problem>"), e.g. its file.
  void run_images(int64_t count, const std::function<Image(int64_t index)>& source, int batch_size,
                  unsigned outputs, const std::function<void(const ImageBatch&)>& sink,
                  const std::function<std::string(int64_t index)>& name = nullptr);

  struct Impl;

 private:
  friend class Model;
  explicit Context(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

class Model {
 public:
  // `model` is a directory holding config.json (+ preprocessor_config.json) and weights, or a hub repo id
  // ("org/name"), downloaded into the Hugging Face cache once (ModelOptions::revision, the HF_* variables).
  // Throws perceiver::Error: model (config, weights), network (hub), usage (options).
  static std::unique_ptr<Model> load(const std::filesystem::path& model, const ModelOptions& options = {});
  // A model with made-up weights (benchmarks, tests): `config_json` is the text of a config.json; the same
  // seed gives the same weights. No preprocessor unless options.preprocess_defaults.
  static std::unique_ptr<Model> create_random(const std::string& config_json, uint64_t seed = 1,
                                              const ModelOptions& options = {});
  virtual ~Model();

  virtual const ModelInfo& info() const = 0;
  const std::vector<std::string>& labels() const { return info().labels; }
  // Throws Error(bad_input) when the image size is not admitted by the model.
  virtual void check_input_size(int height, int width) const = 0;
  // FLOPs (2 x multiply-adds) of one image of this size.
  virtual double flops_per_image(int height, int width) const = 0;

  // A new context for this model (one per thread).
  std::unique_ptr<Context> create_context() const;
  virtual void forward(Context& context, const ForwardArgs& args) const = 0;

  // PerceiverImageProcessor on one image: the output's [height, width] and the normalised pixels
  // [3, height, width] written to `out`. Throws Error(model) without a preprocessor.
  virtual void preprocessed_size(const Image& image, int* height, int* width) const = 0;
  virtual void preprocess(const Image& image, float* out) const = 0;
  // The same as a tensor [1, 3, H, W].
  Tensor preprocess(const Image& image) const;

  // Convenience on the model's own internal context (serialised by a mutex; use contexts to run threads in
  // parallel).
  void forward(const ForwardArgs& args);
  // pixels: [batch, 3, height, width] -> logits: [batch, num_labels]
  void classify(const float* pixels, int batch, int height, int width, float* logits);

 protected:
  Model();
  // The model-specific part of a context (workspace, the backend's per-thread state).
  virtual std::unique_ptr<Context::Impl> new_context_impl() const = 0;
  static Context::Impl& impl_of(Context& context) { return *context.impl_; }

 private:
  struct Shared;
  std::unique_ptr<Shared> shared_;  // the internal context and its mutex
};

}  // namespace perceiver
