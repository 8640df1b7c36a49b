// perceiver.cpp: NumPy .npy files (the CLI's and tests' tensor format) and whole-or-nothing output files.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <string_view>
#include <vector>

namespace perceiver {

// A .npy array as read (format 1.0/2.0/3.0, little-endian, C order).
struct NpyArray {
  std::string dtype;  // numpy descr without byte order: "f4", "f8", "i8", "i4", "u1", ...
  std::vector<int64_t> shape;
  std::vector<uint8_t> bytes;  // raw little-endian element bytes, C order
  std::string source;          // the file it was read from (prefix of error messages)

  int64_t numel() const;
  std::vector<float> to_f32() const;    // f4/f8/f2/integers converted; throws for other dtypes
  std::vector<int64_t> to_i64() const;  // integer dtypes widened; throws for floats
};

// Throws perceiver::Error(ErrorKind::bad_input, "<file>: ...") on any malformed or lying header.
NpyArray read_npy(const std::filesystem::path& path);

// Writes float32 '<f4' data atomically: a temporary file in the same folder, renamed on success.
void write_npy_f32(const std::filesystem::path& path, const std::vector<int64_t>& shape, const float* data);

// Writes `bytes` to `path` via "<path>.tmp-XXXXXX" + fsync + rename. Throws Error(ErrorKind::io) on failure,
// leaving nothing behind.
void write_file_atomic(const std::filesystem::path& path, std::string_view bytes);

}  // namespace perceiver
