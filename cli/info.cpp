// perceiver info: what a model directory holds.
#include <iostream>

#include "common.h"

namespace perceiver::cli {

void register_info(CLI::App& app) {
  auto args = std::make_shared<ModelArgs>();
  CLI::App* cmd = app.add_subcommand("info", "Load a model and print its architecture, size and labels");
  args->add_to(cmd);
  cmd->callback([args]() {
    auto model = args->load();
    const auto& info = model->info();
    std::cout << "directory:    " << info.model_dir.string() << "\n"
              << "architecture: " << info.architecture << "\n"
              << "backend:      " << info.backend << "\n"
              << "weights:      "
              << (info.weights_in_place ? "read in place from the memory-mapped file" : "copied into memory")
              << "\n"
              << "parameters:   " << info.num_parameters << "\n"
              << "latents:      " << info.num_latents << " x " << info.d_latents << "\n"
              << "labels:       " << info.num_labels << " (" << info.labels.front() << " ... "
              << info.labels.back() << ")\n";
    if (info.fixed_image_height)
      std::cout << "input size:   " << info.fixed_image_height << "x" << info.fixed_image_width << " only\n";
  });
}

}  // namespace perceiver::cli
