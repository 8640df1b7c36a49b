// perceiver._perceiver: the engine for the Python package (python/perceiver/__init__.py holds the friendly
// layer). Decoding, preprocessing and forward passes run with the GIL released; each call borrows a Context
// from a small pool, so Python threads calling the same model run in parallel.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstring>
#include <mutex>
#include <string>
#include <variant>
#include <vector>

#include "perceiver/perceiver.h"

namespace py = pybind11;

namespace {

// One image as handed over by Python, readable without the GIL: a file path, encoded bytes (a Python
// bytes object the caller keeps alive) or 8-bit pixels (a numpy array the caller keeps alive).
struct ImageSource {
  std::string path;  // non-empty for files
  const char* data = nullptr;
  size_t size = 0;  // encoded bytes
  const uint8_t* pixels = nullptr;
  int width = 0, height = 0, channels = 0;
  size_t stride = 0;
  std::string name;  // what error messages call it
};

// Python-side spec (kind, object) -> ImageSource. Kinds: "path" (str), "bytes" (bytes), "array" (uint8
// [H, W] or [H, W, C] with C in 1, 3, 4, pixels contiguous within rows).
ImageSource to_source(const py::tuple& spec, size_t index) {
  const std::string kind = spec[0].cast<std::string>();
  ImageSource s;
  if (kind == "path") {
    s.path = spec[1].cast<std::string>();
    s.name = s.path;
  } else if (kind == "bytes") {
    const py::bytes bytes = spec[1].cast<py::bytes>();
    char* data = nullptr;
    Py_ssize_t size = 0;
    if (PyBytes_AsStringAndSize(bytes.ptr(), &data, &size) != 0) throw py::error_already_set();
    s.data = data;
    s.size = size_t(size);
    s.name = "images[" + std::to_string(index) + "] (bytes)";
  } else if (kind == "array") {
    const py::array array = spec[1].cast<py::array>();
    if (!py::isinstance<py::array_t<uint8_t>>(array) || (array.ndim() != 2 && array.ndim() != 3))
      throw perceiver::Error(
          perceiver::ErrorKind::bad_input,
          "images[" + std::to_string(index) + "]: an array image must be uint8 [H, W] or [H, W, 3]");
    s.height = int(array.shape(0));
    s.width = int(array.shape(1));
    s.channels = array.ndim() == 3 ? int(array.shape(2)) : 1;
    if (array.strides(array.ndim() - 1) != 1 || (array.ndim() == 3 && array.strides(1) != s.channels) ||
        array.strides(0) < 0)
      throw perceiver::Error(perceiver::ErrorKind::bad_input,
                             "images[" + std::to_string(index) + "]: pixels must be contiguous within rows");
    s.pixels = static_cast<const uint8_t*>(array.data());
    s.stride = size_t(array.strides(0));
    s.name = "images[" + std::to_string(index) + "] (array)";
  } else {
    throw perceiver::Error(perceiver::ErrorKind::usage, "unknown image kind " + kind);
  }
  return s;
}

perceiver::Image decode(const ImageSource& s, const perceiver::DecodeOptions& options) {
  if (!s.path.empty()) return perceiver::decode_image_file(s.path, options);
  if (s.pixels != nullptr)
    return perceiver::image_from_pixels(s.pixels, s.width, s.height, s.channels, s.stride);
  return perceiver::decode_image(s.data, s.size, s.name, options);
}

std::vector<ImageSource> to_sources(const py::list& specs) {
  std::vector<ImageSource> sources;
  for (size_t i = 0; i < specs.size(); ++i) sources.push_back(to_source(specs[i].cast<py::tuple>(), i));
  return sources;
}

class PyModel {
 public:
  PyModel(const std::string& model, const std::string& precision, int threads, const std::string& revision,
          bool preprocess_defaults, int64_t max_image_pixels) {
    perceiver::ModelOptions options;
    options.precision = perceiver::parse_precision(precision);
    options.threads = threads;
    if (!revision.empty()) options.revision = revision;
    options.preprocess_defaults = preprocess_defaults;
    if (max_image_pixels > 0) decode_.max_pixels = max_image_pixels;
    py::gil_scoped_release release;
    model_ = perceiver::Model::load(model, options);
  }

  const perceiver::ModelInfo& info() const { return model_->info(); }

