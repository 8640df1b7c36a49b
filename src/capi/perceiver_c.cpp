// The C API (include/perceiver/perceiver_c.h) on the public C++ API: every entry point catches everything and
// turns it into a status + one line in the caller's buffer.
#include "perceiver/perceiver_c.h"

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <mutex>
#include <new>
#include <nlohmann/json.hpp>
#include <string>

#include "perceiver/perceiver.h"

struct perceiver_model {
  std::unique_ptr<perceiver::Model> model;
  perceiver::DecodeOptions decode;
  std::mutex mutex;                             // guards `context`
  std::unique_ptr<perceiver::Context> context;  // the model-level calls' context, made on first use
};

struct perceiver_context {
  const perceiver_model* owner = nullptr;
  std::unique_ptr<perceiver::Context> context;
};

struct perceiver_image {
  perceiver::Image image;
};

namespace {

using perceiver::Error;
using perceiver::ErrorKind;

void write_message(char* err, size_t err_size, const char* message) {
  if (err == nullptr || err_size == 0) return;
  std::snprintf(err, err_size, "%s", message);
}

// Runs `body`, mapping every exception to a status and a message.
template <typename F>
int guarded(char* err, size_t err_size, F&& body) {
  write_message(err, err_size, "");
  try {
    body();
    return PERCEIVER_OK;
  } catch (const Error& e) {
    write_message(err, err_size, e.what());
    return e.exit_code();
  } catch (const std::bad_alloc&) {
    write_message(err, err_size, "out of memory");
    return PERCEIVER_ERR_UNEXPECTED;
  } catch (const std::exception& e) {
    write_message(err, err_size, e.what());
    return PERCEIVER_ERR_UNEXPECTED;
  } catch (...) {
    write_message(err, err_size, "unknown error");
    return PERCEIVER_ERR_UNEXPECTED;
  }
}

void require(bool condition, const char* message) {
  if (!condition) throw Error(ErrorKind::usage, message);
}

// Options JSON -> ModelOptions (+ the decoder's pixel limit); unknown keys and wrong types are usage errors.
void parse_options(const char* options_json, perceiver::ModelOptions& options,
                   perceiver::DecodeOptions& decode) {
  if (options_json == nullptr || *options_json == '\0') return;
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(options_json);
  } catch (const nlohmann::json::exception& e) {
    throw Error(ErrorKind::usage, std::string("options_json: not valid JSON (") + e.what() + ")");
  }
  if (!j.is_object()) throw Error(ErrorKind::usage, "options_json: must be a JSON object");
  for (const auto& [key, value] : j.items()) {
    auto bad = [&key = key](const char* expected) {
      return Error(ErrorKind::usage, "options_json: \"" + key + "\" must be " + expected);
    };
    auto as_string = [&]() {
      if (!value.is_string()) throw bad("a string");
      return value.get<std::string>();
    };
    auto as_int = [&]() {
      if (!value.is_number_integer()) throw bad("an integer");
      return value.get<int64_t>();
    };
    auto as_bool = [&]() {
      if (!value.is_boolean()) throw bad("true or false");
      return value.get<bool>();
    };
    if (key == "precision") {
      options.precision = perceiver::parse_precision(as_string());
    } else if (key == "threads") {
      options.threads = int(std::clamp<int64_t>(as_int(), -1, 4096));
    } else if (key == "backend") {
      options.backend = as_string();
    } else if (key == "revision") {
      options.revision = as_string();
    } else if (key == "weights_file") {
      options.weights_file = as_string();
    } else if (key == "mmap_weights") {
      options.mmap_weights = as_bool();
    } else if (key == "images_per_pass") {
      options.images_per_pass = int(std::clamp<int64_t>(as_int(), 0, 1 << 20));
    } else if (key == "preprocess_defaults") {
      options.preprocess_defaults = as_bool();
    } else if (key == "hub_progress") {
      options.hub_progress = as_bool();
    } else if (key == "max_image_pixels") {
      const int64_t limit = as_int();
      decode.max_pixels = limit > 0 ? limit : perceiver::DecodeOptions{}.max_pixels;
    } else {
      throw Error(ErrorKind::usage, "options_json: unknown option \"" + key + "\"");
    }
  }
}

perceiver::Pool to_pool(perceiver_pool pool) {
  switch (pool) {
    case PERCEIVER_POOL_MEAN:
      return perceiver::Pool::mean;
    case PERCEIVER_POOL_LATENTS:
      return perceiver::Pool::latents;
    case PERCEIVER_POOL_DECODER:
      return perceiver::Pool::decoder;
  }
  throw Error(ErrorKind::usage, "pool: not PERCEIVER_POOL_MEAN, _LATENTS or _DECODER");
}

