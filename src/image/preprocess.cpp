// PerceiverImageProcessor (transformers, PIL backend): config parsing and preprocess().
#include "image/preprocess.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <vector>

#include "image/image_internal.h"
#include "perceiver/error.h"
#include "util/json_limits.h"

namespace perceiver {

namespace {

using nlohmann::json;

constexpr int kMaxSide = 16384;  // sizes above this are refused as nonsense

[[noreturn]] void config_error(const std::string& name, const std::string& what) {
  throw Error(ErrorKind::model, name + ": " + what);
}

// do_* flags: absent -> the class default; null -> false (HF's `if flag:` on None); otherwise a boolean.
bool read_flag(const json& j, const char* key, bool fallback, const std::string& name) {
  auto it = j.find(key);
  if (it == j.end()) return fallback;
  if (it->is_null()) return false;
  if (!it->is_boolean()) config_error(name, std::string(key) + " must be true or false, got " + it->dump());
  return it->get<bool>();
}

int read_side(const json& v, const std::string& what, const std::string& name) {
  if (!v.is_number_integer()) config_error(name, what + " must be an integer, got " + v.dump());
  const int64_t side = v.get<int64_t>();
  if (side < 1 || side > kMaxSide)
    config_error(name, what + " must be between 1 and " + std::to_string(kMaxSide) + ", got " + v.dump());
  return int(side);
}

// size / crop_size as get_size_dict reads them: {"height", "width"}, an int (square), or [height, width].
// Other valid HF forms (shortest_edge, ...) cannot drive this processor; refused when `used`.
void read_size(const json& j, const char* key, bool used, int* height, int* width, const std::string& name) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return;  // the class default
  const std::string k = key;
  if (it->is_number_integer()) {
    *height = *width = read_side(*it, k, name);
  } else if (it->is_array()) {
    if (it->size() != 2) config_error(name, k + " as a list must be [height, width], got " + it->dump());
    *height = read_side((*it)[0], k + "[0]", name);
    *width = read_side((*it)[1], k + "[1]", name);
  } else if (it->is_object()) {
    std::vector<std::string> keys;  // keys with non-null values, sorted
    for (auto e = it->begin(); e != it->end(); ++e)
      if (!e.value().is_null()) keys.push_back(e.key());
    std::sort(keys.begin(), keys.end());
    const std::vector<std::vector<std::string>> other = {
        {"shortest_edge"}, {"longest_edge", "shortest_edge"}, {"longest_edge"}, {"max_height", "max_width"}};
    if (keys == std::vector<std::string>{"height", "width"}) {
      *height = read_side((*it)["height"], k + ".height", name);
      *width = read_side((*it)["width"], k + ".width", name);
    } else if (std::find(other.begin(), other.end(), keys) != other.end()) {
      if (used)
        config_error(name,
                     k + " " + it->dump() +
                         " is not supported: PerceiverImageProcessor needs {\"height\": H, \"width\": W}");
    } else {
      config_error(name, k + " must have the keys height and width, got " + it->dump());
    }
  } else {
    config_error(name, k + " must be {\"height\": H, \"width\": W} or an integer, got " + it->dump());
  }
}

double read_positive(const json& v, const std::string& what, const std::string& name) {
  if (!v.is_number()) config_error(name, what + " must be a number, got " + v.dump());
  const double x = v.get<double>();
  if (!std::isfinite(x) || x <= 0) config_error(name, what + " must be a positive number, got " + v.dump());
  return x;
}

// image_mean / image_std: 3 numbers, or one number for every channel; null -> the ImageNet default.
void read_triple(const json& j, const char* key, bool positive, std::array<double, 3>* out,
                 const std::string& name) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return;
  const std::string k = key;
  auto number = [&](const json& v, const std::string& what) {
    if (positive) return read_positive(v, what, name);
    if (!v.is_number()) config_error(name, what + " must be a number, got " + v.dump());
    const double x = v.get<double>();
    if (!std::isfinite(x)) config_error(name, what + " must be finite, got " + v.dump());
    return x;
  };
  if (it->is_number()) {
    out->fill(number(*it, k));
  } else if (it->is_array() && it->size() == 3) {
    for (int c = 0; c < 3; ++c) (*out)[c] = number((*it)[c], k + "[" + std::to_string(c) + "]");
  } else {
    config_error(name,
                 k + " must be a list of 3 numbers (one per RGB channel) or a number, got " + it->dump());
  }
}

}  // namespace

