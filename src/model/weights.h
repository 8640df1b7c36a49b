// Reading a checkpoint's tensors by name (checked against the shapes config.json implies), or making up
// random ones, and packing linear layers for a backend.
#pragma once

#include <cstdint>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "formats/tensor_file.h"
#include "kernels/kernels.h"
#include "perceiver/perceiver.h"

namespace perceiver {

// One tensor as fp32: a view straight into the weight file's mapping when it is stored as F32, else an owned
// converted (or, for random models, generated) copy.
struct Weight {
  const float* data = nullptr;
  size_t size = 0;
  std::vector<float> owned;
  const TensorRef* ref = nullptr;  // the file's tensor, when it came from a file
  bool mapped = false;             // data points into the memory-mapped weights file (zero-copy F32)

  const float& operator[](size_t i) const { return data[i]; }
  std::vector<float> vec() const { return std::vector<float>(data, data + size); }
};

// Reads tensors by name from a weight file, checking dtype and shape, and remembers which were used. Without
// a file it makes up random weights of the requested shapes (Model::create_random).
class WeightReader {
 public:
  // F32 tensors are used where the file holds them (zero-copy). Those in a memory mapping of the file
  // (TensorRef::mapped) have their pages mapped up front (populate_mapped) and dropped by release().
  explicit WeightReader(TensorFile& file) : file_(&file) {}
  explicit WeightReader(uint64_t seed) : rng_state_(seed * 0x9e3779b97f4a7c15ull + 1) {}

  // Declared by the model but not needed: read so that the file is checked to hold it.
  void skip(const std::string& name, const std::vector<int64_t>& shape) { get(name, shape); }

  Weight get(const std::string& name, const std::vector<int64_t>& shape) {
    Weight w;
    if (!name.ends_with("running_mean") && !name.ends_with("running_var"))
      num_parameters_ += int64_t(count(shape));
    if (!file_) {
      w.owned = random_tensor(name, count(shape));
    } else if (const TensorRef* t = file_->find(name); !t) {
      missing_.push_back(name);
      // Zeros stand in until finish() reports every missing tensor at once; past a budget, report now rather
      // than allocate what config.json merely claims (a hostile config with an empty weights file).
      missing_elements_ += count(shape);
      if (missing_elements_ > kMaxMissingElements)
        throw Error(ErrorKind::model, file_->path().string() +
                                          ": weights do not match config.json: missing " +
                                          name_list(missing_) + " and possibly more");
      w.owned.assign(count(shape), 0.0f);
    } else {
      used_.insert(name);
      if (t->shape != shape) {
        TensorRef want;
        want.shape = shape;
        throw Error(ErrorKind::model, file_->path().string() + ": tensor '" + name + "' has shape " +
                                          t->shape_string() + ", expected " + want.shape_string());
      }
      if (t->dtype == DType::i64)
        throw Error(ErrorKind::model,
                    file_->path().string() + ": tensor '" + name + "' has dtype I64, expected a float");
      w.ref = t;
      if (t->dtype == DType::f32) {  // zero-copy; mapped pages in one system call, not a fault per page
        if (t->mapped) populate_mapped(t->data, t->nbytes);
        w.mapped = t->mapped;
        w.data = reinterpret_cast<const float*>(t->data);
        w.size = count(shape);
        return w;
      }
      w.owned = tensor_to_f32(*t, file_->path());
    }
    w.data = w.owned.data();
    w.size = w.owned.size();
    return w;
  }

  // The tensor has been packed (copied) and is not needed any more: give its file pages back, so that the
  // mapped file and the packed weights do not both count in the resident set while loading.
  void release(const Weight& w, const PackedLinear& packed) const {
    if (!packed.reads_in_place) release(w);
  }
  // The same, for a tensor that nothing reads any more. Mapped tensors give their pages back; storages read
  // into memory (pytorch_model.bin's compressed or misaligned entries) are freed once all their tensors are
  // released: loading then never holds the whole file and all the packed weights at once.
  void release(const Weight& w) const {
    if (!w.ref || w.ref->nbytes == 0) return;
    if (!w.mapped) {
      if (file_) file_->release(*w.ref);
      return;
    }
    drop_mapped(w.ref->data, w.ref->nbytes);
  }

