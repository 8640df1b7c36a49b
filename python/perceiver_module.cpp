// Python bindings of the public C++ API: perceiver.Model (see docs/python.md).
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <mutex>

#include "perceiver/perceiver.h"

namespace py = pybind11;
using namespace perceiver;

namespace {

PyObject* g_error = nullptr;  // perceiver.Error

// Contexts for concurrent Python threads: taken from a free list, returned after the call.
class ContextPool {
 public:
  explicit ContextPool(const Model& model) : model_(model) {}
  struct Lease {
    ContextPool* pool;
    std::unique_ptr<Context> context;
    ~Lease() {
      std::lock_guard<std::mutex> lock(pool->mutex_);
      pool->free_.push_back(std::move(context));
    }
  };
  Lease take() {
    std::lock_guard<std::mutex> lock(mutex_);
    if (free_.empty()) return {this, model_.create_context()};
    auto c = std::move(free_.back());
    free_.pop_back();
    return {this, std::move(c)};
  }

 private:
  const Model& model_;
  std::mutex mutex_;
  std::vector<std::unique_ptr<Context>> free_;
};

// An image argument: a path (str / os.PathLike), encoded bytes, a PIL image, or an HxWx3 / HxW uint8 array.
Image to_image(py::handle obj) {
  py::module_ os = py::module_::import("os");
  if (py::isinstance<py::bytes>(obj) || py::isinstance<py::bytearray>(obj)) {
    std::string bytes = py::isinstance<py::bytes>(obj) ? std::string(obj.cast<py::bytes>())
                                                       : std::string(obj.cast<py::bytearray>());
    py::gil_scoped_release release;
    return decode_image(bytes.data(), bytes.size(), "<bytes>");
  }
  if (py::isinstance<py::str>(obj) || py::isinstance(obj, os.attr("PathLike"))) {
    const std::string path = py::str(os.attr("fspath")(obj));
    py::gil_scoped_release release;
    return decode_image_file(path);
  }
  py::object array = py::reinterpret_borrow<py::object>(obj);
  if (py::hasattr(obj, "convert") && py::hasattr(obj, "mode")) {
    // PIL.Image.Image: as transformers' load_image, ImageOps.exif_transpose (the EXIF orientation) and then
    // convert("RGB").
    py::object upright = py::module_::import("PIL.ImageOps").attr("exif_transpose")(obj);
    py::object rgb =
        upright.attr("mode").cast<std::string>() == "RGB" ? upright : upright.attr("convert")("RGB");
    array = py::module_::import("numpy").attr("asarray")(rgb);
  }
  if (py::isinstance<py::array>(array)) {
    auto a = py::array_t<uint8_t, py::array::c_style | py::array::forcecast>::ensure(array);
    if (!a || py::array(array).dtype().kind() != 'u' || py::array(array).itemsize() != 1)
      throw Error(ErrorKind::bad_input, "image array: expected dtype uint8");
    if (a.ndim() == 2) return image_from_pixels(a.data(), int(a.shape(1)), int(a.shape(0)), 1);
    if (a.ndim() == 3 && (a.shape(2) == 3 || a.shape(2) == 4))
      return image_from_pixels(a.data(), int(a.shape(1)), int(a.shape(0)), int(a.shape(2)));
    throw Error(ErrorKind::bad_input, "image array: expected shape HxW, HxWx3 or HxWx4");
  }
  throw Error(ErrorKind::usage, "image: expected a path, bytes, a PIL.Image.Image or a uint8 numpy array");
}

std::vector<Image> to_images(py::handle images, bool* single) {
  *single = !py::isinstance<py::list>(images) && !py::isinstance<py::tuple>(images);
  std::vector<Image> out;
  if (*single) {
    out.push_back(to_image(images));
  } else {
    for (py::handle h : images) out.push_back(to_image(h));
  }
  return out;
}

py::array_t<float> to_numpy(Tensor t) {
  py::array_t<float> a(t.shape);
  std::memcpy(a.mutable_data(), t.data.data(), sizeof(float) * t.data.size());
  return a;
}

class PyModel {
 public:
  PyModel(const std::string& model, const std::string& precision, int threads,
          std::optional<std::string> revision, bool preprocess_defaults, const std::string& pin_threads) {
    ModelOptions o;
    o.precision = parse_precision(precision);
    o.threads = threads;
    o.pin_threads = parse_thread_pinning(pin_threads);
    if (revision) o.revision = *revision;
    o.preprocess_defaults = preprocess_defaults;
    py::gil_scoped_release release;
    model_ = Model::load(model, o);
    pool_ = std::make_unique<ContextPool>(*model_);
  }

