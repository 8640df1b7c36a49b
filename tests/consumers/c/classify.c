/* A C program using perceiver.cpp through its C API: classify images, print the top-k.
 *
 *   cc classify.c $(pkg-config --cflags --libs --static perceiver) -o classify
 *   ./classify MODEL_DIR_OR_HUB_ID IMAGE... [--top-k K]
 *
 * Prints "<file>\t<label>\t<probability>" per class, most probable first; for an image that fails, the error
 * line on stderr. Exits with the first failure's status (the perceiver CLI's exit codes), 0 if all worked. */
#include <perceiver/perceiver_c.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int main(int argc, char** argv) {
  if (argc < 3) {
    fprintf(stderr, "usage: %s MODEL IMAGE... [--top-k K]\n", argv[0]);
    return 2;
  }
  int top_k = 1;
  if (argc >= 5 && strcmp(argv[argc - 2], "--top-k") == 0) {
    top_k = atoi(argv[argc - 1]);
    argc -= 2;
  }
  char err[512];
  perceiver_model* model = perceiver_model_load(argv[1], "{\"threads\": 2}", err, sizeof err);
  if (model == NULL) {
    fprintf(stderr, "%s\n", err);
    return 4;
  }
  const int num_labels = perceiver_model_num_labels(model);
  float* logits = malloc(sizeof(float) * (size_t)num_labels);
  float* again = malloc(sizeof(float) * (size_t)num_labels);
  int* ids = malloc(sizeof(int) * (size_t)top_k);
  float* probabilities = malloc(sizeof(float) * (size_t)top_k);
  /* One context for this thread; the model-level calls (perceiver_classify_file) would share an internal one.
   */
  perceiver_context* context = perceiver_context_new(model, err, sizeof err);
  if (context == NULL) {
    fprintf(stderr, "%s\n", err);
    return 1;
  }
  int first_failure = 0;
  for (int i = 2; i < argc; ++i) {
    int status = perceiver_classify_file_ctx(context, argv[i], logits, err, sizeof err);
    if (status == 0) {
      /* The same through the model-level call on the file's bytes: identical logits. */
      FILE* file = fopen(argv[i], "rb");
      if (file != NULL) {
        static unsigned char bytes[1 << 22];
        const size_t size = fread(bytes, 1, sizeof bytes, file);
        fclose(file);
        status = perceiver_classify_encoded(model, bytes, size, again, err, sizeof err);
        if (status == 0 && memcmp(logits, again, sizeof(float) * (size_t)num_labels) != 0) {
          fprintf(stderr, "%s: logits differ between the context and the model-level call\n", argv[i]);
          status = 70;
        }
      }
    }
    if (status == 0) status = perceiver_top_k(model, logits, top_k, ids, probabilities, err, sizeof err);
    if (status != 0) {
      fprintf(stderr, "%s\n", err);
      if (first_failure == 0) first_failure = status;
      continue;
    }
    const int shown = top_k < num_labels ? top_k : num_labels;
    for (int k = 0; k < shown; ++k)
      printf("%s\t%s\t%.6f\n", argv[i], perceiver_model_label(model, ids[k]), probabilities[k]);
  }
  perceiver_context_free(context);
  perceiver_model_free(model);
  free(logits);
  free(again);
  free(ids);
  free(probabilities);
  return first_failure;
}
