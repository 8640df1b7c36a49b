// .npy: "\x93NUMPY", version (1|2|3).0, header length (u16 for 1.0, u32 otherwise), a Python dict literal
// {'descr': '<f4', 'fortran_order': False, 'shape': (2, 10), } padded with spaces and '\n', then raw data.
#include "formats/npy.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <system_error>

#include "formats/tensor_file.h"
#include "perceiver/error.h"
#include "util/atomic_file.h"

namespace perceiver {
namespace {

constexpr char kMagic[] = "\x93NUMPY";
constexpr size_t kMagicLen = 6;
constexpr uint64_t kMaxHeaderBytes = 1 << 20;
constexpr size_t kMaxRank = 32;

[[noreturn]] void fail(const std::string& file, const std::string& what) {
  throw Error(ErrorKind::bad_input, file + ": " + what);
}

// Strict reader of the header's dict literal: string keys, and values that are strings, True/False or
// tuples of non-negative integers.
class HeaderParser {
 public:
  HeaderParser(std::string_view text, const std::string& file) : s_(text), file_(file) {}

  void parse(std::string* descr, bool* fortran_order, std::vector<int64_t>* shape) {
    bool have_descr = false, have_order = false, have_shape = false;
    expect('{');
    for (;;) {
      skip_ws();
      if (peek() == '}') break;
      std::string key = string_literal();
      expect(':');
      skip_ws();
      if (key == "descr" && !have_descr) {
        if (peek() != '\'' && peek() != '"')
          bad("descr is not a simple dtype string (structured arrays unsupported)");
        *descr = string_literal();
        have_descr = true;
      } else if (key == "fortran_order" && !have_order) {
        *fortran_order = boolean_literal();
        have_order = true;
      } else if (key == "shape" && !have_shape) {
        *shape = int_tuple();
        have_shape = true;
      } else {
        bad("unexpected or repeated key '" + printable(key) + "'");
      }
      skip_ws();
      if (peek() == ',') {
        ++i_;
        continue;
      }
      if (peek() != '}') bad("expected ',' or '}'");
    }
    ++i_;
    skip_ws();
    if (i_ != s_.size()) bad("trailing characters after the dict");
    if (!have_descr || !have_order || !have_shape) bad("missing descr, fortran_order or shape");
  }

 private:
  [[noreturn]] void bad(const std::string& what) const {
    std::string_view shown = s_;  // without the padding
    while (!shown.empty() && (shown.back() == ' ' || shown.back() == '\n')) shown.remove_suffix(1);
    fail(file_, "bad header (" + what + "): " + printable(shown, 120));
  }
  char peek() const { return i_ < s_.size() ? s_[i_] : '\0'; }
  void skip_ws() {
    while (i_ < s_.size() && (s_[i_] == ' ' || s_[i_] == '\t' || s_[i_] == '\n' || s_[i_] == '\r')) ++i_;
  }
  void expect(char c) {
    skip_ws();
    if (peek() != c) bad(std::string("expected '") + c + "'");
    ++i_;
  }
  std::string string_literal() {
    skip_ws();
    char quote = peek();
    if (quote != '\'' && quote != '"') bad("expected a string");
    size_t end = s_.find(quote, i_ + 1);
    if (end == std::string_view::npos) bad("unterminated string");
    std::string value(s_.substr(i_ + 1, end - i_ - 1));
    if (value.find('\\') != std::string::npos) bad("escapes in strings are not supported");
    i_ = end + 1;
    return value;
  }
  bool boolean_literal() {
    if (s_.substr(i_, 4) == "True") {
      i_ += 4;
      return true;
    }
    if (s_.substr(i_, 5) == "False") {
      i_ += 5;
      return false;
    }
    bad("fortran_order is not True or False");
  }
  std::vector<int64_t> int_tuple() {
    std::vector<int64_t> dims;
    if (peek() != '(') bad("shape is not a tuple");
    ++i_;
    bool after_comma = false;
    for (;;) {
      skip_ws();
      if (peek() == ')') break;
      if (peek() < '0' || peek() > '9') bad("shape entries must be integers >= 0");
      int64_t v = 0;
      while (peek() >= '0' && peek() <= '9') {
        if (__builtin_mul_overflow(v, 10, &v) || __builtin_add_overflow(v, peek() - '0', &v))
          bad("shape entry too large");
        ++i_;
      }
      if (dims.size() >= kMaxRank) bad("rank above " + std::to_string(kMaxRank));
      dims.push_back(v);
      skip_ws();
      after_comma = peek() == ',';
      if (after_comma) {
        ++i_;
        continue;
      }
      if (peek() != ')') bad("expected ',' or ')' in shape");
    }
    if (dims.size() == 1 && !after_comma) bad("shape (n) is not a tuple; expected (n,)");
    ++i_;
    return dims;
  }

