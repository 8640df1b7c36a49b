#include "model/weights.h"

namespace perceiver {

std::unique_ptr<PackedLinear> LinearPacker::linear(const std::string& prefix, int out, int in) {
  auto w = reader.get(prefix + ".weight", {out, in});
  auto b = reader.get(prefix + ".bias", {out});
  return pack({&w}, {&b}, in, options.precision);
}

bool LinearPacker::in_place(const std::vector<const Weight*>& weights) const {
  if (!options.mmap_weights || !backend.reads_in_place(options.precision)) return false;
  for (const Weight* w : weights)
    if (!w->mapped) return false;
  return true;
}

std::unique_ptr<PackedLinear> LinearPacker::pack(const std::vector<const Weight*>& weights,
                                                 const std::vector<const Weight*>& biases, int in,
                                                 Precision precision) {
  std::vector<LinearPart> parts;
  bool mapped = options.mmap_weights;
  for (size_t i = 0; i < weights.size(); ++i) {
    parts.push_back(
        {weights[i]->data, biases[i] ? biases[i]->data : nullptr, int(weights[i]->size / size_t(in))});
    mapped = mapped && weights[i]->mapped;
  }
  auto packed = backend.pack_linear(parts, in, precision, mapped);
  if (packed->reads_in_place) any_in_place = true;
  for (const Weight* w : weights) reader.release(*w, *packed);
  return packed;
}

}  // namespace perceiver
