// Shared parts of the weight-file layer: dtypes, TensorRef helpers, format detection, fp32 conversion.
#include "formats/tensor_file.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <bit>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <system_error>

#include "perceiver/error.h"

namespace perceiver {

static_assert(std::endian::native == std::endian::little,
              "weight files are little-endian; big-endian hosts unsupported");

const char* dtype_name(DType dtype) {
  switch (dtype) {
    case DType::f32:
      return "F32";
    case DType::f16:
      return "F16";
    case DType::bf16:
      return "BF16";
    case DType::i64:
      return "I64";
  }
  return "?";
}

size_t dtype_size(DType dtype) {
  switch (dtype) {
    case DType::f32:
      return 4;
    case DType::f16:
      return 2;
    case DType::bf16:
      return 2;
    case DType::i64:
      return 8;
  }
  return 0;
}

int64_t TensorRef::numel() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;  // the loaders have overflow-checked this product
  return n;
}

std::string TensorRef::shape_string() const {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) {
    if (i) s += ", ";
    s += std::to_string(shape[i]);
  }
  return s + "]";
}

const TensorRef* TensorFile::find(std::string_view name) const {
  for (const TensorRef& t : tensors_)
    if (t.name == name) return &t;
  return nullptr;
}

namespace {
uintptr_t page_size() {
  static const uintptr_t page = static_cast<uintptr_t>(sysconf(_SC_PAGESIZE));
  return page;
}
}  // namespace

void populate_mapped(const std::byte* data, size_t nbytes) {
#ifdef MADV_POPULATE_READ
  const uintptr_t begin = reinterpret_cast<uintptr_t>(data) / page_size() * page_size();
  const uintptr_t end = reinterpret_cast<uintptr_t>(data) + nbytes;
  if (nbytes > 0) ::madvise(reinterpret_cast<void*>(begin), end - begin, MADV_POPULATE_READ);
#else
  (void)data, (void)nbytes;
#endif
}

void drop_mapped(const std::byte* data, size_t nbytes) {
  // Only pages wholly inside the range: the rest may hold bytes of another tensor still in use.
  const uintptr_t begin = (reinterpret_cast<uintptr_t>(data) + page_size() - 1) / page_size() * page_size();
  const uintptr_t end = (reinterpret_cast<uintptr_t>(data) + nbytes) / page_size() * page_size();
  if (end > begin) ::madvise(reinterpret_cast<void*>(begin), end - begin, MADV_DONTNEED);
}

std::string printable(std::string_view text, size_t max_chars) {
  static const char kHex[] = "0123456789abcdef";
  std::string out;
  for (size_t i = 0; i < text.size(); ++i) {
    if (out.size() >= max_chars) {
      out += "...";
      break;
    }
    auto c = static_cast<unsigned char>(text[i]);
    if (c >= 0x20 && c < 0x7f && c != '\\') {
      out += static_cast<char>(c);
    } else {
      out += "\\x";
      out += kHex[c >> 4];
      out += kHex[c & 15];
    }
  }
  return out;
}

float half_to_float(uint16_t bits) {
  uint32_t sign = static_cast<uint32_t>(bits & 0x8000u) << 16;
  uint32_t exponent = (bits >> 10) & 0x1fu;
  uint32_t mantissa = bits & 0x3ffu;
  if (exponent == 0) {  // zero or subnormal: mantissa * 2^-24, exact in fp32
    float magnitude = std::ldexp(static_cast<float>(mantissa), -24);
    return std::bit_cast<float>(sign | std::bit_cast<uint32_t>(magnitude));
  }
  if (exponent == 31) return std::bit_cast<float>(sign | 0x7f800000u | (mantissa << 13));  // inf / NaN
  return std::bit_cast<float>(sign | ((exponent + 112) << 23) | (mantissa << 13));
}

float bfloat16_to_float(uint16_t bits) { return std::bit_cast<float>(static_cast<uint32_t>(bits) << 16); }

std::vector<float> tensor_to_f32(const TensorRef& tensor, const std::filesystem::path& file) {
  const size_t n = static_cast<size_t>(tensor.numel());
  if (tensor.nbytes != n * dtype_size(tensor.dtype) || (n && !tensor.data))
    throw Error(ErrorKind::internal, file.string() + ": tensor '" + printable(tensor.name) + "' has " +
                                         std::to_string(tensor.nbytes) + " bytes for shape " +
                                         tensor.shape_string());
  std::vector<float> out(n);
  switch (tensor.dtype) {
    case DType::f32:
      if (n) std::memcpy(out.data(), tensor.data, n * sizeof(float));
      break;
    case DType::f16:
    case DType::bf16:
      for (size_t i = 0; i < n; ++i) {
        uint16_t bits;
        std::memcpy(&bits, tensor.data + 2 * i, 2);
        out[i] = tensor.dtype == DType::f16 ? half_to_float(bits) : bfloat16_to_float(bits);
      }
      break;
    case DType::i64:
      throw Error(ErrorKind::model, file.string() + ": tensor '" + printable(tensor.name) +
                                        "' has dtype I64, expected a floating-point tensor");
  }
  return out;
}

std::unique_ptr<TensorFile> open_weights(const std::filesystem::path& path) {
  const std::string name = path.string();
  struct stat st;
  if (::stat(path.c_str(), &st) != 0) {
    int err = errno;
    if (err == ENOENT || err == ENOTDIR) throw Error(ErrorKind::model, name + ": no such file");
    throw Error(ErrorKind::model, name + ": " + std::generic_category().message(err));
  }
  if (!S_ISREG(st.st_mode)) throw Error(ErrorKind::model, name + ": not a regular file");

  unsigned char magic[8] = {};
  ssize_t got = 0;
  {
    int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) throw Error(ErrorKind::model, name + ": " + std::generic_category().message(errno));
    do {
      got = ::read(fd, magic, sizeof(magic));
    } while (got < 0 && errno == EINTR);
    int err = errno;
    ::close(fd);
    if (got < 0) throw Error(ErrorKind::model, name + ": " + std::generic_category().message(err));
  }
  // Zip local file header (or the end-of-central-directory record of an empty archive).
  if (got >= 4 && magic[0] == 'P' && magic[1] == 'K' &&
      ((magic[2] == 3 && magic[3] == 4) || (magic[2] == 5 && magic[3] == 6)))
    return open_torch_zip(path);
  // torch.save's legacy format starts with a pickled magic number: PROTO 2, LONG1 ...
  if (got >= 3 && magic[0] == 0x80 && magic[1] == 0x02 && magic[2] == 0x8a)
    throw Error(ErrorKind::model, name +
                                      ": legacy (pre-1.6, non-zip) torch.save format is not supported; "
                                      "re-save it with a recent torch or convert it to safetensors");
  return open_safetensors(path);
}

}  // namespace perceiver
