// load_image: format sniffing as Pillow's Image.open does it, then exif_transpose.
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <memory>
#include <system_error>

#include "image/image_internal.h"
#include "perceiver/error.h"

namespace perceiver {

namespace image_detail {

void fail(const std::string& name, const std::string& what) {
  throw Error(ErrorKind::bad_input, name + ": " + what);
}

void check_declared_size(int64_t width, int64_t height, const std::string& name,
                         const DecodeOptions& options) {
  if (width <= 0 || height <= 0)
    fail(name, "image has no pixels (" + std::to_string(width) + "x" + std::to_string(height) + ")");
  // Declared sides are below 2^32 (u32 in PNG, WebP, u16 in JPEG), so the product fits in uint64.
  if (width >= (int64_t(1) << 32) || height >= (int64_t(1) << 32))
    fail(name, "image size " + std::to_string(width) + "x" + std::to_string(height) + " is not valid");
  const uint64_t pixels = uint64_t(width) * uint64_t(height);
  const uint64_t limit = options.max_pixels > 0 ? uint64_t(options.max_pixels) : 0;
  if (limit && pixels > limit && pixels - limit > limit)  // pixels > 2 * limit, without overflow
    fail(name, "image size (" + std::to_string(pixels) + " pixels) exceeds limit of " +
                   std::to_string(2 * limit) + " pixels, could be decompression bomb DOS attack");
}

}  // namespace image_detail

namespace {

enum class Format { unknown, jpeg, png, webp };

// The prefixes Pillow's JpegImagePlugin, PngImagePlugin and WebPImagePlugin accept.
Format sniff(const uint8_t* data, size_t size) {
  if (size >= 3 && data[0] == 0xFF && data[1] == 0xD8 && data[2] == 0xFF) return Format::jpeg;
  if (size >= 8 && std::memcmp(data, "\x89PNG\r\n\x1a\n", 8) == 0) return Format::png;
  if (size >= 16 && std::memcmp(data, "RIFF", 4) == 0 && std::memcmp(data + 8, "WEBP", 4) == 0 &&
      (std::memcmp(data + 12, "VP8 ", 4) == 0 || std::memcmp(data + 12, "VP8L", 4) == 0 ||
       std::memcmp(data + 12, "VP8X", 4) == 0))
    return Format::webp;
  return Format::unknown;
}

}  // namespace

ImageU8 load_image_from_memory(const uint8_t* data, size_t size, const std::string& name,
                               const DecodeOptions& options) {
  using namespace image_detail;
  if (size == 0) fail(name, "empty file");
  Decoded decoded;
  switch (sniff(data, size)) {
    case Format::jpeg:
      decoded = decode_jpeg(data, size, name, options);
      break;
    case Format::png:
      decoded = decode_png(data, size, name, options);
      break;
    case Format::webp:
      decoded = decode_webp(data, size, name, options);
      break;
    case Format::unknown:
      fail(name, "cannot identify image file (not a JPEG, PNG or WebP image)");
  }
  return apply_orientation(std::move(decoded.image), decoded.orientation);
}

ImageU8 load_image(const std::filesystem::path& path, const DecodeOptions& options) {
  const std::string name = path.string();
  std::error_code ec;
  if (std::filesystem::is_directory(path, ec)) image_detail::fail(name, "is a directory, not an image file");
  // O_NONBLOCK: opening a FIFO must not wait for a writer; only regular files are read, up to their size (a
  // device such as /dev/zero would never end).
  const int fd = ::open(name.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
  if (fd < 0) image_detail::fail(name, std::string("cannot open: ") + std::strerror(errno));
  struct Closer {
    int fd;
    ~Closer() { ::close(fd); }
  } closer{fd};
  struct stat st;
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) image_detail::fail(name, "not a regular file");
  constexpr off_t kMaxFileBytes = off_t{1} << 31;
  if (st.st_size > kMaxFileBytes)
    image_detail::fail(name, "file of " + std::to_string(st.st_size) + " bytes is too large for an image");
  std::vector<uint8_t> bytes(static_cast<size_t>(st.st_size));
  size_t done = 0;
  while (done < bytes.size()) {
    const ssize_t got = ::read(fd, bytes.data() + done, bytes.size() - done);
    if (got < 0 && errno == EINTR) continue;
    if (got < 0) image_detail::fail(name, std::string("read error: ") + std::strerror(errno));
    if (got == 0) break;  // the file shrank while being read: decoded as what was there
    done += static_cast<size_t>(got);
  }
  bytes.resize(done);
  return load_image_from_memory(bytes.data(), bytes.size(), name, options);
}

}  // namespace perceiver
