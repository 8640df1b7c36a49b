#include "model/config.h"

#include <sys/stat.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "formats/tensor_file.h"
#include "perceiver/error.h"
#include "util/json_limits.h"

namespace perceiver {
namespace {

using nlohmann::json;

[[noreturn]] void fail(const std::string& name, const std::string& what) {
  throw Error(ErrorKind::model, name + ": " + what);
}

// An integer key in [lo, hi]; `fallback` (HF's PerceiverConfig default) when absent.
int get_int(const json& j, const std::string& name, const char* key, int fallback, int lo, int hi) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return fallback;
  if (!it->is_number_integer()) fail(name, std::string("'") + key + "' must be an integer");
  if (it->is_number_unsigned() && it->get<unsigned long long>() > static_cast<unsigned long long>(hi))
    fail(name, std::string("'") + key + "' = " + std::to_string(it->get<unsigned long long>()) +
                   " is out of range [" + std::to_string(lo) + ", " + std::to_string(hi) + "]");
  long long v = it->get<long long>();
  if (v < lo || v > hi)
    fail(name, std::string("'") + key + "' = " + std::to_string(v) + " is out of range [" +
                   std::to_string(lo) + ", " + std::to_string(hi) + "]");
  return static_cast<int>(v);
}

// Optional positive integer (qk_channels / v_channels): 0 means null.
int get_optional_channels(const json& j, const std::string& name, const char* key) {
  return get_int(j, name, key, 0, 1, 1 << 16);
}

bool get_bool(const json& j, const std::string& name, const char* key, bool fallback) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return fallback;
  if (!it->is_boolean()) fail(name, std::string("'") + key + "' must be true or false");
  return it->get<bool>();
}

std::string get_string(const json& j, const std::string& name, const char* key, const std::string& fallback) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return fallback;
  if (!it->is_string()) fail(name, std::string("'") + key + "' must be a string");
  return it->get<std::string>();
}

std::vector<std::string> parse_labels(const json& j, const std::string& name) {
  auto it = j.find("id2label");
  if (it == j.end() || it->is_null()) {
    // HF's PretrainedConfig default: num_labels (2 when absent) generic labels.
    int n = get_int(j, name, "num_labels", 2, 1, 1 << 20);
    std::vector<std::string> labels(n);
    for (int i = 0; i < n; ++i) labels[i] = "LABEL_" + std::to_string(i);
    return labels;
  }
  if (!it->is_object() || it->empty()) fail(name, "'id2label' must be a non-empty object");
  size_t n = it->size();
  std::vector<std::string> labels(n);
  std::vector<bool> seen(n, false);
  for (auto& [key, value] : it->items()) {
    size_t pos = 0;
    long long index = -1;
    try {
      index = std::stoll(key, &pos);
    } catch (...) {
      pos = 0;
    }
    if (pos != key.size() || key.empty())
      fail(name, "'id2label' key '" + printable(key) + "' is not an integer");
    if (index < 0 || index >= static_cast<long long>(n))
      fail(name, "'id2label' key " + printable(key) + " is outside 0.." + std::to_string(n - 1));
    if (!value.is_string()) fail(name, "'id2label'[" + printable(key) + "] must be a string");
    labels[index] = value.get<std::string>();
    seen[index] = true;
  }
  for (size_t i = 0; i < n; ++i)
    if (!seen[i]) fail(name, "'id2label' has no entry for index " + std::to_string(i));
  if (auto nl = j.find("num_labels");
      nl != j.end() && nl->is_number_integer() && nl->get<long long>() != (long long)n)
    fail(name, "'num_labels' = " + std::to_string(nl->get<long long>()) + " but 'id2label' has " +
                   std::to_string(n) + " entries");
  if (auto l2i = j.find("label2id"); l2i != j.end() && l2i->is_object()) {
    for (auto& [label, index] : l2i->items()) {
      if (!index.is_number_integer() || index.get<long long>() < 0 || index.get<long long>() >= (long long)n)
        fail(name, "'label2id'['" + printable(label) + "'] is not a valid label index");
    }
  }
  return labels;
}

