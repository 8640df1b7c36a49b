// A C++ program using perceiver.cpp's public API: top-1 class and the mean-pooled embedding of images,
// decoded and run in parallel on two threads, one Context each.
//   embed MODEL_DIR_OR_HUB_ID IMAGE...
#include <perceiver/perceiver.h>

#include <cstdio>
#include <exception>
#include <thread>
#include <vector>

int main(int argc, char** argv) {
  if (argc < 3) {
    std::fprintf(stderr, "usage: %s MODEL IMAGE...\n", argv[0]);
    return 2;
  }
  try {
    perceiver::ModelOptions options;
    options.threads = 1;  // two worker threads, one OpenMP thread each
    const std::unique_ptr<perceiver::Model> model = perceiver::Model::load(argv[1], options);
    std::vector<perceiver::Image> images;
    for (int i = 2; i < argc; ++i) images.push_back(perceiver::decode_image_file(argv[i]));

    // Each thread classifies every other image on its own context (the model is shared, read-only).
    std::vector<std::vector<perceiver::Prediction>> top(images.size());
    std::exception_ptr failures[2];
    std::vector<std::thread> workers;
    for (int w = 0; w < 2; ++w) {
      workers.emplace_back([&, w] {
        try {
          const std::unique_ptr<perceiver::Context> context = model->create_context();
          for (size_t i = size_t(w); i < images.size(); i += 2) top[i] = context->classify({images[i]}, 1)[0];
        } catch (...) {
          failures[w] = std::current_exception();
        }
      });
    }
    for (auto& worker : workers) worker.join();
    for (const auto& failure : failures)
      if (failure) std::rethrow_exception(failure);

    const perceiver::Tensor features = model->create_context()->embed(images, perceiver::Pool::mean);
    for (size_t i = 0; i < images.size(); ++i)
      std::printf("%s\t%s\t%.6f\t[%lld]\n", argv[i + 2], top[i][0].label.c_str(), top[i][0].probability,
                  static_cast<long long>(features.shape[1]));
  } catch (const perceiver::Error& e) {
    std::fprintf(stderr, "%s\n", e.what());
    return e.exit_code();
  }
  return 0;
}