// HF PerceiverImageProcessor.center_crop + image_transforms.center_crop, in Python's arithmetic.
CropBox crop_box(const PreprocessorConfig& config, int image_height, int image_width) {
  const int min_dim = std::min(image_height, image_width);
  const double fh = (double(config.height) / double(config.crop_height)) * double(min_dim);
  const double fw = (double(config.width) / double(config.crop_width)) * double(min_dim);
  if (!(fh >= 1.0) || !(fw >= 1.0) || fh > 65536.0 || fw > 65536.0 || fh * fw > double(1 << 28))
    throw Error(ErrorKind::bad_input, "image " + std::to_string(image_width) + "x" +
                                          std::to_string(image_height) + ": centre crop of " +
                                          std::to_string(int64_t(fw)) + "x" + std::to_string(int64_t(fh)) +
                                          " is empty or too large");
  CropBox box;
  box.height = int(fh);  // int() truncates
  box.width = int(fw);
  auto floor_half = [](int v) { return v >= 0 ? v / 2 : -((-v + 1) / 2); };  // Python's v // 2
  int top = floor_half(image_height - box.height), left = floor_half(image_width - box.width);
  if (top < 0 || top + box.height > image_height || left < 0 || left + box.width > image_width) {
    // Padding branch: the image is centred in a zero canvas of max(crop, image) (pad = ceil(diff / 2)).
    const int new_h = std::max(box.height, image_height), new_w = std::max(box.width, image_width);
    const int top_pad = (new_h - image_height + 1) / 2, left_pad = (new_w - image_width + 1) / 2;
    top = std::max(0, top + top_pad) - top_pad;
    left = std::max(0, left + left_pad) - left_pad;
  }
  box.top = top;
  box.left = left;
  return box;
}

PreprocessorConfig parse_preprocessor_config(const std::string& json_text, const std::string& name) {
  std::string parse_error;
  json j = parse_json_bounded(json_text, name, ErrorKind::model,
                              &parse_error);  // nesting bounded: dump() recurses
  if (j.is_discarded()) config_error(name, "not valid JSON: " + parse_error);
  if (!j.is_object()) config_error(name, "expected a JSON object, got " + std::string(j.type_name()));
  PreprocessorConfig c;
  c.do_center_crop = read_flag(j, "do_center_crop", c.do_center_crop, name);
  c.do_resize = read_flag(j, "do_resize", c.do_resize, name);
  c.do_rescale = read_flag(j, "do_rescale", c.do_rescale, name);
  c.do_normalize = read_flag(j, "do_normalize", c.do_normalize, name);
  read_size(j, "size", c.do_resize || c.do_center_crop, &c.height, &c.width, name);
  read_size(j, "crop_size", c.do_center_crop, &c.crop_height, &c.crop_width, name);
  if (auto it = j.find("resample"); it != j.end()) {
    if (it->is_null()) {
      c.resample = Resample::bilinear;  // HF's resize() falls back to BILINEAR for resample=None
    } else {
      if (!it->is_number_integer() || it->get<int64_t>() < 0 || it->get<int64_t>() > 5)
        config_error(name, "resample must be a PIL filter number 0..5, got " + it->dump());
      c.resample = static_cast<Resample>(it->get<int>());
    }
  }
  if (auto it = j.find("rescale_factor"); it != j.end())
    c.rescale_factor = read_positive(*it, "rescale_factor", name);
  read_triple(j, "image_mean", false, &c.image_mean, name);
  read_triple(j, "image_std", true, &c.image_std, name);
  return c;
}