// HF PerceiverLayer / PerceiverSelfAttention width rules.
LayerShape make_layer(const std::string& name, const char* what, bool is_cross, int q_dim, int kv_dim,
                      int qk_channels, int v_channels, int heads, int widening, bool query_residual,
                      const std::string& shape_for_attention) {
  LayerShape s;
  s.is_cross = is_cross;
  s.q_dim = q_dim;
  s.kv_dim = kv_dim;
  s.heads = heads;
  s.query_residual = query_residual;
  s.mlp_hidden = widening * q_dim;
  if (qk_channels == 0) {
    if (is_cross)
      qk_channels = shape_for_attention == "q" ? q_dim : kv_dim;
    else
      qk_channels = q_dim;
  }
  if (v_channels == 0) v_channels = qk_channels;
  s.qk_channels = qk_channels;
  s.v_channels = v_channels;
  if (qk_channels % heads != 0)
    fail(name, std::string(what) + ": qk_channels " + std::to_string(qk_channels) + " is not divisible by " +
                   std::to_string(heads) + " heads");
  if (v_channels % heads != 0)
    fail(name, std::string(what) + ": v_channels " + std::to_string(v_channels) + " is not divisible by " +
                   std::to_string(heads) + " heads");
  return s;
}

// Weights of one PerceiverLayer: layer norms, q/k/v/output projections, MLP (with biases).
double layer_parameters(const LayerShape& s) {
  const double q = s.q_dim, kv = s.kv_dim, qk = s.qk_channels, v = s.v_channels, h = s.mlp_hidden;
  return 4 * q + 2 * kv + (q + 1) * qk + (kv + 1) * qk + (kv + 1) * v + (v + 1) * q + (q + 1) * h +
         (h + 1) * q;
}

// Parameters a config describes, in floating point (no overflow): what loading it would allocate.
double parameter_estimate(const PerceiverConfig& c) {
  double n = double(c.num_latents) * c.d_latents + c.d_latents;  // latents, decoder query
  n += layer_parameters(c.encoder_cross) +
       double(c.num_self_attends_per_block) * layer_parameters(c.self_attention) +
       layer_parameters(c.decoder_cross);
  n += (double(c.d_latents) + 1) * c.num_labels();  // final layer
  if (c.architecture == Architecture::learned)
    n += double(c.image_size) * c.image_size * kLearnedChannels + 4.0 * kLearnedChannels * kLearnedChannels;
  return n;
}

}  // namespace

