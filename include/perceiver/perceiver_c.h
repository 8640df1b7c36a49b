/* perceiver.cpp C API: Perceiver IO image classifiers from C (and through it Go, Rust, C#, Swift).
 *
 *   char err[512];
 *   perceiver_model* m = perceiver_model_load("deepmind/vision-perceiver-conv", NULL, err, sizeof err);
 *   if (!m) { fprintf(stderr, "%s\n", err); return 1; }
 *   float* logits = malloc(sizeof(float) * perceiver_model_num_labels(m));
 *   if (perceiver_classify_file(m, "cat.jpg", logits, err, sizeof err) != 0) fprintf(stderr, "%s\n", err);
 *   perceiver_model_free(m);
 *
 * Status: every call that can fail returns 0 on success, else the CLI's exit code for the error's kind
 * (2 usage, 3 bad input, 4 model, 5 network, 6 io, 70 internal, 1 unexpected), and writes a one-line message
 * naming the file or field and the problem into `err` (NUL-terminated, truncated to err_size; err may be NULL
 * when err_size is 0). No C++ exception crosses this API.
 *
 * Threads: a perceiver_model is immutable once loaded. The perceiver_* calls on a model share one internal
 * context behind a mutex: safe from any thread, but serialised. For parallel inference create one
 * perceiver_context per thread (perceiver_context_new) and use the *_ctx calls; a context is used by one
 * thread at a time and must be freed before its model.
 */
#ifndef PERCEIVER_C_H
#define PERCEIVER_C_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct perceiver_model perceiver_model;
typedef struct perceiver_context perceiver_context;

/* "0.2.0" */
const char* perceiver_version(void);

/* A model directory or hub repo id. options_json: NULL for the defaults, or a JSON object with any of
 * "precision" ("fp32" | "bf16" | "int8"), "threads" (int, 0 = all cores), "backend" ("auto" | "fast" |
 * "reference"), "revision" (hub), "weights" (a weights file), "mmap" (bool), "preprocess_defaults" (bool),
 * "pin_threads" ("auto" | "on" | "off": ModelOptions::pin_threads).
 * Returns NULL on failure (err says why). */
perceiver_model* perceiver_model_load(const char* dir_or_repo_id, const char* options_json, char* err,
                                      size_t err_size);
void perceiver_model_free(perceiver_model* model);

int perceiver_model_num_labels(const perceiver_model* model);
/* id2label[id]; NULL when id is out of range. Valid as long as the model. */
const char* perceiver_model_label(const perceiver_model* model, int id);
int perceiver_model_num_latents(const perceiver_model* model);
int perceiver_model_d_latents(const perceiver_model* model);
/* The preprocessed image size (0 x 0 when the model has no preprocessor_config.json). */
void perceiver_model_image_size(const perceiver_model* model, int* height, int* width);

/* An encoded image file (JPEG / PNG / WebP) -> logits [num_labels]. */
int perceiver_classify_file(perceiver_model* model, const char* path, float* logits, char* err,
                            size_t err_size);
/* An encoded image in memory -> logits [num_labels]. */
int perceiver_classify_encoded(perceiver_model* model, const void* data, size_t size, float* logits, char* err,
                               size_t err_size);
/* 8-bit pixels (channels 1 gray, 3 RGB, 4 RGBA; rows `stride` bytes apart, 0 = width * channels) ->
 * logits [num_labels]. */
int perceiver_classify_pixels(perceiver_model* model, const unsigned char* pixels, int width, int height,
                              int channels, size_t stride, float* logits, char* err, size_t err_size);
/* Preprocessed pixels [batch, 3, height, width] -> logits [batch, num_labels]. */
int perceiver_forward(perceiver_model* model, const float* pixels, int batch, int height, int width,
                      float* logits, char* err, size_t err_size);
/* PerceiverImageProcessor on an image file: pixels [3, height, width] into `out` (out_floats at least
 * 3 * height * width, see perceiver_model_image_size), its size into *height, *width. */
int perceiver_preprocess_file(const perceiver_model* model, const char* path, float* out, size_t out_floats,
                              int* height, int* width, char* err, size_t err_size);

/* The k most probable classes of one row of logits (softmax): ids[k], probabilities[k] (either may be
 * NULL), most probable first. Returns the number written (min(k, num_labels)). */
int perceiver_top_k(const perceiver_model* model, const float* logits, int k, int* ids, float* probabilities);

/* Embeddings of an image file. pool: "mean" -> [d_latents], "latents" -> [num_latents * d_latents],
 * "decoder" -> [d_latents]; out_floats must be at least that. */
int perceiver_embed_file(perceiver_model* model, const char* path, const char* pool, float* out,
                         size_t out_floats, char* err, size_t err_size);

/* Per-thread contexts. */
perceiver_context* perceiver_context_new(const perceiver_model* model, char* err, size_t err_size);
void perceiver_context_free(perceiver_context* context);
int perceiver_classify_file_ctx(perceiver_context* context, const char* path, float* logits, char* err,
                                size_t err_size);
int perceiver_forward_ctx(perceiver_context* context, const float* pixels, int batch, int height, int width,
                          float* logits, char* err, size_t err_size);

#ifdef __cplusplus
}
#endif

#endif /* PERCEIVER_C_H */
