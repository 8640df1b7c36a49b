#include "train/export.h"

#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "formats/safetensors_writer.h"
#include "formats/tensor_file.h"
#include "perceiver/error.h"
#include "util/atomic_file.h"

namespace perceiver::train {
namespace {

nlohmann::ordered_json read_json(const std::filesystem::path& path) {
  std::ifstream in(path);
  if (!in) throw Error(ErrorKind::model, path.string() + ": cannot open");
  try {
    return nlohmann::ordered_json::parse(in);
  } catch (const nlohmann::json::exception& e) {
    throw Error(ErrorKind::model, path.string() + ": " + e.what());
  }
}

std::string read_text(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

}  // namespace

double config_initializer_range(const std::filesystem::path& source_dir) {
  auto j = read_json(source_dir / "config.json");
  auto it = j.find("initializer_range");
  if (it != j.end() && it->is_number() && it->get<double>() > 0) return it->get<double>();
  return 0.02;
}

std::string preprocessor_config_json(const PreprocessorConfig& p) {
  nlohmann::ordered_json j;
  j["crop_size"] = {{"height", p.crop_height}, {"width", p.crop_width}};
  j["do_center_crop"] = p.do_center_crop;
  j["do_normalize"] = p.do_normalize;
  j["do_rescale"] = p.do_rescale;
  j["do_resize"] = p.do_resize;
  j["image_mean"] = p.image_mean;
  j["image_processor_type"] = "PerceiverImageProcessor";
  j["image_std"] = p.image_std;
  j["resample"] = static_cast<int>(p.resample);
  j["rescale_factor"] = p.rescale_factor;
  j["size"] = {{"height", p.height}, {"width", p.width}};
  return j.dump(2) + "\n";
}

void write_model_dir(const std::filesystem::path& source_dir, const std::filesystem::path& weights_file,
                     const std::filesystem::path& out_dir, ClassifierHead<float>& head,
                     const std::vector<std::string>& labels, const PreprocessorConfig& prep) {
  if (int(labels.size()) != head.num_labels())
    throw Error(ErrorKind::internal, "write_model_dir: label count does not match the head");
  std::error_code ec;
  if (std::filesystem::equivalent(source_dir, out_dir, ec))
    throw Error(ErrorKind::usage, out_dir.string() + ": the output must not be the source model directory");
  std::filesystem::create_directories(out_dir, ec);
  if (ec) throw Error(ErrorKind::io, out_dir.string() + ": cannot create folder: " + ec.message());

  // Weights first (the slowest part to fail on), config last.
  std::filesystem::path weights = weights_file;
  if (weights.empty()) {
    weights = source_dir / "model.safetensors";
    if (!std::filesystem::exists(weights)) weights = source_dir / "pytorch_model.bin";
  }
  auto file = open_weights(weights);
  std::vector<SafetensorsEntry> entries;
  for (const TensorRef& t : file->tensors()) {
    if (t.name.starts_with("perceiver.decoder.")) continue;  // replaced by the head
    entries.push_back({t.name, t.dtype, t.shape, t.data, t.nbytes});
  }
  for (Param<float>* p : head.params())
    entries.push_back({p->name, DType::f32, p->shape, p->value.data(), p->value.size() * sizeof(float)});
  write_safetensors(out_dir / "model.safetensors", entries);

  const auto prep_path = source_dir / "preprocessor_config.json";
  write_file_atomic(out_dir / "preprocessor_config.json", std::filesystem::exists(prep_path)
                                                              ? read_text(prep_path)
                                                              : preprocessor_config_json(prep));

  auto config = read_json(source_dir / "config.json");
  nlohmann::ordered_json id2label = nlohmann::ordered_json::object(),
                         label2id = nlohmann::ordered_json::object();
  for (size_t i = 0; i < labels.size(); ++i) {
    id2label[std::to_string(i)] = labels[i];
    label2id[labels[i]] = i;
  }
  config["id2label"] = id2label;
  config["label2id"] = label2id;
  config["num_labels"] = labels.size();
  write_file_atomic(out_dir / "config.json", config.dump(2) + "\n");
}

}  // namespace perceiver::train
