// WEBP decoding (+ EXIF orientation) and preprocessing.
#include "fuzz_image.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  perceiver::fuzz::decode_and_preprocess(data, size);
  return 0;
}