PreprocessorConfig load_preprocessor_config(const std::filesystem::path& path) {
  std::error_code ec;
  if (!std::filesystem::is_regular_file(path, ec)) config_error(path.string(), "not a regular file");
  const auto size = std::filesystem::file_size(path, ec);
  if (ec || size > (1u << 20)) config_error(path.string(), "cannot read, or larger than 1 MiB");
  std::ifstream in(path, std::ios::binary);
  if (!in) config_error(path.string(), "cannot open");
  std::ostringstream text;
  text << in.rdbuf();
  if (in.bad()) config_error(path.string(), "read error");
  return parse_preprocessor_config(text.str(), path.string());
}

void preprocessed_size(const PreprocessorConfig& config, const ImageU8& image, int* out_height,
                       int* out_width) {
  int h = image.height, w = image.width;
  if (h <= 0 || w <= 0) throw Error(ErrorKind::bad_input, "preprocess: empty image");
  if (config.do_center_crop) {
    CropBox box = crop_box(config, h, w);
    h = box.height;
    w = box.width;
  }
  if (config.do_resize) {
    h = config.height;
    w = config.width;
  }
  *out_height = h;
  *out_width = w;
}

void preprocess(const ImageU8& image, const PreprocessorConfig& config, float* out) {
  using image_detail::RgbView;
  if (image.width <= 0 || image.height <= 0 ||
      image.rgb.size() != size_t(image.width) * size_t(image.height) * 3)
    throw Error(ErrorKind::bad_input, "preprocess: empty image or pixel buffer of the wrong size");
  RgbView view{image.rgb.data(), image.width, image.height, size_t(image.width) * 3};

  // 1. Centre crop: a window on the image, or a zero-padded copy when the crop is larger.
  std::vector<uint8_t> padded;
  if (config.do_center_crop) {
    const CropBox box = crop_box(config, image.height, image.width);
    if (box.top >= 0 && box.left >= 0 && box.top + box.height <= image.height &&
        box.left + box.width <= image.width) {
      view = {image.rgb.data() + size_t(box.top) * view.stride + size_t(box.left) * 3, box.width, box.height,
              view.stride};
    } else {
      padded.assign(size_t(box.height) * box.width * 3, 0);
      for (int y = 0; y < box.height; ++y) {
        const int sy = box.top + y;
        if (sy < 0 || sy >= image.height) continue;
        for (int x = 0; x < box.width; ++x) {
          const int sx = box.left + x;
          if (sx < 0 || sx >= image.width) continue;
          std::memcpy(&padded[(size_t(y) * box.width + x) * 3],
                      &image.rgb[(size_t(sy) * image.width + sx) * 3], 3);
        }
      }
      view = {padded.data(), box.width, box.height, size_t(box.width) * 3};
    }
  }

  // 2. Resize with Pillow's arithmetic.
  ImageU8 resized;
  if (config.do_resize && (view.width != config.width || view.height != config.height)) {
    image_detail::resize_view(view, config.width, config.height, config.resample, &resized);
    view = {resized.rgb.data(), resized.width, resized.height, size_t(resized.width) * 3};
  }

  // 3. Rescale (float64 product cast to float32) and normalise (float32), as a table per channel.
  float table[3][256];
  for (int c = 0; c < 3; ++c) {
    const float mean = float(config.image_mean[c]), std = float(config.image_std[c]);
    for (int v = 0; v < 256; ++v) {
      float x = config.do_rescale ? float(double(v) * config.rescale_factor) : float(v);
      if (config.do_normalize) x = (x - mean) / std;
      table[c][v] = x;
    }
  }
  // 4. HWC -> CHW.
  const size_t plane = size_t(view.width) * view.height;
  for (int y = 0; y < view.height; ++y) {
    const uint8_t* src = view.data + size_t(y) * view.stride;
    float* r = out + size_t(y) * view.width;
    float* g = r + plane;
    float* b = g + plane;
    for (int x = 0; x < view.width; ++x) {
      r[x] = table[0][src[3 * x]];
      g[x] = table[1][src[3 * x + 1]];
      b[x] = table[2][src[3 * x + 2]];
    }
  }
}

}  // namespace perceiver