size_t embedding_size(const perceiver::ModelInfo& info, perceiver::Pool pool) {
  const size_t L = size_t(info.num_latents), D = size_t(info.d_latents);
  return pool == perceiver::Pool::latents ? L * D : D;
}

// Logits [count, num_labels] of the images `source` gives, `name(i)` naming image i in errors.
void run_logits(perceiver::Context& context, int64_t count,
                const std::function<perceiver::Image(int64_t)>& source,
                const std::function<std::string(int64_t)>& name, int batch_size, float* logits) {
  const size_t labels = size_t(context.model().info().num_labels);
  context.run_images(
      count, source, batch_size > 0 ? batch_size : 8, perceiver::Context::ImageBatch::logits_output,
      [&](const perceiver::Context::ImageBatch& b) {
        std::memcpy(logits + size_t(b.first) * labels, b.logits, sizeof(float) * size_t(b.count) * labels);
      },
      name);
}

void classify_file(perceiver::Context& context, const perceiver::DecodeOptions& decode, const char* path,
                   float* logits) {
  require(path != nullptr, "path: NULL");
  require(logits != nullptr, "logits: NULL");
  const std::string file = path;
  run_logits(
      context, 1, [&](int64_t) { return perceiver::decode_image_file(file, decode); },
      [&](int64_t) { return file; }, 1, logits);
}

void classify_encoded(perceiver::Context& context, const perceiver::DecodeOptions& decode, const void* data,
                      size_t size, float* logits) {
  require(data != nullptr || size == 0, "data: NULL");
  require(logits != nullptr, "logits: NULL");
  run_logits(
      context, 1, [&](int64_t) { return perceiver::decode_image(data, size, "<image bytes>", decode); },
      [](int64_t) { return std::string("<image bytes>"); }, 1, logits);
}

void check_images(const perceiver_image* const* images, int count) {
  require(count >= 0, "count: negative");
  require(images != nullptr || count == 0, "images: NULL");
  for (int i = 0; i < count; ++i)
    if (images[i] == nullptr) throw Error(ErrorKind::usage, "images[" + std::to_string(i) + "]: NULL");
}

std::string image_name(int64_t i) { return "images[" + std::to_string(i) + "]"; }

void classify_images(perceiver::Context& context, const perceiver_image* const* images, int count,
                     int batch_size, float* logits) {
  check_images(images, count);
  require(logits != nullptr || count == 0, "logits: NULL");
  run_logits(
      context, count, [&](int64_t i) { return images[i]->image; }, image_name, batch_size, logits);
}

void forward(perceiver::Context& context, const float* pixels, int batch, int height, int width,
             float* logits) {
  require(pixels != nullptr, "pixels: NULL");
  require(logits != nullptr, "logits: NULL");
  require(batch >= 1, "batch: must be at least 1");
  require(height >= 1 && width >= 1, "height, width: must be positive");
  context.model().check_input_size(height, width);
  context.logits(pixels, batch, height, width, logits);
}

void embed(perceiver::Context& context, const perceiver_image* const* images, int count, perceiver_pool pool,
           float* out) {
  check_images(images, count);
  const perceiver::Pool p = to_pool(pool);
  require(out != nullptr || count == 0, "out: NULL");
  if (count == 0) return;
  const perceiver::ModelInfo& info = context.model().info();
  std::vector<perceiver::Image> batch;
  batch.reserve(size_t(count));
  for (int i = 0; i < count; ++i) batch.push_back(images[i]->image);
  const perceiver::Tensor t = context.embed(batch, p);
  std::memcpy(out, t.data.data(), sizeof(float) * embedding_size(info, p) * size_t(count));
}

// Runs `body` on the model's internal context under its mutex.
template <typename F>
int on_model_context(perceiver_model* model, char* err, size_t err_size, F&& body) {
  return guarded(err, err_size, [&] {
    require(model != nullptr, "model: NULL");
    std::lock_guard<std::mutex> lock(model->mutex);
    if (!model->context) model->context = model->model->create_context();
    body(*model->context, model->decode);
  });
}

template <typename F>
int on_context(perceiver_context* context, char* err, size_t err_size, F&& body) {
  return guarded(err, err_size, [&] {
    require(context != nullptr, "context: NULL");
    body(*context->context, context->owner->decode);
  });
}

int make_image(perceiver::Image&& decoded, perceiver_image** image) {
  *image = new perceiver_image{std::move(decoded)};
  return PERCEIVER_OK;
}

}  // namespace

