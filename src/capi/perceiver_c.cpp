// The C API (include/perceiver/perceiver_c.h) over the public C++ API: every exception becomes a status and
// a message in the caller's buffer.
#include "perceiver/perceiver_c.h"

#include <cstring>
#include <mutex>
#include <new>
#include <nlohmann/json.hpp>

#include "perceiver/perceiver.h"

struct perceiver_model {
  std::unique_ptr<perceiver::Model> model;
  std::mutex mutex;  // guards `context`, the model-level calls' shared context
  std::unique_ptr<perceiver::Context> context;
};

struct perceiver_context {
  std::unique_ptr<perceiver::Context> context;
};

namespace {

using namespace perceiver;

void set_error(char* err, size_t err_size, const std::string& message) {
  if (!err || err_size == 0) return;
  const size_t n = std::min(message.size(), err_size - 1);
  std::memcpy(err, message.data(), n);
  err[n] = '\0';
}

// Runs body; 0, or the error's exit code with its message in err.
template <class F>
int guarded(char* err, size_t err_size, F&& body) {
  try {
    body();
    set_error(err, err_size, "");
    return 0;
  } catch (const Error& e) {
    set_error(err, err_size, e.what());
    return e.exit_code();
  } catch (const std::bad_alloc&) {
    set_error(err, err_size, "out of memory");
    return 1;
  } catch (const std::exception& e) {
    set_error(err, err_size, e.what());
    return 1;
  } catch (...) {
    set_error(err, err_size, "unknown error");
    return 1;
  }
}

void require(bool ok, const char* what) {
  if (!ok) throw Error(ErrorKind::usage, what);
}

ModelOptions parse_options(const char* options_json) {
  ModelOptions o;
  if (!options_json || !*options_json) return o;
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(options_json);
  } catch (const nlohmann::json::exception& e) {
    throw Error(ErrorKind::usage, std::string("options_json: not JSON: ") + e.what());
  }
  if (!j.is_object()) throw Error(ErrorKind::usage, "options_json: expected a JSON object");
  for (const auto& [key, value] : j.items()) {
    auto bad = [&](const char* want) { throw Error(ErrorKind::usage, "options_json: '" + key + "' must be " + want); };
    if (key == "precision") {
      if (!value.is_string()) bad("a string");
      o.precision = parse_precision(value.get<std::string>());
    } else if (key == "threads") {
      if (!value.is_number_integer() || value.get<int64_t>() < 0 || value.get<int64_t>() > 1024)
        bad("an integer in 0..1024");
      o.threads = value.get<int>();
    } else if (key == "backend") {
      if (!value.is_string()) bad("a string");
      o.backend = value.get<std::string>();
    } else if (key == "revision") {
      if (!value.is_string()) bad("a string");
      o.revision = value.get<std::string>();
    } else if (key == "weights") {
      if (!value.is_string()) bad("a string");
      o.weights_file = value.get<std::string>();
    } else if (key == "mmap") {
      if (!value.is_boolean()) bad("true or false");
      o.mmap_weights = value.get<bool>();
    } else if (key == "pin_threads") {
      if (!value.is_string()) bad("a string");
      o.pin_threads = parse_thread_pinning(value.get<std::string>());
    } else if (key == "preprocess_defaults") {
      if (!value.is_boolean()) bad("true or false");
      o.preprocess_defaults = value.get<bool>();
    } else {
      throw Error(ErrorKind::usage, "options_json: unknown option '" + key + "'");
    }
  }
  return o;
}

// Runs fn on the model's shared context, under its mutex.
template <class F>
void with_model_context(perceiver_model* m, F&& fn) {
  require(m, "model is NULL");
  std::lock_guard<std::mutex> lock(m->mutex);
  if (!m->context) m->context = m->model->create_context();
  fn(*m->context);
}

void classify_image(Context& ctx, const Image& image, float* logits) {
  require(logits, "logits is NULL");
  const Tensor t = ctx.logits(std::vector<Image>{image}, 1);
  std::memcpy(logits, t.data.data(), sizeof(float) * t.data.size());
}

void forward_pixels(Context& ctx, const float* pixels, int batch, int height, int width, float* logits) {
  require(pixels && logits, "pixels or logits is NULL");
  require(batch > 0, "batch must be positive");
  ctx.logits(pixels, batch, height, width, logits);
}

}  // namespace

