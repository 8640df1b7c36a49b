#include "formats/safetensors_writer.h"

#include <algorithm>
#include <cstring>
#include <nlohmann/json.hpp>
#include <set>

#include "perceiver/error.h"
#include "util/atomic_file.h"

namespace perceiver {

std::string serialize_safetensors(const std::vector<SafetensorsEntry>& tensors,
                                  const std::map<std::string, std::string>& metadata) {
  std::vector<const SafetensorsEntry*> order;
  std::set<std::string> names;
  for (const auto& t : tensors) {
    if (t.name.empty() || t.name == "__metadata__")
      throw Error(ErrorKind::internal, "safetensors: invalid tensor name '" + t.name + "'");
    if (!names.insert(t.name).second)
      throw Error(ErrorKind::internal, "safetensors: duplicate tensor '" + t.name + "'");
    size_t numel = 1;
    for (int64_t d : t.shape) {
      if (d < 0) throw Error(ErrorKind::internal, "safetensors: negative dimension in '" + t.name + "'");
      numel *= size_t(d);
    }
    if (numel * dtype_size(t.dtype) != t.nbytes || (t.nbytes && !t.data))
      throw Error(ErrorKind::internal,
                  "safetensors: byte count of '" + t.name + "' does not match its shape");
    order.push_back(&t);
  }
  std::stable_sort(order.begin(), order.end(), [](const SafetensorsEntry* a, const SafetensorsEntry* b) {
    const size_t sa = dtype_size(a->dtype), sb = dtype_size(b->dtype);
    return sa != sb ? sa > sb : a->name < b->name;
  });

  nlohmann::json header = nlohmann::json::object();
  if (!metadata.empty()) {
    nlohmann::json meta = nlohmann::json::object();
    for (const auto& [k, v] : metadata) meta[k] = v;
    header["__metadata__"] = meta;
  }
  size_t offset = 0;
  for (const SafetensorsEntry* t : order) {
    header[t->name] = {
        {"dtype", dtype_name(t->dtype)}, {"shape", t->shape}, {"data_offsets", {offset, offset + t->nbytes}}};
    offset += t->nbytes;
  }
  std::string json = header.dump();
  json.append((8 - json.size() % 8) % 8, ' ');

  std::string out;
  out.reserve(8 + json.size() + offset);
  const uint64_t n = json.size();
  for (int i = 0; i < 8; ++i) out.push_back(static_cast<char>((n >> (8 * i)) & 0xff));
  out += json;
  for (const SafetensorsEntry* t : order)
    if (t->nbytes) out.append(static_cast<const char*>(t->data), t->nbytes);
  return out;
}

void write_safetensors(const std::filesystem::path& path, const std::vector<SafetensorsEntry>& tensors,
                       const std::map<std::string, std::string>& metadata) {
  write_file_atomic(path, serialize_safetensors(tensors, metadata));
}

}  // namespace perceiver