  std::string_view s_;
  const std::string& file_;
  size_t i_ = 0;
};

// "<f4" -> "f4" (validated), or throws.
std::string parse_descr(const std::string& descr, const std::string& file) {
  const char order = descr.empty() ? '\0' : descr[0];
  const std::string type = descr.empty() ? std::string() : descr.substr(1);
  if (order != '<' && order != '>' && order != '|' && order != '=')
    fail(file, "unsupported dtype '" + printable(descr) + "'");
  if (!type.empty() && type[0] == 'O') fail(file, "object arrays are not supported");
  static const char* const kSupported[] = {"f2", "f4", "f8", "i1", "i2", "i4",
                                           "i8", "u1", "u2", "u4", "u8", "b1"};
  bool known = false;
  for (const char* k : kSupported) known |= type == k;
  if (!known) fail(file, "unsupported dtype '" + printable(descr) + "'");
  const bool one_byte = type[1] == '1';
  if (order == '>' && !one_byte) fail(file, "big-endian dtype '" + descr + "' is not supported");
  if (order == '|' && !one_byte) fail(file, "dtype '" + descr + "' lacks a byte order");
  return type;
}

size_t item_size(const std::string& dtype) { return static_cast<size_t>(dtype[1] - '0'); }

// Reads up to n bytes at the current position; returns how many were read.
size_t read_some(int fd, void* out, size_t n, const std::string& file) {
  size_t done = 0;
  while (done < n) {
    ssize_t got = ::read(fd, static_cast<char*>(out) + done, n - done);
    if (got < 0 && errno == EINTR) continue;
    if (got < 0) fail(file, std::generic_category().message(errno));
    if (got == 0) break;
    done += static_cast<size_t>(got);
  }
  return done;
}

struct Fd {
  int fd = -1;
  ~Fd() {
    if (fd >= 0) ::close(fd);
  }
};

template <typename T>
T load(const uint8_t* p) {
  T v;
  std::memcpy(&v, p, sizeof(T));
  return v;
}

}  // namespace

int64_t NpyArray::numel() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;  // overflow-checked by read_npy
  return n;
}

std::vector<float> NpyArray::to_f32() const {
  const size_t n = static_cast<size_t>(numel());
  const std::string& file = source.empty() ? std::string("npy") : source;
  if (dtype.size() != 2 || bytes.size() != n * item_size(dtype))
    fail(file, "array bytes do not match dtype '" + dtype + "' and its shape");
  std::vector<float> out(n);
  const uint8_t* p = bytes.data();
  if (dtype == "f4") {
    if (n) std::memcpy(out.data(), p, n * 4);
  } else if (dtype == "f8") {
    for (size_t i = 0; i < n; ++i) out[i] = static_cast<float>(load<double>(p + 8 * i));
  } else if (dtype == "f2") {
    for (size_t i = 0; i < n; ++i) out[i] = half_to_float(load<uint16_t>(p + 2 * i));
  } else if (dtype[0] == 'i' || dtype[0] == 'u' || dtype[0] == 'b') {
    std::vector<int64_t> ints;
    if (dtype == "u8") {  // may exceed int64
      for (size_t i = 0; i < n; ++i) out[i] = static_cast<float>(load<uint64_t>(p + 8 * i));
      return out;
    }
    ints = to_i64();
    for (size_t i = 0; i < n; ++i) out[i] = static_cast<float>(ints[i]);
  } else {
    fail(file, "dtype '" + dtype + "' cannot be converted to float32");
  }
  return out;
}

std::vector<int64_t> NpyArray::to_i64() const {
  const size_t n = static_cast<size_t>(numel());
  const std::string& file = source.empty() ? std::string("npy") : source;
  if (dtype.size() != 2 || bytes.size() != n * item_size(dtype))
    fail(file, "array bytes do not match dtype '" + dtype + "' and its shape");
  if (dtype[0] != 'i' && dtype[0] != 'u' && dtype[0] != 'b')
    fail(file, "dtype '" + dtype + "' is not an integer type");
  std::vector<int64_t> out(n);
  const uint8_t* p = bytes.data();
  for (size_t i = 0; i < n; ++i) {
    if (dtype == "i1") {
      out[i] = load<int8_t>(p + i);
    } else if (dtype == "i2") {
      out[i] = load<int16_t>(p + 2 * i);
    } else if (dtype == "i4") {
      out[i] = load<int32_t>(p + 4 * i);
    } else if (dtype == "i8") {
      out[i] = load<int64_t>(p + 8 * i);
    } else if (dtype == "u1" || dtype == "b1") {
      out[i] = p[i];
    } else if (dtype == "u2") {
      out[i] = load<uint16_t>(p + 2 * i);
    } else if (dtype == "u4") {
      out[i] = load<uint32_t>(p + 4 * i);
    } else if (dtype == "u8") {
      uint64_t v = load<uint64_t>(p + 8 * i);
      if (v > static_cast<uint64_t>(INT64_MAX))
        fail(file, "uint64 value " + std::to_string(v) + " exceeds int64");
      out[i] = static_cast<int64_t>(v);
    } else {
      fail(file, "dtype '" + dtype + "' is not supported");
    }
  }
  return out;
}