extern "C" {

const char* perceiver_version(void) { return PERCEIVER_VERSION; }

int perceiver_model_load_ex(const char* dir_or_repo_id, const char* options_json, perceiver_model** model,
                            char* err, size_t err_size) {
  if (model != nullptr) *model = nullptr;
  return guarded(err, err_size, [&] {
    require(model != nullptr, "model: NULL");
    require(dir_or_repo_id != nullptr && *dir_or_repo_id != '\0', "dir_or_repo_id: empty");
    perceiver::ModelOptions options;
    perceiver::DecodeOptions decode;
    parse_options(options_json, options, decode);
    auto loaded = std::make_unique<perceiver_model>();
    loaded->model = perceiver::Model::load(dir_or_repo_id, options);
    loaded->decode = decode;
    *model = loaded.release();
  });
}

perceiver_model* perceiver_model_load(const char* dir_or_repo_id, const char* options_json, char* err,
                                      size_t err_size) {
  perceiver_model* model = nullptr;
  perceiver_model_load_ex(dir_or_repo_id, options_json, &model, err, err_size);
  return model;
}

void perceiver_model_free(perceiver_model* model) { delete model; }

int perceiver_model_num_labels(const perceiver_model* model) {
  return model ? model->model->info().num_labels : 0;
}

const char* perceiver_model_label(const perceiver_model* model, int id) {
  if (model == nullptr) return nullptr;
  const auto& labels = model->model->info().labels;
  if (id < 0 || size_t(id) >= labels.size()) return nullptr;
  return labels[size_t(id)].c_str();
}

const char* perceiver_model_config_json(const perceiver_model* model) {
  return model ? model->model->info().config_json.c_str() : nullptr;
}

int perceiver_model_image_size(const perceiver_model* model, int* height, int* width) {
  if (height) *height = 0;
  if (width) *width = 0;
  if (model == nullptr) return PERCEIVER_ERR_USAGE;
  const perceiver::ModelInfo& info = model->model->info();
  if (!info.has_preprocessor) return PERCEIVER_ERR_MODEL;
  if (height) *height = info.image_height;
  if (width) *width = info.image_width;
  return PERCEIVER_OK;
}

void perceiver_model_latent_shape(const perceiver_model* model, int* num_latents, int* d_latents) {
  if (num_latents) *num_latents = model ? model->model->info().num_latents : 0;
  if (d_latents) *d_latents = model ? model->model->info().d_latents : 0;
}

size_t perceiver_model_embedding_size(const perceiver_model* model, perceiver_pool pool) {
  if (model == nullptr) return 0;
  try {
    return embedding_size(model->model->info(), to_pool(pool));
  } catch (const Error&) {
    return 0;
  }
}

perceiver_context* perceiver_context_new(const perceiver_model* model, char* err, size_t err_size) {
  perceiver_context* context = nullptr;
  guarded(err, err_size, [&] {
    require(model != nullptr, "model: NULL");
    auto made = std::make_unique<perceiver_context>();
    made->owner = model;
    made->context = model->model->create_context();
    context = made.release();
  });
  return context;
}

void perceiver_context_free(perceiver_context* context) { delete context; }

int perceiver_image_load_file(const char* path, perceiver_image** image, char* err, size_t err_size) {
  if (image != nullptr) *image = nullptr;
  return guarded(err, err_size, [&] {
    require(image != nullptr, "image: NULL");
    require(path != nullptr, "path: NULL");
    make_image(perceiver::decode_image_file(path), image);
  });
}

int perceiver_image_load_encoded(const void* data, size_t size, const char* name, perceiver_image** image,
                                 char* err, size_t err_size) {
  if (image != nullptr) *image = nullptr;
  return guarded(err, err_size, [&] {
    require(image != nullptr, "image: NULL");
    require(data != nullptr || size == 0, "data: NULL");
    make_image(perceiver::decode_image(data, size, name ? name : "<image bytes>"), image);
  });
}

int perceiver_image_from_pixels(const uint8_t* pixels, int width, int height, int channels, size_t stride,
                                perceiver_image** image, char* err, size_t err_size) {
  if (image != nullptr) *image = nullptr;
  return guarded(err, err_size, [&] {
    require(image != nullptr, "image: NULL");
    require(pixels != nullptr, "pixels: NULL");
    make_image(perceiver::image_from_pixels(pixels, width, height, channels, stride), image);
  });
}

void perceiver_image_free(perceiver_image* image) { delete image; }
int perceiver_image_width(const perceiver_image* image) { return image ? image->image.width : 0; }
int perceiver_image_height(const perceiver_image* image) { return image ? image->image.height : 0; }
const uint8_t* perceiver_image_rgb(const perceiver_image* image) {
  return image ? image->image.rgb.data() : nullptr;
}

int perceiver_preprocess(const perceiver_model* model, const perceiver_image* image, float* pixels,
                         size_t capacity, int* height, int* width, char* err, size_t err_size) {
  if (height) *height = 0;
  if (width) *width = 0;
  return guarded(err, err_size, [&] {
    require(model != nullptr, "model: NULL");
    require(image != nullptr, "image: NULL");
    int h = 0, w = 0;
    model->model->preprocessed_size(image->image, &h, &w);
    if (height) *height = h;
    if (width) *width = w;
    const size_t needed = size_t(3) * size_t(h) * size_t(w);
    if (pixels == nullptr && capacity == 0) return;
    if (pixels == nullptr || capacity < needed)
      throw Error(ErrorKind::usage, "pixels: needs " + std::to_string(needed) + " floats [3, " +
                                        std::to_string(h) + ", " + std::to_string(w) + "], got " +
                                        std::to_string(capacity));
    model->model->preprocess(image->image, pixels);
  });
}

int perceiver_classify_file(perceiver_model* model, const char* path, float* logits, char* err,
                            size_t err_size) {
  return on_model_context(
      model, err, err_size,
      [&](perceiver::Context& c, const perceiver::DecodeOptions& d) { classify_file(c, d, path, logits); });
}

int perceiver_classify_encoded(perceiver_model* model, const void* data, size_t size, float* logits,
                               char* err, size_t err_size) {
  return on_model_context(model, err, err_size,
                          [&](perceiver::Context& c, const perceiver::DecodeOptions& d) {
                            classify_encoded(c, d, data, size, logits);
                          });
}

int perceiver_classify_images(perceiver_model* model, const perceiver_image* const* images, int count,
                              int batch_size, float* logits, char* err, size_t err_size) {
  return on_model_context(model, err, err_size, [&](perceiver::Context& c, const perceiver::DecodeOptions&) {
    classify_images(c, images, count, batch_size, logits);
  });
}

int perceiver_forward(perceiver_model* model, const float* pixels, int batch, int height, int width,
                      float* logits, char* err, size_t err_size) {
  return on_model_context(model, err, err_size, [&](perceiver::Context& c, const perceiver::DecodeOptions&) {
    forward(c, pixels, batch, height, width, logits);
  });
}

int perceiver_embed(perceiver_model* model, const perceiver_image* const* images, int count,
                    perceiver_pool pool, float* out, char* err, size_t err_size) {
  return on_model_context(model, err, err_size, [&](perceiver::Context& c, const perceiver::DecodeOptions&) {
    embed(c, images, count, pool, out);
  });
}

int perceiver_classify_file_ctx(perceiver_context* context, const char* path, float* logits, char* err,
                                size_t err_size) {
  return on_context(context, err, err_size, [&](perceiver::Context& c, const perceiver::DecodeOptions& d) {
    classify_file(c, d, path, logits);
  });
}

int perceiver_classify_encoded_ctx(perceiver_context* context, const void* data, size_t size, float* logits,
                                   char* err, size_t err_size) {
  return on_context(context, err, err_size, [&](perceiver::Context& c, const perceiver::DecodeOptions& d) {
    classify_encoded(c, d, data, size, logits);
  });
}

int perceiver_classify_images_ctx(perceiver_context* context, const perceiver_image* const* images, int count,
                                  int batch_size, float* logits, char* err, size_t err_size) {
  return on_context(context, err, err_size, [&](perceiver::Context& c, const perceiver::DecodeOptions&) {
    classify_images(c, images, count, batch_size, logits);
  });
}

int perceiver_forward_ctx(perceiver_context* context, const float* pixels, int batch, int height, int width,
                          float* logits, char* err, size_t err_size) {
  return on_context(context, err, err_size, [&](perceiver::Context& c, const perceiver::DecodeOptions&) {
    forward(c, pixels, batch, height, width, logits);
  });
}

int perceiver_embed_ctx(perceiver_context* context, const perceiver_image* const* images, int count,
                        perceiver_pool pool, float* out, char* err, size_t err_size) {
  return on_context(context, err, err_size, [&](perceiver::Context& c, const perceiver::DecodeOptions&) {
    embed(c, images, count, pool, out);
  });
}

int perceiver_top_k(const perceiver_model* model, const float* logits, int k, int* ids, float* probabilities,
                    char* err, size_t err_size) {
  return guarded(err, err_size, [&] {
    require(model != nullptr, "model: NULL");
    require(logits != nullptr, "logits: NULL");
    require(k >= 1, "k: must be at least 1");
    const auto predictions = perceiver::top_k(logits, model->model->info().labels, k);
    for (size_t i = 0; i < predictions.size(); ++i) {
      if (ids) ids[i] = predictions[i].id;
      if (probabilities) probabilities[i] = predictions[i].probability;
    }
  });
}

}  // extern "C"
