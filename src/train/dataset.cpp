#include "train/dataset.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstring>
#include <exception>
#include <fstream>
#include <map>

#include "perceiver/progress.h"
#include "train/rng.h"

namespace perceiver::train {
namespace {

bool is_image_file(const std::filesystem::path& p) {
  std::string ext = p.extension().string();
  std::transform(ext.begin(), ext.end(), ext.begin(), [](unsigned char ch) { return std::tolower(ch); });
  return ext == ".jpg" || ext == ".jpeg" || ext == ".png" || ext == ".webp";
}

std::string trim(std::string s) {
  while (!s.empty() && (s.back() == '\r' || s.back() == '\n' || s.back() == ' ' || s.back() == '\t'))
    s.pop_back();
  size_t i = 0;
  while (i < s.size() && (s[i] == ' ' || s[i] == '\t')) ++i;
  return s.substr(i);
}

// Splits one CSV line into fields (double quotes, "" inside quotes).
std::vector<std::string> csv_fields(const std::string& line) {
  std::vector<std::string> out(1);
  bool quoted = false;
  for (size_t i = 0; i < line.size(); ++i) {
    const char ch = line[i];
    if (quoted) {
      if (ch == '"' && i + 1 < line.size() && line[i + 1] == '"') {
        out.back() += '"';
        ++i;
      } else if (ch == '"') {
        quoted = false;
      } else {
        out.back() += ch;
      }
    } else if (ch == '"') {
      quoted = true;
    } else if (ch == ',') {
      out.emplace_back();
    } else {
      out.back() += ch;
    }
  }
  for (auto& f : out) f = trim(f);
  return out;
}

LabelledFiles from_pairs(std::vector<std::pair<std::filesystem::path, std::string>> pairs,
                         const std::string& source) {
  if (pairs.empty()) throw Error(ErrorKind::bad_input, source + ": no labelled images found");
  LabelledFiles out;
  std::map<std::string, int> ids;
  for (const auto& [file, label] : pairs) ids[label] = 0;
  for (auto& [name, id] : ids) {
    id = static_cast<int>(out.classes.size());
    out.classes.push_back(name);
  }
  for (auto& [file, label] : pairs) {
    out.files.push_back(file);
    out.labels.push_back(ids[label]);
  }
  return out;
}

std::string normalise(const std::string& s) {
  std::string out;
  for (unsigned char ch : s)
    if (std::isalnum(ch)) out += static_cast<char>(std::tolower(ch));
  return out;
}

}  // namespace

LabelledFiles scan_labelled_data(const std::filesystem::path& data) {
  std::error_code ec;
  std::vector<std::pair<std::filesystem::path, std::string>> pairs;
  if (std::filesystem::is_directory(data, ec)) {
    std::vector<std::filesystem::path> class_dirs;
    for (const auto& entry : std::filesystem::directory_iterator(data, ec))
      if (entry.is_directory()) class_dirs.push_back(entry.path());
    if (ec) throw Error(ErrorKind::bad_input, data.string() + ": cannot list folder: " + ec.message());
    std::sort(class_dirs.begin(), class_dirs.end());
    for (const auto& dir : class_dirs) {
      std::vector<std::filesystem::path> files;
      for (auto it = std::filesystem::recursive_directory_iterator(
               dir, std::filesystem::directory_options::follow_directory_symlink, ec);
           !ec && it != std::filesystem::recursive_directory_iterator(); it.increment(ec))
        if (it->is_regular_file() && is_image_file(it->path())) files.push_back(it->path());
      if (ec) throw Error(ErrorKind::bad_input, dir.string() + ": cannot list folder: " + ec.message());
      std::sort(files.begin(), files.end());
      for (auto& f : files) pairs.emplace_back(f, dir.filename().string());
    }
    if (pairs.empty())
      throw Error(
          ErrorKind::bad_input,
          data.string() + ": no images found (expected one sub-folder of .jpg/.png/.webp images per class)");
    return from_pairs(std::move(pairs), data.string());
  }
  if (!std::filesystem::is_regular_file(data, ec))
    throw Error(ErrorKind::bad_input, data.string() + ": no such folder or CSV file");
  std::ifstream in(data);
  if (!in) throw Error(ErrorKind::bad_input, data.string() + ": cannot open");
  const std::filesystem::path base = data.parent_path();
  std::string line;
  int line_no = 0;
  while (std::getline(in, line)) {
    ++line_no;
    if (trim(line).empty()) continue;
    auto fields = csv_fields(line);
    if (line_no == 1 && fields.size() == 2 && fields[0] == "file" && fields[1] == "label") continue;
    if (fields.size() != 2 || fields[0].empty() || fields[1].empty())
      throw Error(ErrorKind::bad_input,
                  data.string() + ":" + std::to_string(line_no) + ": expected 'file,label'");
    std::filesystem::path file = fields[0];
    if (file.is_relative()) file = base / file;
    pairs.emplace_back(file, fields[1]);
  }
  return from_pairs(std::move(pairs), data.string());
}

std::vector<int> match_classes(const std::vector<std::string>& classes,
                               const std::vector<std::string>& labels) {
  std::vector<int> out;
  std::string missing;
  for (const auto& c : classes) {
    int id = -1;
    for (size_t i = 0; i < labels.size() && id < 0; ++i)
      if (labels[i] == c) id = static_cast<int>(i);
    for (size_t i = 0; i < labels.size() && id < 0; ++i)
      if (!normalise(c).empty() && normalise(labels[i]) == normalise(c)) id = static_cast<int>(i);
    if (id < 0) missing += (missing.empty() ? "'" : ", '") + c + "'";
    out.push_back(id);
  }
  if (!missing.empty())
    throw Error(ErrorKind::bad_input, "classes not among the model's labels (id2label): " + missing);
  return out;
}

void split_train_val(const std::vector<int>& labels, int num_classes, double fraction, uint64_t seed,
                     std::vector<int64_t>* train, std::vector<int64_t>* val) {
  train->clear();
  val->clear();
  if (fraction < 0 || fraction >= 1) throw Error(ErrorKind::usage, "validation fraction must be in [0, 1)");
  Rng rng(seed ^ 0x5eed5eed5eedull);
  std::vector<bool> is_val(labels.size(), false);
  for (int c = 0; c < num_classes; ++c) {
    std::vector<int64_t> members;
    for (size_t i = 0; i < labels.size(); ++i)
      if (labels[i] == c) members.push_back(int64_t(i));
    shuffle(members.begin(), members.size(), rng);
    size_t n_val = static_cast<size_t>(std::llround(fraction * double(members.size())));
    if (fraction > 0 && n_val == 0 && members.size() >= 2) n_val = 1;
    if (n_val >= members.size()) n_val = members.size() > 0 ? members.size() - 1 : 0;
    for (size_t i = 0; i < n_val; ++i) is_val[members[i]] = true;
  }
  for (size_t i = 0; i < labels.size(); ++i) (is_val[i] ? val : train)->push_back(int64_t(i));
}

FeatureStore::FeatureStore(int64_t count, int64_t row_floats, uint64_t max_memory_bytes,
                           const std::filesystem::path& cache_dir)
    : count_(count), row_floats_(row_floats) {
  const size_t bytes = size_t(count) * size_t(row_floats) * sizeof(float);
  if (bytes <= max_memory_bytes) {
    memory_.assign(size_t(count) * size_t(row_floats), 0.0f);
    data_ = memory_.data();
    return;
  }
  std::filesystem::path dir = cache_dir.empty() ? std::filesystem::temp_directory_path() : cache_dir;
  std::string templ = (dir / "perceiver-features-XXXXXX").string();
  const int fd = ::mkstemp(templ.data());
  if (fd < 0)
    throw Error(ErrorKind::io, templ + ": cannot create feature cache file: " + std::strerror(errno));
  ::unlink(templ.c_str());  // anonymous from now on: disappears with the mapping
  if (::ftruncate(fd, off_t(bytes)) != 0) {
    const int err = errno;
    ::close(fd);
    throw Error(ErrorKind::io, dir.string() + ": cannot size a " + std::to_string(bytes >> 20) +
                                   " MiB feature cache file: " + std::strerror(err));
  }
  void* p = ::mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  ::close(fd);
  if (p == MAP_FAILED) throw Error(ErrorKind::io, dir.string() + ": cannot map feature cache file");
  mapped_ = p;
  mapped_bytes_ = bytes;
  data_ = static_cast<float*>(p);
}

void FeatureStore::release() {
  if (mapped_) ::munmap(mapped_, mapped_bytes_);
  mapped_ = nullptr;
  mapped_bytes_ = 0;
  memory_.clear();
  data_ = nullptr;
}

FeatureStore::~FeatureStore() { release(); }

FeatureStore::FeatureStore(FeatureStore&& o) noexcept { *this = std::move(o); }

FeatureStore& FeatureStore::operator=(FeatureStore&& o) noexcept {
  if (this == &o) return *this;
  release();
  count_ = o.count_;
  row_floats_ = o.row_floats_;
  memory_ = std::move(o.memory_);
  mapped_ = o.mapped_;
  mapped_bytes_ = o.mapped_bytes_;
  data_ = mapped_ ? static_cast<float*>(mapped_) : memory_.data();
  o.mapped_ = nullptr;
  o.mapped_bytes_ = 0;
  o.data_ = nullptr;
  o.count_ = o.row_floats_ = 0;
  return *this;
}

ImageSource file_source(const std::vector<std::filesystem::path>& files) {
  return [files](int64_t i) { return load_image(files[size_t(i)], DecodeOptions{}); };
}

FeatureStore encode_latents(const Model& model, int64_t count, const ImageSource& source, int batch,
                            bool progress, const std::string& label, uint64_t max_memory_bytes,
                            const std::filesystem::path& cache_dir) {
  const ModelInfo& info = model.info();
  const size_t row = size_t(info.num_latents) * info.d_latents;
  FeatureStore store(count, int64_t(row), max_memory_bytes, cache_dir);
  Progress bar(label, count, progress);
  model.create_context()->run_images(count, source, batch, Context::ImageBatch::latents_output,
                                     [&](const Context::ImageBatch& b) {
                                       std::memcpy(store.row(b.first), b.latents, sizeof(float) * b.count * row);
                                       bar.update(b.first + b.count);
                                     });
  const double rate = count / std::max(1e-9, bar.seconds());
  bar.finish(count > 0 ? std::to_string(std::lround(rate)) + " images/s" : "");
  return store;
}

}  // namespace perceiver::train
