/* A C program built against an installed perceiver.cpp with nothing but pkg-config:
 *   cc classify.c $(pkg-config --cflags --libs --static perceiver) -o classify
 *   ./classify MODEL_DIR IMAGE      prints "<top-1 label>\t<probability>" */
#include <perceiver/perceiver_c.h>
#include <stdio.h>
#include <stdlib.h>

int main(int argc, char** argv) {
  if (argc != 3) {
    fprintf(stderr, "usage: %s MODEL_DIR IMAGE\n", argv[0]);
    return 2;
  }
  char err[512];
  perceiver_model* model = perceiver_model_load(argv[1], "{\"threads\": 2}", err, sizeof err);
  if (!model) {
    fprintf(stderr, "error: %s\n", err);
    return 4;
  }
  float* logits = malloc(sizeof(float) * (size_t)perceiver_model_num_labels(model));
  int status = perceiver_classify_file(model, argv[2], logits, err, sizeof err);
  if (status != 0) {
    fprintf(stderr, "error: %s\n", err);
  } else {
    int id = 0;
    float p = 0;
    perceiver_top_k(model, logits, 1, &id, &p);
    printf("%s\t%.6f\n", perceiver_model_label(model, id), p);
  }
  free(logits);
  perceiver_model_free(model);
  return status;
}