  // Every needed tensor present, nothing unexpected left over (BatchNorm's num_batches_tracked is ignored).
  void finish() const {
    if (!file_) return;
    std::vector<std::string> unexpected;
    for (const auto& t : file_->tensors())
      if (!used_.count(t.name) && !t.name.ends_with("num_batches_tracked")) unexpected.push_back(t.name);
    if (missing_.empty() && unexpected.empty()) return;
    const auto& list = name_list;
    std::string msg = file_->path().string() + ": weights do not match config.json:";
    if (!missing_.empty()) msg += " missing " + list(missing_);
    if (!missing_.empty() && !unexpected.empty()) msg += ";";
    if (!unexpected.empty()) msg += " unexpected " + list(unexpected);
    throw Error(ErrorKind::model, msg);
  }

  // Parameters read (BatchNorm running statistics excluded), as HF counts them.
  int64_t num_parameters() const { return num_parameters_; }

  static std::string name_list(const std::vector<std::string>& names) {
    std::string s;
    for (size_t i = 0; i < names.size() && i < 5; ++i) s += (i ? ", '" : "'") + printable(names[i]) + "'";
    if (names.size() > 5) s += " and " + std::to_string(names.size() - 5) + " more";
    return s;
  }

  static size_t count(const std::vector<int64_t>& shape) {
    size_t n = 1;
    for (auto d : shape) n *= static_cast<size_t>(d);
    return n;
  }

 private:
  // HF-like initialisation: weights ~ uniform with std 0.02, biases small, LayerNorm/BatchNorm scales near 1,
  // running variances near 1. Uniform rather than normal: cheap, and the values only need to be sane.
  std::vector<float> random_tensor(const std::string& name, size_t n) {
    std::vector<float> v(n);
    float centre = 0.0f, half_width = 0.02f * 1.7320508f;
    const bool norm = name.find("norm") != std::string::npos;
    if (name.ends_with("running_var") || (norm && name.ends_with(".weight"))) {
      centre = 1.0f;
      half_width = 0.1f;
    } else if (name.ends_with(".bias") || name.ends_with("running_mean")) {
      half_width = 0.01f;
    }
    for (auto& x : v) {
      rng_state_ = rng_state_ * 6364136223846793005ull + 1442695040888963407ull;  // 64-bit LCG, top 24 bits
      const float u = static_cast<float>(rng_state_ >> 40) * (1.0f / 16777216.0f);
      x = centre + half_width * (2.0f * u - 1.0f);
    }
    return v;
  }

  TensorFile* file_ = nullptr;
  uint64_t rng_state_ = 0;
  std::set<std::string> used_;
  std::vector<std::string> missing_;
  size_t missing_elements_ = 0;
  static constexpr size_t kMaxMissingElements = size_t{1} << 24;  // zeros allocated for missing tensors
  int64_t num_parameters_ = 0;
};

// Packs linear layers as the model's backend wants them: in place (no copy) when the weights are F32 in the
// mapped file, the options allow it and the backend can; the file's pages are released once packed.
class LinearPacker {
 public:
  LinearPacker(WeightReader& reader, Backend& backend, const ModelOptions& options)
      : reader(reader), backend(backend), options(options) {}

  // weight [out, in] and bias [out] under `prefix` (".weight", ".bias") at the model's precision.
  std::unique_ptr<PackedLinear> linear(const std::string& prefix, int out, int in);
  // Several weights stacked by rows into one layer (biases may be nullptr).
  std::unique_ptr<PackedLinear> pack(const std::vector<const Weight*>& weights,
                                     const std::vector<const Weight*>& biases, int in, Precision precision);
  // Whether layers of these weights would be read in place at the model's precision.
  bool in_place(const std::vector<const Weight*>& weights) const;

  WeightReader& reader;
  Backend& backend;
  const ModelOptions& options;
  bool any_in_place = false;  // some packed layer reads its weights from the mapped file
};

}  // namespace perceiver
