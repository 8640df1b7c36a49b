// IDX reader on zlib's gz* API (which also reads uncompressed files unchanged).
#include "idx_dataset.h"

#include <zlib.h>

#include <algorithm>
#include <climits>
#include <memory>
#include <string>
#include <type_traits>

#include "perceiver/error.h"

namespace perceiver {

namespace {

constexpr int64_t kMaxBytes = int64_t(1) << 32;  // 4 GiB of payload: anything larger is not a dataset we read

[[noreturn]] void idx_error(const std::filesystem::path& path, const std::string& what) {
  throw Error(ErrorKind::bad_input, path.string() + ": " + what);
}

struct GzCloser {
  void operator()(gzFile f) const { gzclose(f); }
};
using GzFile = std::unique_ptr<std::remove_pointer_t<gzFile>, GzCloser>;

// Reads exactly n bytes; false on a clean end of file before them, throws on a gzip error.
bool read_exact(gzFile f, const std::filesystem::path& path, uint8_t* out, size_t n) {
  while (n > 0) {
    const unsigned chunk = unsigned(std::min<size_t>(n, 1u << 30));
    const int got = gzread(f, out, chunk);
    if (got < 0) {
      int code = 0;
      const char* message = gzerror(f, &code);
      idx_error(path, std::string("corrupt gzip data: ") + (message ? message : "unknown error"));
    }
    if (got == 0) {
      int code = 0;
      const char* message = gzerror(f, &code);
      if (code != Z_OK && code != Z_BUF_ERROR)
        idx_error(path, std::string("corrupt gzip data: ") + (message ? message : "unknown error"));
      if (code == Z_BUF_ERROR) idx_error(path, "truncated gzip stream");
      return false;
    }
    out += got;
    n -= size_t(got);
  }
  return true;
}

uint32_t be32(const uint8_t* p) {
  return uint32_t(p[0]) << 24 | uint32_t(p[1]) << 16 | uint32_t(p[2]) << 8 | p[3];
}

}  // namespace

IdxArray read_idx_u8(const std::filesystem::path& path, int rank) {
  std::error_code ec;
  if (!std::filesystem::is_regular_file(path, ec)) idx_error(path, "no such file");
  GzFile file(gzopen(path.string().c_str(), "rb"));
  if (!file) idx_error(path, "cannot open");
  uint8_t magic[4];
  if (!read_exact(file.get(), path, magic, 4)) idx_error(path, "file too short for an IDX header");
  if (magic[0] != 0 || magic[1] != 0)
    idx_error(path, "not an IDX file (magic must start with two zero bytes)");
  if (magic[2] != 0x08)
    idx_error(path, "IDX element type 0x" + std::to_string(magic[2]) + " is not unsigned byte (0x08)");
  if (magic[3] != rank)
    idx_error(path,
              "IDX file has " + std::to_string(magic[3]) + " dimensions, expected " + std::to_string(rank));
  IdxArray array;
  int64_t total = 1;
  for (int d = 0; d < rank; ++d) {
    uint8_t b[4];
    if (!read_exact(file.get(), path, b, 4)) idx_error(path, "truncated IDX header");
    const int64_t dim = be32(b);
    if (dim < 1) idx_error(path, "IDX dimension " + std::to_string(d) + " is 0");
    if (dim > kMaxBytes / total) idx_error(path, "IDX array too large");
    total *= dim;
    array.dims.push_back(dim);
  }
  array.data.resize(size_t(total));
  if (!read_exact(file.get(), path, array.data.data(), array.data.size()))
    idx_error(path, "truncated: the header promises " + std::to_string(total) + " data bytes");
  uint8_t extra;
  if (read_exact(file.get(), path, &extra, 1)) idx_error(path, "unexpected bytes after the IDX data");
  return array;
}

IdxImages read_idx_images(const std::filesystem::path& path) {
  IdxArray a = read_idx_u8(path, 3);
  if (a.dims[1] > INT_MAX / 4 || a.dims[2] > INT_MAX / 4) idx_error(path, "IDX image size too large");
  IdxImages images;
  images.count = a.dims[0];
  images.rows = int(a.dims[1]);
  images.cols = int(a.dims[2]);
  images.pixels = std::move(a.data);
  return images;
}

std::vector<uint8_t> read_idx_labels(const std::filesystem::path& path) { return read_idx_u8(path, 1).data; }

ImageU8 idx_image_rgb(const IdxImages& images, int64_t index) {
  if (index < 0 || index >= images.count)
    throw Error(ErrorKind::bad_input, "IDX image index " + std::to_string(index) + " out of range [0, " +
                                          std::to_string(images.count) + ")");
  ImageU8 out;
  out.width = images.cols;
  out.height = images.rows;
  out.rgb.resize(size_t(images.rows) * images.cols * 3);
  const uint8_t* src = images.image(index);
  for (size_t i = 0; i < size_t(images.rows) * images.cols; ++i)
    out.rgb[3 * i] = out.rgb[3 * i + 1] = out.rgb[3 * i + 2] = src[i];
  return out;
}

std::vector<float> fashion_mnist_test_logits(const std::filesystem::path& model_dir, ModelOptions options) {
  const IdxImages images = read_idx_images(kFashionMnistDir / "t10k-images-idx3-ubyte.gz");
  if (images.count != 10000)
    throw Error(ErrorKind::bad_input, "Fashion-MNIST test set: expected 10000 images");
  options.preprocess_defaults = false;  // the model's own preprocessor_config.json
  auto model = Model::load(model_dir, options);
  const int num_labels = model->info().num_labels;
  std::vector<float> logits(size_t(images.count) * num_labels);
  model->create_context()->run_images(
      images.count, [&](int64_t i) { return idx_image_rgb(images, i); }, 500,
      Context::ImageBatch::logits_output,
      [&](const Context::ImageBatch& b) {
        std::copy_n(b.logits, size_t(b.count) * num_labels, &logits[size_t(b.first) * num_labels]);
      });
  return logits;
}

}  // namespace perceiver
