/* perceiver.cpp: the C API (for C programs and for bindings from Go, Rust, C#, Swift, ...).
 *
 *   char err[512];
 *   perceiver_model* model = perceiver_model_load("deepmind/vision-perceiver-conv", NULL, err, sizeof err);
 *   if (!model) { fprintf(stderr, "%s\n", err); return 1; }
 *   float* logits = malloc(sizeof(float) * perceiver_model_num_labels(model));
 *   if (perceiver_classify_file(model, "cat.jpg", logits, err, sizeof err) != 0) { fprintf(stderr, "%s\n",
 * err); } int id; float probability; perceiver_top_k(model, logits, 1, &id, &probability, err, sizeof err);
 *   printf("%s %.3f\n", perceiver_model_label(model, id), probability);   // "tabby, tabby cat" 0.8...
 *   free(logits); perceiver_model_free(model);
 *
 * Status: every call that can fail returns an int status, except perceiver_model_load and
 * perceiver_context_new, which return NULL on failure (perceiver_model_load_ex returns the status). 0 is
 * success; otherwise the value is the `perceiver` CLI's exit code for that failure (perceiver::ErrorKind):
 * PERCEIVER_ERR_USAGE 2 (bad argument or option), _BAD_INPUT 3 (an image or pixel buffer is missing, corrupt,
 * unsupported or of a size the model refuses), _MODEL 4 (model directory, config or weights), _NETWORK 5 (hub
 * download), _IO 6, _INTERNAL 70, and 1 for anything else (e.g. out of memory). On failure the caller's `err`
 * buffer (may be NULL when err_size is 0) receives one NUL-terminated line naming the file or argument and
 * the problem, e.g. "notes.txt: not a JPEG, PNG or WebP image"; it is truncated to err_size - 1 bytes. On
 * success `err` is set to "". No C++ exception crosses this interface.
 *
 * Shapes: arrays are float32, row-major. pixels [batch, 3, height, width] (normalised, as
 * perceiver_preprocess_* writes them); logits [batch, num_labels]; embeddings per image: mean / decoder
 * [d_latents], latents [num_latents, d_latents] (perceiver_model_embedding_size).
 *
 * Threads:
 *  - A perceiver_model is immutable once loaded. The queries (perceiver_model_num_labels, _label,
 *    _image_size, _embedding_size, _config_json, _info), perceiver_top_k and perceiver_preprocess_* may be
 *    called from any number of threads at once.
 *  - The model-level runs (perceiver_classify_*, perceiver_forward, perceiver_embed without _ctx) share one
 *    internal context behind a mutex: safe from any thread, but they run one at a time.
 *  - To run threads in parallel, give each thread its own perceiver_context (perceiver_context_new) and call
 *    the _ctx variants. A context is used by one thread at a time; it holds activation memory only (the
 *    weights are the model's) and must be freed before its model. Each run uses the model's "threads"
 *    OpenMP threads: with N contexts busy at once, load the model with about cores / N threads.
 *  - perceiver_image handles are immutable: any thread may read one at a time as many others.
 *  - perceiver_model_free / perceiver_context_free / perceiver_image_free must not race with other calls on
 *    the same handle.
 */
#ifndef PERCEIVER_PERCEIVER_C_H
#define PERCEIVER_PERCEIVER_C_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

enum {
  PERCEIVER_OK = 0,
  PERCEIVER_ERR_UNEXPECTED = 1,
  PERCEIVER_ERR_USAGE = 2,
  PERCEIVER_ERR_BAD_INPUT = 3,
  PERCEIVER_ERR_MODEL = 4,
  PERCEIVER_ERR_NETWORK = 5,
  PERCEIVER_ERR_IO = 6,
  PERCEIVER_ERR_INTERNAL = 70
};

/* What perceiver_embed returns per image. */
typedef enum {
  PERCEIVER_POOL_MEAN = 0,    /* mean of the encoder latents: [d_latents] */
  PERCEIVER_POOL_LATENTS = 1, /* all encoder latents: [num_latents, d_latents] */
  PERCEIVER_POOL_DECODER = 2  /* decoder output before its final linear: [d_latents] */
} perceiver_pool;

typedef struct perceiver_model perceiver_model;
typedef struct perceiver_context perceiver_context;
typedef struct perceiver_image perceiver_image;

/* The library's version, e.g. "0.2.0" (PERCEIVER_VERSION of perceiver.h). */
const char* perceiver_version(void);

/* ---- models -------------------------------------------------------------------------------------------- */

/* Loads a model directory (config.json, preprocessor_config.json, model.safetensors or pytorch_model.bin) or
 * a hub repo id ("org/name", downloaded into the Hugging Face cache once; HF_HOME, HF_HUB_OFFLINE, HF_TOKEN
 * as in huggingface_hub). options_json: NULL or "" for defaults, else a JSON object with any of
 *   "precision": "fp32" | "bf16" | "int8"      "threads": int (<= 0: all cores)
 *   "backend": "auto" | "fast" | "reference"   "revision": "main" (hub ids)
 *   "weights_file": path                       "mmap_weights": bool (true)
 *   "images_per_pass": int (0: automatic)      "preprocess_defaults": bool (false)
 *   "hub_progress": bool (false)               "max_image_pixels": int (Pillow's limit, 89478485)
 * An unknown key or a value of the wrong type is PERCEIVER_ERR_USAGE. Returns NULL on failure. */
perceiver_model* perceiver_model_load(const char* dir_or_repo_id, const char* options_json, char* err,
                                      size_t err_size);