NpyArray read_npy(const std::filesystem::path& path) {
  const std::string file = path.string();
  Fd fd;
  fd.fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);  // a FIFO must not block: refused below
  if (fd.fd < 0) {
    int err = errno;
    if (err == ENOENT || err == ENOTDIR) fail(file, "no such file");
    fail(file, std::generic_category().message(err));
  }
  struct stat st;
  if (::fstat(fd.fd, &st) != 0) fail(file, std::generic_category().message(errno));
  if (!S_ISREG(st.st_mode)) fail(file, "not a regular file");
  const uint64_t file_size = static_cast<uint64_t>(st.st_size);

  uint8_t prefix[12];
  size_t got = read_some(fd.fd, prefix, 10, file);
  if (got < 10 || std::memcmp(prefix, kMagic, kMagicLen) != 0) fail(file, "not a .npy file (bad magic)");
  const unsigned major = prefix[6], minor = prefix[7];
  if (major < 1 || major > 3 || minor != 0)
    fail(file, "unsupported .npy format version " + std::to_string(major) + "." + std::to_string(minor));
  uint64_t header_len, prefix_len;
  if (major == 1) {
    header_len = prefix[8] | (uint64_t{prefix[9]} << 8);
    prefix_len = 10;
  } else {
    if (read_some(fd.fd, prefix + 10, 2, file) < 2) fail(file, "truncated .npy header");
    header_len =
        prefix[8] | (uint64_t{prefix[9]} << 8) | (uint64_t{prefix[10]} << 16) | (uint64_t{prefix[11]} << 24);
    prefix_len = 12;
  }
  if (header_len > kMaxHeaderBytes) fail(file, "header length " + std::to_string(header_len) + " too large");
  if (prefix_len + header_len > file_size)
    fail(file,
         "header length " + std::to_string(header_len) + " exceeds file size " + std::to_string(file_size));
  std::string header(header_len, '\0');
  if (read_some(fd.fd, header.data(), header_len, file) != header_len) fail(file, "truncated .npy header");
  if (header.empty() || header.back() != '\n') fail(file, "bad header (does not end with a newline)");

  std::string descr;
  bool fortran_order = false;
  NpyArray array;
  array.source = file;
  HeaderParser(header, file).parse(&descr, &fortran_order, &array.shape);
  array.dtype = parse_descr(descr, file);
  if (fortran_order) fail(file, "fortran_order=True arrays are not supported (save a C-ordered array)");

  uint64_t numel = 1;
  const uint64_t elem = item_size(array.dtype);
  for (int64_t d : array.shape)
    if (__builtin_mul_overflow(numel, static_cast<uint64_t>(d), &numel) ||
        numel > static_cast<uint64_t>(INT64_MAX) / elem)
      fail(file, "shape has too many elements");
  const uint64_t data_bytes = numel * elem;
  const uint64_t available = file_size - prefix_len - header_len;
  if (available != data_bytes)
    fail(file, "header promises " + std::to_string(data_bytes) + " data bytes (" + array.dtype + ", " +
                   std::to_string(numel) + " elements) but the file holds " + std::to_string(available));
  array.bytes.resize(static_cast<size_t>(data_bytes));
  if (read_some(fd.fd, array.bytes.data(), array.bytes.size(), file) != data_bytes)
    fail(file, "truncated .npy data");
  return array;
}

void write_npy_f32(const std::filesystem::path& path, const std::vector<int64_t>& shape, const float* data) {
  const std::string file = path.string();
  uint64_t numel = 1;
  std::string dims;  // "2, 10", "5," or ""
  for (size_t i = 0; i < shape.size(); ++i) {
    if (shape[i] < 0 || __builtin_mul_overflow(numel, static_cast<uint64_t>(shape[i]), &numel) ||
        numel > static_cast<uint64_t>(INT64_MAX) / 4)
      throw Error(ErrorKind::internal, file + ": invalid shape for write_npy_f32");
    dims += (i ? ", " : "") + std::to_string(shape[i]);
  }
  if (shape.size() == 1) dims += ",";
  if (numel && !data) throw Error(ErrorKind::internal, file + ": write_npy_f32 without data");

  // numpy's layout: dict + spaces + '\n', padded so that the data starts at a multiple of 64.
  std::string dict = "{'descr': '<f4', 'fortran_order': False, 'shape': (" + dims + "), }";
  const size_t unpadded = 10 + dict.size() + 1;
  const size_t pad = 64 - unpadded % 64;
  const size_t header_len = dict.size() + pad + 1;
  if (header_len > 0xffff) throw Error(ErrorKind::internal, file + ": .npy header too long");

  std::string out;
  out.reserve(10 + header_len + numel * 4);
  out.append(kMagic, kMagicLen);
  out += '\x01';
  out += '\x00';
  out += static_cast<char>(header_len & 0xff);
  out += static_cast<char>(header_len >> 8);
  out += dict;
  out.append(pad, ' ');
  out += '\n';
  if (numel) out.append(reinterpret_cast<const char*>(data), static_cast<size_t>(numel) * 4);
  write_file_atomic(path, out);
}

}  // namespace perceiver