  // pixels: float32 [B, 3, H, W] (C-contiguous, read in place) -> logits [B, num_labels]
  py::array_t<float> logits(const py::array_t<float, py::array::c_style>& pixels) {
    if (pixels.ndim() != 4 || pixels.shape(1) != 3 || pixels.shape(0) < 1)
      throw perceiver::Error(perceiver::ErrorKind::bad_input,
                             "pixel_values: must be float32 [B, 3, H, W] with B >= 1");
    const int batch = int(pixels.shape(0)), height = int(pixels.shape(2)), width = int(pixels.shape(3));
    model_->check_input_size(height, width);
    py::array_t<float> out({py::ssize_t(batch), py::ssize_t(info().num_labels)});
    const float* in = pixels.data();
    float* dst = out.mutable_data();
    {
      py::gil_scoped_release release;
      Borrowed context(*this);
      context->logits(in, batch, height, width, dst);
    }
    return out;
  }

  // specs: list of (kind, object); outputs: "logits" | "mean" | "latents" | "decoder"
  py::array_t<float> run(const py::list& specs, const std::string& output, int batch_size) {
    const std::vector<ImageSource> sources = to_sources(specs);
    const perceiver::ModelInfo& i = info();
    const int64_t n = int64_t(sources.size());
    const int64_t L = i.num_latents, D = i.d_latents, K = i.num_labels;
    std::vector<py::ssize_t> shape;
    unsigned wanted = 0;
    if (output == "logits") {
      shape = {n, K};
      wanted = perceiver::Context::ImageBatch::logits_output;
    } else if (output == "latents") {
      shape = {n, L, D};
      wanted = perceiver::Context::ImageBatch::latents_output;
    } else if (output == "mean") {
      shape = {n, D};
      wanted = perceiver::Context::ImageBatch::latents_output;
    } else if (output == "decoder") {
      shape = {n, D};
      wanted = perceiver::Context::ImageBatch::decoder_features_output;
    } else {
      throw perceiver::Error(perceiver::ErrorKind::usage,
                             "pool: \"" + output + "\" is not one of \"mean\", \"latents\", \"decoder\"");
    }
    py::array_t<float> out(shape);
    float* dst = out.mutable_data();
    if (n == 0) return out;
    const size_t row = size_t(output == "logits" ? K : output == "latents" ? L * D : D);
    {
      py::gil_scoped_release release;
      Borrowed context(*this);
      context->run_images(
          n, [&](int64_t k) { return decode(sources[size_t(k)], decode_); }, batch_size > 0 ? batch_size : 8,
          wanted,
          [&](const perceiver::Context::ImageBatch& b) {
            for (int t = 0; t < b.count; ++t) {
              float* o = dst + size_t(b.first + t) * row;
              if (output == "logits") {
                std::memcpy(o, b.logits + size_t(t) * K, sizeof(float) * K);
              } else if (output == "decoder") {
                std::memcpy(o, b.decoder_features + size_t(t) * D, sizeof(float) * D);
              } else if (output == "latents") {
                std::memcpy(o, b.latents + size_t(t) * L * D, sizeof(float) * L * D);
              } else {  // mean over the latents, in double (as Context::embed)
                const float* z = b.latents + size_t(t) * L * D;
                for (int64_t d = 0; d < D; ++d) {
                  double sum = 0;
                  for (int64_t l = 0; l < L; ++l) sum += z[l * D + d];
                  o[d] = float(sum / double(L));
                }
              }
            }
          },
          [&](int64_t k) { return sources[size_t(k)].name; });
    }
    return out;
  }

  // One image -> pixel_values [1, 3, H, W]
  py::array_t<float> preprocess(const py::tuple& spec) {
    const ImageSource source = to_source(spec, 0);
    perceiver::Image image;
    int height = 0, width = 0;
    {
      py::gil_scoped_release release;
      image = named(source, [&] { return decode(source, decode_); });
      named(source, [&] {
        model_->preprocessed_size(image, &height, &width);
        return 0;
      });
    }
    py::array_t<float> out({py::ssize_t(1), py::ssize_t(3), py::ssize_t(height), py::ssize_t(width)});
    float* dst = out.mutable_data();
    {
      py::gil_scoped_release release;
      named(source, [&] {
        model_->preprocess(image, dst);
        return 0;
      });
    }
    return out;
  }