PerceiverConfig parse_config(const std::string& json_text, const std::string& name) {
  json j = parse_json_bounded(json_text, name, ErrorKind::model, nullptr);
  if (j.is_discarded()) fail(name, "not valid JSON");
  if (!j.is_object()) fail(name, "top level must be a JSON object");

  PerceiverConfig c;
  auto arch = j.find("architectures");
  if (arch == j.end() || !arch->is_array() || arch->empty() || !(*arch)[0].is_string())
    fail(name,
         "'architectures' must name the model class, e.g. "
         "[\"PerceiverForImageClassificationConvProcessing\"]");
  c.architecture_name = (*arch)[0].get<std::string>();
  if (c.architecture_name == "PerceiverForImageClassificationConvProcessing")
    c.architecture = Architecture::conv;
  else if (c.architecture_name == "PerceiverForImageClassificationFourier")
    c.architecture = Architecture::fourier;
  else if (c.architecture_name == "PerceiverForImageClassificationLearned")
    c.architecture = Architecture::learned;
  else
    fail(name, "unsupported architecture '" + printable(c.architecture_name) +
                   "' (supported: PerceiverForImageClassificationConvProcessing, "
                   "PerceiverForImageClassificationFourier, PerceiverForImageClassificationLearned)");
  if (auto mt = j.find("model_type");
      mt != j.end() && mt->is_string() && mt->get<std::string>() != "perceiver")
    fail(name, "model_type is '" + printable(mt->get<std::string>()) + "', expected 'perceiver'");

  // Defaults are PerceiverConfig's.
  c.num_latents = get_int(j, name, "num_latents", 256, 1, 1 << 16);
  c.d_latents = get_int(j, name, "d_latents", 1280, 1, 1 << 16);
  c.num_blocks = get_int(j, name, "num_blocks", 1, 1, 1024);
  c.num_self_attends_per_block = get_int(j, name, "num_self_attends_per_block", 26, 1, 1024);
  int self_heads = get_int(j, name, "num_self_attention_heads", 8, 1, 4096);
  int cross_heads = get_int(j, name, "num_cross_attention_heads", 8, 1, 4096);
  int qk = get_optional_channels(j, name, "qk_channels");
  int v = get_optional_channels(j, name, "v_channels");
  std::string shape_for_attention = get_string(j, name, "cross_attention_shape_for_attention", "kv");
  if (shape_for_attention != "kv" && shape_for_attention != "q")
    fail(name, "'cross_attention_shape_for_attention' must be \"kv\" or \"q\"");
  int self_widening = get_int(j, name, "self_attention_widening_factor", 1, 1, 64);
  int cross_widening = get_int(j, name, "cross_attention_widening_factor", 1, 1, 64);
  bool use_query_residual = get_bool(j, name, "use_query_residual", true);
  c.image_size = get_int(j, name, "image_size", 56, 1, 1 << 15);
  std::string act = get_string(j, name, "hidden_act", "gelu");
  if (act != "gelu") fail(name, "hidden_act '" + printable(act) + "' is not supported (only \"gelu\")");
  c.labels = parse_labels(j, name);

  switch (c.architecture) {
    case Architecture::conv:
      c.input_channels = kConvStemChannels + 2 + 4 * kFourierBands;
      break;
    case Architecture::fourier:
      c.input_channels = 3 + 2 + 4 * kFourierBands;
      break;
    case Architecture::learned:
      c.input_channels = 2 * kLearnedChannels;
      break;
  }
  c.encoder_cross = make_layer(name, "encoder cross-attention", true, c.d_latents, c.input_channels, qk, v,
                               cross_heads, cross_widening, use_query_residual, shape_for_attention);
  c.self_attention = make_layer(name, "self-attention", false, c.d_latents, c.d_latents, qk, v, self_heads,
                                self_widening, true, shape_for_attention);
  // PerceiverClassificationDecoder: 1 head, widening 1, query residual, qk/v from the kv width rule.
  c.decoder_cross = make_layer(name, "decoder cross-attention", true, c.d_latents, c.d_latents, 0, 0, 1, 1,
                               true, shape_for_attention);
  // Every value is in range on its own; their products size the weights. Refuse absurd totals here, before
  // anything is allocated for them (a model load would otherwise allocate what the config merely claims).
  const double params = parameter_estimate(c);
  if (params > kMaxParameters)
    fail(name, "the model it describes would have " + std::to_string(static_cast<long long>(params)) +
                   " parameters, more than the limit of " +
                   std::to_string(static_cast<long long>(kMaxParameters)) + " (num_latents " +
                   std::to_string(c.num_latents) + " x d_latents " + std::to_string(c.d_latents) + ", " +
                   std::to_string(c.num_self_attends_per_block) + " self-attention layers, image_size " +
                   std::to_string(c.image_size) + ", " + std::to_string(c.num_labels()) + " labels)");
  return c;
}

PerceiverConfig load_config(const std::filesystem::path& path) {
  struct stat st;
  if (::stat(path.c_str(), &st) != 0) {
    const int err = errno;
    throw Error(ErrorKind::model,
                path.string() + ": " + (err == ENOENT ? std::string("no such file") : std::strerror(err)));
  }
  if (!S_ISREG(st.st_mode)) throw Error(ErrorKind::model, path.string() + ": not a regular file");
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error(ErrorKind::model, path.string() + ": cannot open (no such file?)");
  in.seekg(0, std::ios::end);
  auto size = static_cast<long long>(in.tellg());
  if (size < 0 || size > (16 << 20))
    throw Error(ErrorKind::model, path.string() + ": too large for a config file");
  in.seekg(0);
  std::string text(static_cast<size_t>(size), '\0');
  in.read(text.data(), size);
  if (!in) throw Error(ErrorKind::model, path.string() + ": read error");
  return parse_config(text, path.string());
}

}  // namespace perceiver
