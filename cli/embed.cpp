// perceiver embed: image features from a model: the encoder's latents, their mean, or the decoder's output
// before the final linear layer.
#include <cstdio>
#include <iostream>
#include <nlohmann/json.hpp>

#include "common.h"
#include "perceiver/io.h"
#include "perceiver/progress.h"

namespace perceiver::cli {
namespace {

struct EmbedArgs {
  ModelArgs model;
  std::vector<std::string> images;
  std::string out;
  std::string pool = "mean";
  int batch_size = 8;
  bool json = false, preprocess_defaults = false;
};

void run_embed(const EmbedArgs& args) {
  if (args.out.empty() && !args.json)
    throw Error(ErrorKind::usage, "embed: give --out FILE.npy and/or --json");
  if (args.images.empty()) throw Error(ErrorKind::usage, "embed: no images given");
  const std::vector<std::filesystem::path> files = expand_image_args(args.images);
  auto model = args.model.load(args.preprocess_defaults);
  const ModelInfo& info = model->info();
  const int64_t n = int64_t(files.size()), L = info.num_latents, D = info.d_latents;
  const Pool pool = parse_pool(args.pool);
  const std::vector<int64_t> shape =
      pool == Pool::latents ? std::vector<int64_t>{n, L, D} : std::vector<int64_t>{n, D};
  const size_t per_image = pool == Pool::latents ? size_t(L * D) : size_t(D);
  std::vector<float> features(size_t(n) * per_image);
  Progress bar("embedding", n, !args.model.quiet && n > 1);
  // Context::embed's pooling, a batch at a time (the images are decoded in parallel as they go).
  auto context = model->create_context();
  const unsigned what = pool == Pool::decoder ? Context::ImageBatch::decoder_features_output
                                              : Context::ImageBatch::latents_output;
  context->run_images(
      n, file_source(files), args.batch_size, what,
      [&](const Context::ImageBatch& b) {
        for (int t = 0; t < b.count; ++t) {
          float* dst = &features[size_t(b.first + t) * per_image];
          if (pool == Pool::decoder) {
            std::copy_n(b.decoder_features + size_t(t) * D, D, dst);
          } else if (pool == Pool::latents) {
            std::copy_n(b.latents + size_t(t) * L * D, L * D, dst);
          } else {  // the mean over the latents, in double
            const float* z = b.latents + size_t(t) * L * D;
            for (int64_t d = 0; d < D; ++d) {
              double acc = 0;
              for (int64_t l = 0; l < L; ++l) acc += z[l * D + d];
              dst[d] = static_cast<float>(acc / double(L));
            }
          }
        }
        bar.update(b.first + b.count);
      },
      [&](int64_t i) { return files[size_t(i)].string(); });
  bar.finish();

  if (!args.out.empty()) {
    const std::filesystem::path out = args.out;
    std::string list;
    for (const auto& f : files) list += f.string() + "\n";
    std::filesystem::path sidecar = out;
    sidecar.replace_extension(".txt");
    // Both files or neither: the sidecar first, removed again if the features cannot be written.
    write_file_atomic(sidecar, list);
    try {
      write_npy_f32(out, shape, features.data());
    } catch (...) {
      std::error_code ec;
      std::filesystem::remove(sidecar, ec);
      throw;
    }
  }
  if (args.json) {
    for (int64_t b = 0; b < n; ++b) {
      nlohmann::json j;
      j["file"] = files[b].string();
      j["pool"] = args.pool;
      j["shape"] = std::vector<int64_t>(shape.begin() + 1, shape.end());
      j["features"] =
          std::vector<float>(features.begin() + b * per_image, features.begin() + (b + 1) * per_image);
      std::cout << j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) << "\n";
    }
  } else if (!args.model.quiet) {
    std::string dims;
    for (size_t i = 0; i < shape.size(); ++i) dims += (i ? ", " : "") + std::to_string(shape[i]);
    std::fprintf(stderr, "wrote %s [%s] and %s\n", args.out.c_str(), dims.c_str(),
                 std::filesystem::path(args.out).replace_extension(".txt").string().c_str());
  }
}

}  // namespace

void register_embed(CLI::App& app) {
  auto args = std::make_shared<EmbedArgs>();
  CLI::App* cmd =
      app.add_subcommand("embed", "Write image features (encoder latents, their mean, or decoder output)");
  args->model.add_to(cmd);
  cmd->add_option("images", args->images,
                  "Image files (JPEG, PNG, WebP) or folders of images (sorted order)");
  cmd->add_option("-o,--out", args->out,
                  "float32 .npy to write; the list of files goes next to it with the extension .txt");
  cmd->add_option(
         "--pool", args->pool,
         "latents: [N, num_latents, d_latents]; mean: their mean [N, d_latents] (default); decoder: the "
         "decoder output before the final layer [N, d_latents]")
      ->check(CLI::IsMember({"mean", "latents", "decoder"}));
  cmd->add_option("-b,--batch-size", args->batch_size, "Images per forward pass (default 8)");
  cmd->add_flag("--json", args->json, "One JSON object per image on stdout: file, pool, shape, features");
  cmd->add_flag("--preprocess-defaults", args->preprocess_defaults,
                "Without preprocessor_config.json, use PerceiverImageProcessor's defaults");
  cmd->callback([args]() { run_embed(*args); });
}

}  // namespace perceiver::cli
