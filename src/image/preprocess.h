// PerceiverImageProcessor (Hugging Face transformers, PIL backend), bit-faithful.
#pragma once

#include <array>
#include <filesystem>
#include <string>

#include "image/image.h"

namespace perceiver {

// Pillow resampling filters, numbered as in PIL.Image.Resampling.
enum class Resample { nearest = 0, lanczos = 1, bilinear = 2, bicubic = 3, box = 4, hamming = 5 };

// preprocessor_config.json: both the current format (size/crop_size dicts) and the legacy
// feature-extractor format (integer size/crop_size). Absent keys take PerceiverImageProcessor's defaults.
struct PreprocessorConfig {
  bool do_center_crop = true;
  int crop_height = 256, crop_width = 256;
  bool do_resize = true;
  int height = 224, width = 224;  // `size`
  Resample resample = Resample::bicubic;
  bool do_rescale = true;
  double rescale_factor = 1.0 / 255.0;
  bool do_normalize = true;
  std::array<double, 3> image_mean{0.485, 0.456, 0.406};
  std::array<double, 3> image_std{0.229, 0.224, 0.225};
};

// Throws perceiver::Error(ErrorKind::model, "<file>: ...") for malformed JSON or nonsense values.
PreprocessorConfig load_preprocessor_config(const std::filesystem::path& path);
PreprocessorConfig parse_preprocessor_config(const std::string& json_text, const std::string& name);

// Pillow's Image.resize on 8-bit RGB (exact fixed-point arithmetic, horizontal then vertical pass).
ImageU8 resize_like_pillow(const ImageU8& image, int out_width, int out_height, Resample filter);

// The centre crop of an image: a window of `height` x `width` at (top, left), which may reach past the
// image (the crop pads with zeros, as HF's center_crop). Throws Error(bad_input) for an empty or huge crop.
struct CropBox {
  int height, width;
  int top, left;
};
CropBox crop_box(const PreprocessorConfig& config, int image_height, int image_width);

// Output size of preprocess() for an input image.
void preprocessed_size(const PreprocessorConfig& config, const ImageU8& image, int* out_height,
                       int* out_width);

// Centre crop, resize, rescale, normalise: writes float32 channels-first [3, H, W] to `out`
// (H, W from preprocessed_size()).
void preprocess(const ImageU8& image, const PreprocessorConfig& config, float* out);

}  // namespace perceiver
