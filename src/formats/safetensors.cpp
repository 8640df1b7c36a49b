// model.safetensors: u64 LE header length, JSON header {name: {dtype, shape, data_offsets}}, raw data.
// The file is memory-mapped read-only; tensors point straight into the mapping.
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <nlohmann/json.hpp>
#include <set>
#include <system_error>

#include "formats/tensor_file.h"
#include "perceiver/error.h"

namespace perceiver {
namespace {

constexpr uint64_t kMaxHeaderBytes = 100'000'000;  // the reference implementation's limit
constexpr int kMaxJsonNesting = 16;
constexpr size_t kMaxRank = 8;

alignas(16) const std::byte kEmpty[16] = {};

class SafetensorsFile final : public TensorFile {
 public:
  explicit SafetensorsFile(const std::filesystem::path& path) { path_ = path; }
  ~SafetensorsFile() override {
    if (map_ != MAP_FAILED) ::munmap(map_, map_size_);
  }
  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;

  void load();

 private:
  [[noreturn]] void fail(const std::string& what) const {
    throw Error(ErrorKind::model, path_.string() + ": " + what);
  }
  void map_file();
  void add_tensor(const std::string& name, const nlohmann::ordered_json& entry, uint64_t data_size,
                  const std::byte* data_base, std::vector<std::pair<uint64_t, uint64_t>>& ranges);

