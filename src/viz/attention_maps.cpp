// Attention maps through the public API: a traced forward pass keeps every softmax probability; relevance
// maps (direct and rollout) reduce them to one map over the input tokens; write_attention_maps saves them as
// .npy with a manifest.
#include <stdlib.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <system_error>

#include "formats/npy.h"
#include "image/preprocess.h"
#include "model/perceiver_model.h"
#include "perceiver/attention.h"
#include "util/atomic_file.h"

namespace perceiver {
namespace {

constexpr const char* kGenerator = "perceiver attention";

const PerceiverModel& perceiver_model(const Model& model) {
  const auto* m = dynamic_cast<const PerceiverModel*>(&model);
  if (!m) throw Error(ErrorKind::usage, "attention maps: not a Perceiver model of this library");
  return *m;
}

size_t numel(const std::vector<int64_t>& shape) {
  size_t n = 1;
  for (int64_t d : shape) n *= size_t(d);
  return n;
}

bool is_probs(std::string_view name) {
  return name == "cross_attn_probs" || name == "decoder_cross_attn_probs" ||
         name.starts_with("self_attn_probs_b");
}

// Mean over heads of P[b] [heads, rows, cols] -> [rows, cols] in double.
std::vector<double> head_mean(const Tensor& p, int b) {
  const int64_t heads = p.shape[1], rows = p.shape[2], cols = p.shape[3];
  std::vector<double> out(size_t(rows * cols), 0.0);
  const float* src = p.data.data() + size_t(b) * heads * rows * cols;
  for (int64_t h = 0; h < heads; ++h)
    for (size_t i = 0; i < out.size(); ++i) out[i] += src[size_t(h) * rows * cols + i];
  for (double& v : out) v /= double(heads);
  return out;
}

void check_rank4(const Tensor& t, const std::string& name) {
  if (t.shape.size() != 4 || t.data.size() != numel(t.shape))
    throw Error(ErrorKind::usage, "attention maps: " + name + " is not a [B, heads, rows, cols] tensor");
}

}  // namespace

const Tensor& AttentionMaps::get(std::string_view name) const {
  for (const auto& t : tensors)
    if (t.name == name) return t.tensor;
  throw Error(ErrorKind::usage, "attention maps: no tensor '" + std::string(name) + "'");
}

std::vector<const NamedTensor*> AttentionMaps::self_attention() const {
  std::vector<const NamedTensor*> layers;
  for (const auto& t : tensors)
    if (t.name.starts_with("self_attn_probs_b")) layers.push_back(&t);
  return layers;
}

AttentionMaps attention_maps(Context& context, const float* pixels, int batch, int height, int width) {
  const PerceiverModel& model = perceiver_model(context.model());
  model.check_input_size(height, width);
  AttentionMaps maps;
  maps.batch = batch;
  maps.height = height;
  maps.width = width;
  maps.num_latents = model.info().num_latents;
  const InputGeometry g = model.input_geometry(height, width);
  maps.grid = {g.tokens_h, g.tokens_w, g.pixel_stride, g.pixel_offset, g.receptive_field};
  maps.logits.shape = {batch, model.info().num_labels};
  maps.logits.data.resize(size_t(batch) * model.info().num_labels);

  TraceFn keep_probs = [&](std::string_view name, const std::vector<int64_t>& shape, const float* data) {
    if (!is_probs(name)) return;
    maps.tensors.push_back({std::string(name), Tensor{shape, std::vector<float>(data, data + numel(shape))}});
  };
  ForwardArgs args;
  args.pixels = pixels;
  args.batch = batch;
  args.height = height;
  args.width = width;
  args.logits = maps.logits.data.data();
  args.trace = &keep_probs;
  args.trace_attention_probs = true;
  context.forward(args);
  return maps;
}

ImageRegion preprocessed_region(const Model& model, const Image& image) {
  const PreprocessorConfig& config = perceiver_model(model).image_processor_config();
  if (image.width <= 0 || image.height <= 0) throw Error(ErrorKind::bad_input, "attention maps: empty image");
  if (!config.do_center_crop) return {0, 0, double(image.height), double(image.width)};
  const CropBox box = crop_box(config, image.height, image.width);
  return {double(box.top), double(box.left), double(box.height), double(box.width)};
}

AttentionMaps attention_maps(Context& context, const Image& image) {
  const Model& model = context.model();
  const ImageRegion region = preprocessed_region(model, image);
  int height = 0, width = 0;
  model.preprocessed_size(image, &height, &width);
  std::vector<float> pixels(size_t(3) * height * width);
  model.preprocess(image, pixels.data());
  AttentionMaps maps = attention_maps(context, pixels.data(), 1, height, width);
  maps.has_source_region = true;
  maps.source_region = region;
  maps.source_height = image.height;
  maps.source_width = image.width;
  return maps;
}

Tensor relevance_map(const AttentionMaps& maps, const RelevanceOptions& options) {
  const Tensor& cross = maps.cross_attention();
  const Tensor& decoder = maps.decoder_attention();
  check_rank4(cross, "cross_attn_probs");
  check_rank4(decoder, "decoder_cross_attn_probs");
  const int B = maps.batch, L = int(cross.shape[2]), N = int(cross.shape[3]);
  if (cross.shape[0] != B || decoder.shape[0] != B || decoder.shape[2] != 1 || decoder.shape[3] != L ||
      N != maps.grid.tokens())
    throw Error(ErrorKind::usage, "attention maps: cross-attention and decoder shapes do not fit together");
  const auto layers = maps.self_attention();
  Tensor out;
  out.shape = {B, maps.grid.height, maps.grid.width};
  out.data.resize(size_t(B) * N);
  for (int b = 0; b < B; ++b) {
    std::vector<double> v = head_mean(decoder, b);  // [L]: d, then d A_K ... A_k
    if (options.rollout)
      for (auto it = layers.rbegin(); it != layers.rend(); ++it) {
        check_rank4((*it)->tensor, (*it)->name);
        const std::vector<double> s = head_mean((*it)->tensor, b);  // [L, L]
        std::vector<double> next(L, 0.0);                           // v A = (v S + v) / 2
        for (int i = 0; i < L; ++i)
          for (int j = 0; j < L; ++j) next[j] += v[i] * s[size_t(i) * L + j];
        for (int j = 0; j < L; ++j) next[j] = 0.5 * (next[j] + v[j]);
        v = std::move(next);
      }
    const std::vector<double> x = head_mean(cross, b);  // [L, N]
    std::vector<double> r(N, 0.0);
    for (int l = 0; l < L; ++l)
      for (int t = 0; t < N; ++t) r[t] += v[l] * x[size_t(l) * N + t];
    for (int t = 0; t < N; ++t) out.data[size_t(b) * N + t] = float(r[t]);
  }
  return out;
}

Tensor latent_maps(const AttentionMaps& maps, const std::vector<int>& latents) {
  const Tensor& cross = maps.cross_attention();
  check_rank4(cross, "cross_attn_probs");
  const int B = int(cross.shape[0]), heads = int(cross.shape[1]), L = int(cross.shape[2]),
            N = int(cross.shape[3]);
  for (int l : latents)
    if (l < 0 || l >= L)
      throw Error(ErrorKind::usage, "attention maps: latent " + std::to_string(l) + " out of range 0.." +
                                        std::to_string(L - 1));
  Tensor out;
  out.shape = {B, int64_t(latents.size()), maps.grid.height, maps.grid.width};
  out.data.assign(size_t(B) * latents.size() * N, 0.0f);
  for (int b = 0; b < B; ++b)
    for (size_t k = 0; k < latents.size(); ++k) {
      float* dst = out.data.data() + (size_t(b) * latents.size() + k) * N;
      for (int t = 0; t < N; ++t) {
        double acc = 0;
        for (int h = 0; h < heads; ++h) acc += cross.data[((size_t(b) * heads + h) * L + latents[k]) * N + t];
        dst[t] = float(acc / heads);
      }
    }
  return out;
}

std::vector<int> parse_latent_list(const std::string& text, int num_latents) {
  auto bad = [&](const std::string& why) -> std::vector<int> {
    throw Error(ErrorKind::usage, "--latents '" + text + "': " + why +
                                      " (expected all or indices like 3,17 in 0.." +
                                      std::to_string(num_latents - 1) + ")");
  };
  std::vector<int> latents;
  if (text == "all") {
    for (int l = 0; l < num_latents; ++l) latents.push_back(l);
    return latents;
  }
  if (text.empty()) return bad("empty");
  size_t pos = 0;
  while (pos <= text.size()) {
    const size_t comma = std::min(text.find(',', pos), text.size());
    const std::string item = text.substr(pos, comma - pos);
    if (item.empty() || item.size() > 9 ||
        !std::all_of(item.begin(), item.end(), [](char c) { return c >= '0' && c <= '9'; }))
      return bad("'" + item + "' is not a latent index");
    const int l = std::stoi(item);
    if (l >= num_latents) return bad("latent " + item + " out of range");
    if (std::find(latents.begin(), latents.end(), l) != latents.end())
      return bad("latent " + item + " twice");
    latents.push_back(l);
    pos = comma + 1;
  }
  return latents;
}

// --- the output folder ---------------------------------------------------------------------------------

namespace {

// An existing output folder may be replaced when it is empty or holds an earlier output of ours.
bool replaceable(const std::filesystem::path& dir) {
  std::error_code ec;
  if (std::filesystem::is_empty(dir, ec) && !ec) return true;
  std::ifstream in(dir / "manifest.json");
  if (!in) return false;
  std::stringstream text;
  text << in.rdbuf();
  const nlohmann::json j = nlohmann::json::parse(text.str(), nullptr, false);
  return j.is_object() && j.value("generator", "") == kGenerator;
}

std::string make_temp_dir(const std::filesystem::path& next_to, const std::string& tag) {
  std::string name = next_to.string() + tag + "XXXXXX";
  if (!::mkdtemp(name.data()))
    throw Error(ErrorKind::io, next_to.string() + ": cannot create a temporary folder next to it: " +
                                   std::generic_category().message(errno));
  return name;
}

nlohmann::ordered_json shape_json(const std::vector<int64_t>& shape) { return nlohmann::ordered_json(shape); }

}  // namespace

void write_attention_maps(const AttentionMaps& maps, const std::filesystem::path& dir_arg) {
  std::filesystem::path dir = dir_arg;
  if (!dir.has_filename()) dir = dir.parent_path();
  if (dir.empty()) throw Error(ErrorKind::usage, "attention maps: empty output folder name");
  std::error_code ec;
  const bool exists = std::filesystem::exists(dir, ec);
  if (exists && !std::filesystem::is_directory(dir, ec))
    throw Error(ErrorKind::io, dir.string() + ": exists and is not a folder");
  if (exists && !replaceable(dir))
    throw Error(ErrorKind::io, dir.string() +
                                   ": exists and is not an earlier output of perceiver attention; "
                                   "not replaced (remove it or choose another --out)");

  // Everything goes into a temporary folder next to `dir`, renamed into place at the end.
  const std::filesystem::path temp = make_temp_dir(dir, ".tmp-");
  try {
    nlohmann::ordered_json manifest;
    manifest["generator"] = kGenerator;
    manifest["version"] = PERCEIVER_VERSION;
    manifest["batch"] = maps.batch;
    manifest["image_hw"] = {maps.height, maps.width};
    manifest["num_latents"] = maps.num_latents;
    const TokenGrid& g = maps.grid;
    manifest["input_grid"] = {
        {"height", g.height},
        {"width", g.width},
        {"tokens", g.tokens()},
        {"stride", g.stride},
        {"offset", g.offset},
        {"receptive_field", g.receptive_field},
        {"token_to_pixel",
         "token t = row * width + col is centred on input pixel (y, x) = (offset + stride * row, offset + "
         "stride * col) of the model's [image_hw] input and sees the receptive_field x receptive_field "
         "pixels around it"}};
    if (maps.has_source_region)
      manifest["source_image"] = {{"height", maps.source_height},
                                  {"width", maps.source_width},
                                  {"region",
                                   {{"top", maps.source_region.top},
                                    {"left", maps.source_region.left},
                                    {"height", maps.source_region.height},
                                    {"width", maps.source_region.width}}},
                                  {"note", "the part of the image resized to image_hw (the centre crop)"}};
    nlohmann::ordered_json files = nlohmann::ordered_json::array();
    auto add = [&](const std::string& name, const Tensor& t, const std::string& description) {
      write_npy_f32(temp / (name + ".npy"), t.shape, t.data.data());
      files.push_back({{"file", name + ".npy"},
                       {"shape", shape_json(t.shape)},
                       {"dtype", "float32"},
                       {"description", description}});
    };
    for (const auto& t : maps.tensors) {
      std::string what;
      if (t.name == "cross_attn_probs")
        what = "encoder cross-attention probabilities [B, heads, num_latents, num_inputs]";
      else if (t.name == "decoder_cross_attn_probs")
        what = "decoder cross-attention probabilities [B, heads, 1, num_latents]";
      else
        what = "self-attention probabilities [B, heads, num_latents, num_latents] (block, layer)";
      add(t.name, t.tensor, what);
    }
    add("relevance", relevance_map(maps),
        "decoder attention carried through the cross-attention to the input tokens, d X, heads averaged "
        "[B, grid_h, grid_w]");
    add("relevance_rollout", relevance_map(maps, {.rollout = true}),
        "attention rollout d A_K..A_1 X with A_k = (S_k + I) / 2, heads averaged [B, grid_h, grid_w]");
    manifest["files"] = files;
    write_file_atomic(temp / "manifest.json", manifest.dump(2) + "\n");

    if (exists) {
      // Move the old folder aside (onto an empty temporary folder), put the new one in place, drop the old.
      const std::filesystem::path old = make_temp_dir(dir, ".old-");
      std::filesystem::rename(dir, old, ec);
      if (ec) {
        std::filesystem::remove(old);
        throw Error(ErrorKind::io, dir.string() + ": cannot replace: " + ec.message());
      }
      std::filesystem::rename(temp, dir, ec);
      if (ec) {
        std::error_code ignored;
        std::filesystem::rename(old, dir, ignored);
        throw Error(ErrorKind::io,
                    dir.string() + ": cannot rename the new output into place: " + ec.message());
      }
      std::filesystem::remove_all(old, ec);
    } else {
      std::filesystem::rename(temp, dir, ec);
      if (ec)
        throw Error(ErrorKind::io, dir.string() + ": cannot rename the output into place: " + ec.message());
    }
  } catch (...) {
    std::error_code ignored;
    std::filesystem::remove_all(temp, ignored);
    throw;
  }
}

}  // namespace perceiver