extern "C" {

const char* perceiver_version(void) { return PERCEIVER_VERSION; }

perceiver_model* perceiver_model_load(const char* dir_or_repo_id, const char* options_json, char* err,
                                      size_t err_size) {
  perceiver_model* result = nullptr;
  guarded(err, err_size, [&] {
    require(dir_or_repo_id, "dir_or_repo_id is NULL");
    auto m = std::make_unique<perceiver_model>();
    m->model = Model::load(dir_or_repo_id, parse_options(options_json));
    result = m.release();
  });
  return result;
}

void perceiver_model_free(perceiver_model* model) { delete model; }

int perceiver_model_num_labels(const perceiver_model* m) { return m ? m->model->info().num_labels : 0; }

const char* perceiver_model_label(const perceiver_model* m, int id) {
  if (!m || id < 0 || id >= m->model->info().num_labels) return nullptr;
  return m->model->info().labels[size_t(id)].c_str();
}

int perceiver_model_num_latents(const perceiver_model* m) { return m ? m->model->info().num_latents : 0; }
int perceiver_model_d_latents(const perceiver_model* m) { return m ? m->model->info().d_latents : 0; }

void perceiver_model_image_size(const perceiver_model* m, int* height, int* width) {
  if (height) *height = m ? m->model->info().image_height : 0;
  if (width) *width = m ? m->model->info().image_width : 0;
}

int perceiver_classify_file(perceiver_model* m, const char* path, float* logits, char* err, size_t err_size) {
  return guarded(err, err_size, [&] {
    require(path, "path is NULL");
    const Image image = decode_image_file(path);
    with_model_context(m, [&](Context& ctx) { classify_image(ctx, image, logits); });
  });
}

int perceiver_classify_encoded(perceiver_model* m, const void* data, size_t size, float* logits, char* err,
                               size_t err_size) {
  return guarded(err, err_size, [&] {
    require(data || size == 0, "data is NULL");
    const Image image = decode_image(data, size, "<encoded image>");
    with_model_context(m, [&](Context& ctx) { classify_image(ctx, image, logits); });
  });
}

int perceiver_classify_pixels(perceiver_model* m, const unsigned char* pixels, int width, int height,
                              int channels, size_t stride, float* logits, char* err, size_t err_size) {
  return guarded(err, err_size, [&] {
    require(pixels, "pixels is NULL");
    const Image image = image_from_pixels(pixels, width, height, channels, stride);
    with_model_context(m, [&](Context& ctx) { classify_image(ctx, image, logits); });
  });
}

int perceiver_forward(perceiver_model* m, const float* pixels, int batch, int height, int width, float* logits,
                      char* err, size_t err_size) {
  return guarded(err, err_size, [&] {
    with_model_context(m, [&](Context& ctx) { forward_pixels(ctx, pixels, batch, height, width, logits); });
  });
}

int perceiver_preprocess_file(const perceiver_model* m, const char* path, float* out, size_t out_floats,
                              int* height, int* width, char* err, size_t err_size) {
  return guarded(err, err_size, [&] {
    require(m && path && out, "model, path or out is NULL");
    const Image image = decode_image_file(path);
    int h = 0, w = 0;
    m->model->preprocessed_size(image, &h, &w);
    if (size_t(3) * h * w > out_floats)
      throw Error(ErrorKind::usage, std::string(path) + ": preprocessed image needs " +
                                        std::to_string(size_t(3) * h * w) + " floats, out holds " +
                                        std::to_string(out_floats));
    m->model->preprocess(image, out);
    if (height) *height = h;
    if (width) *width = w;
  });
}

int perceiver_top_k(const perceiver_model* m, const float* logits, int k, int* ids, float* probabilities) {
  if (!m || !logits || k <= 0) return 0;
  const auto top = top_k(logits, m->model->info().labels, k);
  for (size_t i = 0; i < top.size(); ++i) {
    if (ids) ids[i] = top[i].id;
    if (probabilities) probabilities[i] = top[i].probability;
  }
  return int(top.size());
}

int perceiver_embed_file(perceiver_model* m, const char* path, const char* pool, float* out, size_t out_floats,
                         char* err, size_t err_size) {
  return guarded(err, err_size, [&] {
    require(path && pool && out, "path, pool or out is NULL");
    const Pool p = parse_pool(pool);
    const Image image = decode_image_file(path);
    with_model_context(m, [&](Context& ctx) {
      const Tensor t = ctx.embed(std::vector<Image>{image}, p, 1);
      if (t.data.size() > out_floats)
        throw Error(ErrorKind::usage, std::string("embedding needs ") + std::to_string(t.data.size()) +
                                          " floats, out holds " + std::to_string(out_floats));
      std::memcpy(out, t.data.data(), sizeof(float) * t.data.size());
    });
  });
}

perceiver_context* perceiver_context_new(const perceiver_model* m, char* err, size_t err_size) {
  perceiver_context* result = nullptr;
  guarded(err, err_size, [&] {
    require(m, "model is NULL");
    auto c = std::make_unique<perceiver_context>();
    c->context = m->model->create_context();
    result = c.release();
  });
  return result;
}

void perceiver_context_free(perceiver_context* context) { delete context; }

int perceiver_classify_file_ctx(perceiver_context* c, const char* path, float* logits, char* err,
                                size_t err_size) {
  return guarded(err, err_size, [&] {
    require(c && path, "context or path is NULL");
    classify_image(*c->context, decode_image_file(path), logits);
  });
}

int perceiver_forward_ctx(perceiver_context* c, const float* pixels, int batch, int height, int width,
                          float* logits, char* err, size_t err_size) {
  return guarded(err, err_size, [&] {
    require(c, "context is NULL");
    forward_pixels(*c->context, pixels, batch, height, width, logits);
  });
}

}  // extern "C"
