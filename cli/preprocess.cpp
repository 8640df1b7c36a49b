// perceiver preprocess: what the model would see for an image, as float32 [1, 3, H, W].
#include "common.h"
#include "formats/npy.h"
#include "image/image.h"

namespace perceiver::cli {
namespace {

struct PreprocessArgs {
  std::string model;
  std::string image;
  std::string out;
  bool preprocess_defaults = false;
  std::string revision = "main";
  int64_t max_image_pixels = DecodeOptions{}.max_pixels;
};

void run_preprocess(const PreprocessArgs& args) {
  ModelArgs model;
  model.model = args.model;
  model.revision = args.revision;
  DecodeOptions decode;
  decode.max_pixels = args.max_image_pixels;
  ImageU8 image = load_image(args.image, decode);
  PreprocessorConfig config = model_preprocessor(model.resolve_dir(), args.preprocess_defaults);
  int h, w;
  naming_file(args.image, [&] { preprocessed_size(config, image, &h, &w); });
  std::vector<float> pixels(size_t(3) * h * w);
  naming_file(args.image, [&] { preprocess(image, config, pixels.data()); });
  write_npy_f32(args.out, {1, 3, h, w}, pixels.data());
}

}  // namespace

void register_preprocess(CLI::App& app) {
  auto args = std::make_shared<PreprocessArgs>();
  CLI::App* cmd =
      app.add_subcommand("preprocess", "Decode and preprocess one image as the model would see it");
  cmd->add_option("-m,--model", args->model, "Model directory or hub repo id (its preprocessor_config.json)")
      ->required();
  cmd->add_option("image", args->image, "Image file (JPEG, PNG, WebP)")->required();
  cmd->add_option("-o,--out", args->out, "Output .npy, float32 [1, 3, H, W]")->required();
  cmd->add_option("--revision", args->revision, "Hub revision (default: main)");
  cmd->add_flag("--preprocess-defaults", args->preprocess_defaults,
                "Without preprocessor_config.json, use PerceiverImageProcessor's defaults");
  cmd->add_option(
         "--max-image-pixels", args->max_image_pixels,
         "Refuse images above twice this many pixels, as Pillow does (default 89478485; 0: no limit)")
      ->check(CLI::NonNegativeNumber);
  cmd->callback([args]() { run_preprocess(*args); });
}

}  // namespace perceiver::cli
