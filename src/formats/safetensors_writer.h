// Writes model.safetensors files that Hugging Face's safetensors library (and open_safetensors) accept:
// 8-byte little-endian header length, a JSON header {name: {dtype, shape, data_offsets}, "__metadata__": ...}
// padded with spaces to a multiple of 8 bytes, then the tensors' bytes back to back with no holes.
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <map>
#include <string>
#include <vector>

#include "formats/tensor_file.h"

namespace perceiver {

struct SafetensorsEntry {
  std::string name;
  DType dtype = DType::f32;
  std::vector<int64_t> shape;
  const void* data = nullptr;  // numel(shape) * dtype_size(dtype) little-endian bytes
  size_t nbytes = 0;
};

// The whole file as bytes. Tensors are laid out by decreasing element size, then by name (every tensor
// starts at a multiple of its element size); the header lists them sorted by name. Throws
// Error(ErrorKind::internal) for duplicate or empty names or a byte count that does not match the shape.
std::string serialize_safetensors(const std::vector<SafetensorsEntry>& tensors,
                                  const std::map<std::string, std::string>& metadata = {{"format", "pt"}});

// serialize_safetensors, written atomically (write_file_atomic).
void write_safetensors(const std::filesystem::path& path, const std::vector<SafetensorsEntry>& tensors,
                       const std::map<std::string, std::string>& metadata = {{"format", "pt"}});

}  // namespace perceiver
