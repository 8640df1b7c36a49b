// classify_cpp MODEL_DIR IMAGE: the top-1 label of an image with the C++ API of an installed perceiver.cpp.
#include <cstdio>
#include <perceiver/perceiver.h>

int main(int argc, char** argv) {
  if (argc != 3) return 2;
  try {
    auto model = perceiver::Model::load(argv[1]);
    auto context = model->create_context();
    const auto top = context->classify({perceiver::decode_image_file(argv[2])}, 1)[0];
    std::printf("%s\t%.6f\n", top[0].label.c_str(), top[0].probability);
  } catch (const perceiver::Error& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return e.exit_code();
  }
  return 0;
}