  void* map_ = MAP_FAILED;
  size_t map_size_ = 0;
  std::vector<std::unique_ptr<std::byte[]>> copies_;  // realigned copies of misaligned tensors
};

void SafetensorsFile::map_file() {
  int fd = ::open(path_.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    int err = errno;
    if (err == ENOENT || err == ENOTDIR) fail("no such file");
    fail(std::generic_category().message(err));
  }
  struct stat st;
  if (::fstat(fd, &st) != 0) {
    int err = errno;
    ::close(fd);
    fail(std::generic_category().message(err));
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    fail("not a regular file");
  }
  if (st.st_size < 8) {
    ::close(fd);
    fail("file is " + std::to_string(st.st_size) + " bytes, too short for a safetensors header");
  }
  map_size_ = static_cast<size_t>(st.st_size);
  map_ = ::mmap(nullptr, map_size_, PROT_READ, MAP_PRIVATE, fd, 0);
  int err = errno;
  ::close(fd);
  if (map_ == MAP_FAILED) fail("mmap failed: " + std::generic_category().message(err));
}

// Parses the header text with duplicate-key and nesting checks; nothing thrown by the JSON library escapes.
nlohmann::ordered_json parse_header(std::string_view text, const std::string& file) {
  using Json = nlohmann::ordered_json;
  std::vector<std::set<std::string>> keys;  // one set per open object
  int nesting = 0;
  auto callback = [&](int, Json::parse_event_t event, Json& parsed) -> bool {
    switch (event) {
      case Json::parse_event_t::object_start:
      case Json::parse_event_t::array_start:
        if (++nesting > kMaxJsonNesting)
          throw Error(ErrorKind::model, file + ": header JSON nested deeper than " +
                                            std::to_string(kMaxJsonNesting) + " levels");
        if (event == Json::parse_event_t::object_start) keys.emplace_back();
        break;
      case Json::parse_event_t::object_end:
        --nesting;
        if (!keys.empty()) keys.pop_back();
        break;
      case Json::parse_event_t::array_end:
        --nesting;
        break;
      case Json::parse_event_t::key:
        if (!keys.empty() && parsed.is_string() && !keys.back().insert(parsed.get<std::string>()).second)
          throw Error(ErrorKind::model,
                      file + ": header has duplicate key '" + printable(parsed.get<std::string>()) + "'");
        break;
      case Json::parse_event_t::value:
        break;
    }
    return true;
  };
  try {
    return Json::parse(text.begin(), text.end(), callback, /*allow_exceptions=*/true);
  } catch (const nlohmann::json::exception& e) {
    std::string what = e.what();
    if (auto pos = what.find("] "); pos != std::string::npos) what = what.substr(pos + 2);
    throw Error(ErrorKind::model, file + ": header is not valid JSON (" + printable(what) + ")");
  }
}

// A JSON number that is a non-negative integer fitting int64.
bool get_index(const nlohmann::ordered_json& j, uint64_t* out) {
  if (!j.is_number_unsigned()) {
    if (j.is_number_integer() && j.get<int64_t>() >= 0) {
      *out = static_cast<uint64_t>(j.get<int64_t>());
      return true;
    }
    return false;
  }
  *out = j.get<uint64_t>();
  return *out <= static_cast<uint64_t>(INT64_MAX);
}

void SafetensorsFile::add_tensor(const std::string& name, const nlohmann::ordered_json& entry,
                                 uint64_t data_size, const std::byte* data_base,
                                 std::vector<std::pair<uint64_t, uint64_t>>& ranges) {
  const std::string where = "tensor '" + printable(name) + "'";
  if (name.empty()) fail("tensor with an empty name");
  if (!entry.is_object()) fail(where + " entry is not a JSON object");
  auto dtype_it = entry.find("dtype");
  auto shape_it = entry.find("shape");
  auto offsets_it = entry.find("data_offsets");
  if (dtype_it == entry.end() || shape_it == entry.end() || offsets_it == entry.end())
    fail(where + " lacks one of dtype, shape, data_offsets");

  TensorRef t;
  t.name = name;
  if (!dtype_it->is_string()) fail(where + " dtype is not a string");
  const std::string dtype = dtype_it->get<std::string>();
  if (dtype == "F32") {
    t.dtype = DType::f32;
  } else if (dtype == "F16") {
    t.dtype = DType::f16;
  } else if (dtype == "BF16") {
    t.dtype = DType::bf16;
  } else if (dtype == "I64") {
    t.dtype = DType::i64;
  } else {
    fail(where + " has unsupported dtype '" + printable(dtype) + "' (supported: F32, F16, BF16, I64)");
  }
  const uint64_t elem = dtype_size(t.dtype);

  if (!shape_it->is_array()) fail(where + " shape is not an array");
  if (shape_it->size() > kMaxRank)
    fail(where + " has rank " + std::to_string(shape_it->size()) + " > " + std::to_string(kMaxRank));
  uint64_t numel = 1;
  for (const auto& d : *shape_it) {
    uint64_t dim;
    if (!get_index(d, &dim))
      fail(where + " shape " + printable(shape_it->dump()) + " is not all integers >= 0");
    if (__builtin_mul_overflow(numel, dim, &numel) || numel > static_cast<uint64_t>(INT64_MAX) / elem)
      fail(where + " shape " + printable(shape_it->dump()) + " has too many elements");
    t.shape.push_back(static_cast<int64_t>(dim));
  }
  const uint64_t nbytes = numel * elem;

  uint64_t begin, end;
  if (!offsets_it->is_array() || offsets_it->size() != 2 || !get_index((*offsets_it)[0], &begin) ||
      !get_index((*offsets_it)[1], &end))
    fail(where + " data_offsets " + printable(offsets_it->dump()) + " is not a pair of integers >= 0");
  const std::string range = "[" + std::to_string(begin) + "," + std::to_string(end) + ")";
  if (begin > end) fail(where + " data_offsets " + range + " are reversed");
  if (end > data_size)
    fail(where + " data_offsets " + range + " exceed the data section of " + std::to_string(data_size) +
         " bytes (file size " + std::to_string(map_size_) + ")");
  if (end - begin != nbytes)
    fail(where + " data_offsets " + range + " hold " + std::to_string(end - begin) + " bytes but " + dtype +
         " " + t.shape_string() + " needs " + std::to_string(nbytes));

  t.nbytes = static_cast<size_t>(nbytes);
  const std::byte* p = data_base + begin;
  t.mapped = nbytes != 0 && reinterpret_cast<uintptr_t>(p) % elem == 0;
  if (nbytes == 0) {
    p = kEmpty;
  } else if (!t.mapped) {  // keep the alignment promise: copy
    copies_.push_back(std::make_unique<std::byte[]>(t.nbytes));
    std::memcpy(copies_.back().get(), p, t.nbytes);
    p = copies_.back().get();
  }
  t.data = p;
  ranges.emplace_back(begin, end);
  tensors_.push_back(std::move(t));
}

void SafetensorsFile::load() {
  map_file();
  const auto* bytes = static_cast<const std::byte*>(map_);
  uint64_t header_len;
  std::memcpy(&header_len, bytes, 8);
  if (header_len > kMaxHeaderBytes)
    fail("header length " + std::to_string(header_len) + " exceeds the 100 MB limit");
  if (header_len > map_size_ - 8)
    fail("header length " + std::to_string(header_len) + " exceeds file size " + std::to_string(map_size_));

  const std::string_view text(reinterpret_cast<const char*>(bytes + 8), header_len);
  const nlohmann::ordered_json header = parse_header(text, path_.string());
  if (!header.is_object()) fail("header is not a JSON object");

  const std::byte* data_base = bytes + 8 + header_len;
  const uint64_t data_size = map_size_ - 8 - header_len;
  std::vector<std::pair<uint64_t, uint64_t>> ranges;  // [begin, end) per tensor, parallel to tensors_
  for (const auto& [key, value] : header.items()) {
    if (key == "__metadata__") {
      if (!value.is_object()) fail("__metadata__ is not a JSON object");
      for (const auto& [meta_key, meta_value] : value.items())
        if (!meta_value.is_string()) fail("__metadata__ value '" + printable(meta_key) + "' is not a string");
      continue;
    }
    add_tensor(key, value, data_size, data_base, ranges);
  }

  // No two non-empty tensors may share bytes.
  std::vector<size_t> order(ranges.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::sort(order.begin(), order.end(), [&](size_t a, size_t b) { return ranges[a] < ranges[b]; });
  uint64_t max_end = 0;
  size_t max_end_tensor = 0;
  for (size_t i : order) {
    if (ranges[i].first == ranges[i].second) continue;
    if (ranges[i].first < max_end)
      fail("tensors '" + printable(tensors_[max_end_tensor].name) + "' and '" + printable(tensors_[i].name) +
           "' overlap (data_offsets [" + std::to_string(ranges[max_end_tensor].first) + "," +
           std::to_string(ranges[max_end_tensor].second) + ") and [" + std::to_string(ranges[i].first) + "," +
           std::to_string(ranges[i].second) + "))");
    max_end = ranges[i].second;
    max_end_tensor = i;
  }
}

}  // namespace

std::unique_ptr<TensorFile> open_safetensors(const std::filesystem::path& path) {
  auto file = std::make_unique<SafetensorsFile>(path);
  file->load();
  return file;
}

}  // namespace perceiver
