// IDX files of unsigned bytes (MNIST / Fashion-MNIST), gzip-compressed or plain.
#pragma once

#include <cstdint>
#include <filesystem>
#include <vector>

#include "image/image.h"
#include "perceiver/perceiver.h"

namespace perceiver {

// A uint8 IDX array: big-endian header 00 00 08 <rank>, <rank> big-endian u32 dims, then the bytes.
struct IdxArray {
  std::vector<int64_t> dims;
  std::vector<uint8_t> data;  // row-major, product(dims) bytes
};

// Reads an IDX file of type 0x08 (unsigned byte) and exactly `rank` dimensions, each >= 1. Strict: a wrong
// magic, type or rank, a truncated file, trailing bytes or a corrupt gzip stream throw
// perceiver::Error(ErrorKind::bad_input, "<file>: ...").
IdxArray read_idx_u8(const std::filesystem::path& path, int rank);

// Images [count, rows, cols] (idx3, magic 0x00000803).
struct IdxImages {
  int64_t count = 0;
  int rows = 0, cols = 0;
  std::vector<uint8_t> pixels;  // [count, rows, cols]

  const uint8_t* image(int64_t index) const { return pixels.data() + size_t(index) * rows * cols; }
};
IdxImages read_idx_images(const std::filesystem::path& path);

// Labels [count] (idx1, magic 0x00000801).
std::vector<uint8_t> read_idx_labels(const std::filesystem::path& path);

// Image `index` as RGB with the gray value in all three channels (PIL mode "L" -> convert("RGB")).
ImageU8 idx_image_rgb(const IdxImages& images, int64_t index);

// Debian's dataset-fashion-mnist.
inline const std::filesystem::path kFashionMnistDir = "/usr/share/datasets/fashion-mnist";

// Logits [10000, 10] of all Fashion-MNIST test images through the image path (gray 28x28 -> RGB ->
// preprocessor_config.json) and `model_dir`'s model loaded with `options`, 500 images per forward pass.
std::vector<float> fashion_mnist_test_logits(const std::filesystem::path& model_dir, ModelOptions options);

}  // namespace perceiver