  std::vector<std::string> labels() const { return model_->info().labels; }
  py::object config() const { return py::module_::import("json").attr("loads")(model_->info().config_json); }

  py::array_t<float> logits(py::array_t<float, py::array::c_style | py::array::forcecast> pixels) {
    if (pixels.ndim() != 4 || pixels.shape(1) != 3)
      throw Error(ErrorKind::bad_input, "pixel_values: expected float32 [B, 3, H, W]");
    const int B = int(pixels.shape(0)), H = int(pixels.shape(2)), W = int(pixels.shape(3));
    py::array_t<float> out({B, model_->info().num_labels});
    const float* in = pixels.data();
    float* o = out.mutable_data();
    {
      py::gil_scoped_release release;
      auto lease = pool_->take();
      lease.context->logits(in, B, H, W, o);
    }
    return out;
  }

  py::array_t<float> preprocess(py::handle image) {
    Image img = to_image(image);
    Tensor t;
    {
      py::gil_scoped_release release;
      t = model_->preprocess(img);
    }
    return to_numpy(std::move(t));
  }

  py::object classify(py::handle images, int top_k) {
    bool single = false;
    std::vector<Image> imgs = to_images(images, &single);
    std::vector<std::vector<Prediction>> results;
    {
      py::gil_scoped_release release;
      auto lease = pool_->take();
      results = lease.context->classify(imgs, top_k);
    }
    py::list all;
    for (const auto& r : results) {
      py::list one;
      for (const auto& p : r) {
        py::dict d;
        d["label"] = p.label;
        d["score"] = p.probability;
        one.append(d);
      }
      all.append(one);
    }
    return single ? all[0] : py::object(all);
  }

  py::array_t<float> embed(py::handle images, const std::string& pool) {
    bool single = false;
    std::vector<Image> imgs = to_images(images, &single);
    const Pool p = parse_pool(pool);
    Tensor t;
    {
      py::gil_scoped_release release;
      auto lease = pool_->take();
      t = lease.context->embed(imgs, p);
    }
    return to_numpy(std::move(t));
  }

 private:
  std::unique_ptr<Model> model_;
  std::unique_ptr<ContextPool> pool_;
};

}  // namespace

PYBIND11_MODULE(perceiver, m) {
  m.doc() = "perceiver.cpp: Perceiver IO image classifiers (Hugging Face checkpoints) in C++";
  m.attr("__version__") = PERCEIVER_VERSION;
  static py::exception<Error> error(m, "Error", PyExc_Exception);
  g_error = error.ptr();
  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const Error& e) {
      PyErr_SetString(g_error, e.what());
    }
  });
  py::class_<PyModel>(m, "Model",
                      "A loaded Perceiver IO model. Thread-safe: calls from several Python threads run in "
                      "parallel (each takes its own context); the GIL is released while images are decoded "
                      "and while the network runs.")
      .def(py::init<const std::string&, const std::string&, int, std::optional<std::string>, bool,
                    const std::string&>(),
           py::arg("model"), py::arg("precision") = "fp32", py::arg("threads") = 0,
           py::arg("revision") = py::none(), py::arg("preprocess_defaults") = false,
           py::arg("pin_threads") = "auto",
           "Loads a model directory or hub repo id. precision: fp32 | bf16 | int8; threads: 0 = all cores; "
           "pin_threads: auto | on | off (each thread of a pass on a CPU of its own; auto: when the threads "
           "cover every CPU).")
      .def_property_readonly("labels", &PyModel::labels, "id2label in index order")
      .def_property_readonly("config", &PyModel::config, "config.json as a dict")
      .def("logits", &PyModel::logits, py::arg("pixel_values"),
           "float32 [B, 3, H, W] (read in place when C-contiguous float32) -> float32 [B, num_labels]. "
           "Releases the GIL.")
      .def("preprocess", &PyModel::preprocess, py::arg("image"),
           "PerceiverImageProcessor on one image -> float32 [1, 3, H, W]. Releases the GIL while decoding.")
      .def("classify", &PyModel::classify, py::arg("images"), py::arg("top_k") = 5,
           "One image -> [{'label', 'score'}, ...]; a list of images -> a list of such lists (the "
           "transformers image-classification pipeline's output). Releases the GIL.")
      .def("embed", &PyModel::embed, py::arg("images"), py::arg("pool") = "mean",
           "pool='mean' -> [N, D], 'latents' -> [N, L, D], 'decoder' -> [N, D]. Releases the GIL.");
}