/* The same, returning the status; *model is set to the model or NULL. */
int perceiver_model_load_ex(const char* dir_or_repo_id, const char* options_json, perceiver_model** model,
                            char* err, size_t err_size);
void perceiver_model_free(perceiver_model* model); /* NULL is ignored */

int perceiver_model_num_labels(const perceiver_model* model);
/* id2label[id], valid as long as the model; NULL if id is out of range. */
const char* perceiver_model_label(const perceiver_model* model, int id);
/* The text of config.json, valid as long as the model. */
const char* perceiver_model_config_json(const perceiver_model* model);
/* The size of the images the preprocessor outputs (for models that resize, every image's); 0 / 0 and
 * PERCEIVER_ERR_MODEL when the model has no preprocessor. */
int perceiver_model_image_size(const perceiver_model* model, int* height, int* width);
/* num_latents, d_latents (either pointer may be NULL). */
void perceiver_model_latent_shape(const perceiver_model* model, int* num_latents, int* d_latents);
/* Floats per image that perceiver_embed writes for `pool`; 0 for an unknown pool. */
size_t perceiver_model_embedding_size(const perceiver_model* model, perceiver_pool pool);

/* ---- contexts (one per thread for parallel runs) ----------------------------------------------------- */

perceiver_context* perceiver_context_new(const perceiver_model* model, char* err, size_t err_size);
void perceiver_context_free(perceiver_context* context); /* NULL is ignored */

/* ---- images -------------------------------------------------------------------------------------------- */

/* Decodes a JPEG / PNG / WebP (by content, not name) as Hugging Face's load_image does (EXIF orientation,
 * convert("RGB")). The *_ex forms take Pillow's pixel limit (<= 0: the default 89478485). */
int perceiver_image_load_file(const char* path, perceiver_image** image, char* err, size_t err_size);
/* `name` (may be NULL) stands for the data in error messages. */
int perceiver_image_load_encoded(const void* data, size_t size, const char* name, perceiver_image** image,
                                 char* err, size_t err_size);
/* Raw 8-bit pixels: channels 1 (gray), 3 (RGB) or 4 (RGBA, alpha dropped), rows `stride` bytes apart (0:
 * width * channels). The pixels are copied. */
int perceiver_image_from_pixels(const uint8_t* pixels, int width, int height, int channels, size_t stride,
                                perceiver_image** image, char* err, size_t err_size);
void perceiver_image_free(perceiver_image* image); /* NULL is ignored */
int perceiver_image_width(const perceiver_image* image);
int perceiver_image_height(const perceiver_image* image);
/* The RGB pixels [height, width, 3], valid as long as the image. */
const uint8_t* perceiver_image_rgb(const perceiver_image* image);

/* PerceiverImageProcessor on one image: writes its output size to *height / *width and the normalised pixels
 * [3, height, width] to `pixels`, which holds `capacity` floats (PERCEIVER_ERR_USAGE naming the size needed
 * when it is too small; pixels may be NULL with capacity 0 to ask for the size only). */
int perceiver_preprocess(const perceiver_model* model, const perceiver_image* image, float* pixels,
                         size_t capacity, int* height, int* width, char* err, size_t err_size);

/* ---- running the model --------------------------------------------------------------------------------- */

/* Decode + preprocess + forward of one image file / encoded image: logits [num_labels]. Errors name the file
 * (or "<image bytes>"). */
int perceiver_classify_file(perceiver_model* model, const char* path, float* logits, char* err,
                            size_t err_size);
int perceiver_classify_encoded(perceiver_model* model, const void* data, size_t size, float* logits,
                               char* err, size_t err_size);
/* `count` decoded images, preprocessed and run `batch_size` at a time (<= 0: 8): logits [count, num_labels].
 */
int perceiver_classify_images(perceiver_model* model, const perceiver_image* const* images, int count,
                              int batch_size, float* logits, char* err, size_t err_size);
/* The network on preprocessed pixels [batch, 3, height, width] -> logits [batch, num_labels]. */
int perceiver_forward(perceiver_model* model, const float* pixels, int batch, int height, int width,
                      float* logits, char* err, size_t err_size);
/* Embeddings of `count` images: [count, perceiver_model_embedding_size(model, pool)]. */
int perceiver_embed(perceiver_model* model, const perceiver_image* const* images, int count,
                    perceiver_pool pool, float* out, char* err, size_t err_size);

/* The same on a caller's context (parallel across contexts). */
int perceiver_classify_file_ctx(perceiver_context* context, const char* path, float* logits, char* err,
                                size_t err_size);
int perceiver_classify_encoded_ctx(perceiver_context* context, const void* data, size_t size, float* logits,
                                   char* err, size_t err_size);
int perceiver_classify_images_ctx(perceiver_context* context, const perceiver_image* const* images, int count,
                                  int batch_size, float* logits, char* err, size_t err_size);
int perceiver_forward_ctx(perceiver_context* context, const float* pixels, int batch, int height, int width,
                          float* logits, char* err, size_t err_size);
int perceiver_embed_ctx(perceiver_context* context, const perceiver_image* const* images, int count,
                        perceiver_pool pool, float* out, char* err, size_t err_size);

/* Softmax of one row of logits [num_labels] and its k most probable classes, most probable first (ties:
 * lower id first): ids[k] and probabilities[k] (either may be NULL). k is clamped to num_labels; returns
 * PERCEIVER_ERR_USAGE for k < 1. */
int perceiver_top_k(const perceiver_model* model, const float* logits, int k, int* ids, float* probabilities,
                    char* err, size_t err_size);

#ifdef __cplusplus
}
#endif

#endif /* PERCEIVER_PERCEIVER_C_H */