  // Softmax top-k of each row of logits [N, num_labels]: per row a list of (id, probability).
  std::vector<std::vector<std::pair<int, float>>> top_k(const py::array_t<float, py::array::c_style>& logits,
                                                        int k) {
    const int64_t K = info().num_labels;
    if (logits.ndim() != 2 || logits.shape(1) != K)
      throw perceiver::Error(perceiver::ErrorKind::usage, "logits: must be [N, num_labels]");
    std::vector<std::vector<std::pair<int, float>>> out;
    for (py::ssize_t r = 0; r < logits.shape(0); ++r) {
      std::vector<std::pair<int, float>> row;
      for (const auto& p : perceiver::top_k(logits.data() + r * K, info().labels, k))
        row.emplace_back(p.id, p.probability);
      out.push_back(std::move(row));
    }
    return out;
  }

 private:
  // A context from the pool for the length of one call (made when all are in use; kept for reuse).
  class Borrowed {
   public:
    explicit Borrowed(PyModel& owner) : owner_(owner) {
      {
        std::lock_guard<std::mutex> lock(owner_.pool_mutex_);
        if (!owner_.pool_.empty()) {
          context_ = std::move(owner_.pool_.back());
          owner_.pool_.pop_back();
        }
      }
      if (!context_) context_ = owner_.model_->create_context();
    }
    ~Borrowed() {
      std::lock_guard<std::mutex> lock(owner_.pool_mutex_);
      if (owner_.pool_.size() < kMaxPooled) owner_.pool_.push_back(std::move(context_));
    }
    perceiver::Context* operator->() { return context_.get(); }

   private:
    static constexpr size_t kMaxPooled = 8;
    PyModel& owner_;
    std::unique_ptr<perceiver::Context> context_;
  };

  // Errors about one image name it (file path or images[i]) unless they do already.
  template <typename F>
  static auto named(const ImageSource& source, F&& body) -> decltype(body()) {
    try {
      return body();
    } catch (const perceiver::Error& e) {
      const std::string what = e.what();
      if (what.rfind(source.name, 0) == 0) throw;
      throw perceiver::Error(e.kind(), source.name + ": " + what);
    }
  }

  std::unique_ptr<perceiver::Model> model_;
  perceiver::DecodeOptions decode_;
  std::mutex pool_mutex_;
  std::vector<std::unique_ptr<perceiver::Context>> pool_;
};

}  // namespace

PYBIND11_MODULE(_perceiver, m) {
  m.doc() = "perceiver.cpp engine (use the `perceiver` package)";
  m.attr("__version__") = PERCEIVER_VERSION;

  static py::exception<perceiver::Error> error(m, "Error", PyExc_Exception);
  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const perceiver::Error& e) {
      // perceiver.Error(message) with .kind = the CLI's exit code for it (perceiver::ErrorKind).
      PyObject* value = PyObject_CallFunction(error.ptr(), "s", e.what());
      if (value != nullptr) {
        PyObject* kind = PyLong_FromLong(e.exit_code());
        PyObject_SetAttrString(value, "kind", kind);
        Py_XDECREF(kind);
        PyErr_SetObject(error.ptr(), value);
        Py_DECREF(value);
      }
    }
  });

  py::class_<PyModel>(m, "_Model")
      .def(py::init<const std::string&, const std::string&, int, const std::string&, bool, int64_t>(),
           py::arg("model"), py::arg("precision"), py::arg("threads"), py::arg("revision"),
           py::arg("preprocess_defaults"), py::arg("max_image_pixels"))
      .def_property_readonly("labels", [](const PyModel& self) { return self.info().labels; })
      .def_property_readonly("config_json", [](const PyModel& self) { return self.info().config_json; })
      .def_property_readonly("info",
                             [](const PyModel& self) {
                               const perceiver::ModelInfo& i = self.info();
                               py::dict d;
                               d["architecture"] = i.architecture;
                               d["backend"] = i.backend;
                               d["precision"] = perceiver::precision_name(i.precision);
                               d["num_labels"] = i.num_labels;
                               d["num_latents"] = i.num_latents;
                               d["d_latents"] = i.d_latents;
                               d["num_parameters"] = i.num_parameters;
                               d["model_dir"] = i.model_dir.string();
                               d["has_preprocessor"] = i.has_preprocessor;
                               d["image_height"] = i.image_height;
                               d["image_width"] = i.image_width;
                               return d;
                             })
      .def("logits", &PyModel::logits, py::arg("pixel_values"))
      .def("run", &PyModel::run, py::arg("specs"), py::arg("output"), py::arg("batch_size"))
      .def("preprocess", &PyModel::preprocess, py::arg("spec"))
      .def("top_k", &PyModel::top_k, py::arg("logits"), py::arg("k"));
}
