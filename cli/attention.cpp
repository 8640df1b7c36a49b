// perceiver attention: every attention probability of one forward pass (HF's output_attentions) as .npy files
// with a manifest, and a picture of where the classifier looks.
#include "perceiver/attention.h"

#include <cmath>
#include <cstdio>

#include "common.h"
#include "perceiver/io.h"

namespace perceiver::cli {
namespace {

struct AttentionArgs {
  ModelArgs model;
  std::string image, pixels, out, overlay_out, latents, colour_map = "viridis";
  bool rollout = false, preprocess_defaults = false;
  double opacity = OverlayOptions{}.opacity;
};

void run_attention(const AttentionArgs& args) {
  if (args.image.empty() == args.pixels.empty())
    throw Error(ErrorKind::usage, "attention: give either an IMAGE or --pixels IN.npy");
  if (args.out.empty() && args.overlay_out.empty())
    throw Error(ErrorKind::usage, "attention: give --out DIR and/or --overlay-out PNG");
  if (!args.overlay_out.empty() && args.image.empty())
    throw Error(ErrorKind::usage,
                "attention: --overlay-out needs an IMAGE (--pixels are already preprocessed)");
  if (!args.latents.empty() && args.overlay_out.empty())
    throw Error(ErrorKind::usage,
                "attention: --latents chooses the tiles of --overlay-out; give --overlay-out PNG");
  if (!(args.opacity >= 0 && args.opacity <= 1))
    throw Error(ErrorKind::usage, "attention: --opacity must be in 0..1");
  OverlayOptions overlay;
  overlay.colour_map = parse_colour_map(args.colour_map);
  overlay.opacity = args.opacity;

  // Read the input before the (slower) model load, so bad input fails fast.
  Image image;
  NpyArray pixel_array;
  if (!args.image.empty()) {
    image = decode_image_file(args.image);
  } else {
    pixel_array = read_npy(args.pixels);
    if (pixel_array.shape.size() != 4 || pixel_array.shape[1] != 3 || pixel_array.shape[0] < 1)
      throw Error(ErrorKind::bad_input, args.pixels + ": expected float32 pixels [B, 3, H, W]");
    if (pixel_array.dtype != "f4")
      throw Error(ErrorKind::bad_input,
                  args.pixels + ": expected dtype float32, found '" + pixel_array.dtype + "'");
  }

  auto model = args.model.load(args.preprocess_defaults);
  std::vector<int> latents;
  if (!args.latents.empty()) latents = parse_latent_list(args.latents, model->info().num_latents);
  auto context = model->create_context();

  AttentionMaps maps;
  if (!args.image.empty()) {
    maps = naming_file(args.image, [&] { return attention_maps(*context, image); });
  } else {
    const int B = int(pixel_array.shape[0]), H = int(pixel_array.shape[2]), W = int(pixel_array.shape[3]);
    std::vector<float> pixels = pixel_array.to_f32();
    for (float v : pixels)
      if (!std::isfinite(v))
        throw Error(ErrorKind::bad_input, args.pixels + ": holds NaN or infinite values");
    maps = naming_file(args.pixels, [&] { return attention_maps(*context, pixels.data(), B, H, W); });
  }

  // The picture is made in memory first; then the files: the PNG, then the folder. If the folder cannot be
  // written, a PNG this run created is removed again.
  Image picture;
  if (!args.overlay_out.empty())
    picture = latents.empty()
                  ? render_overlay(image, maps, relevance_map(maps, {.rollout = args.rollout}), overlay)
                  : render_latent_grid(image, maps, latents, overlay);
  std::error_code ec;
  const bool overlay_existed = !args.overlay_out.empty() && std::filesystem::exists(args.overlay_out, ec);
  if (!args.overlay_out.empty()) write_png_file(args.overlay_out, picture);
  if (!args.out.empty()) {
    try {
      write_attention_maps(maps, args.out);
    } catch (...) {
      if (!args.overlay_out.empty() && !overlay_existed) std::filesystem::remove(args.overlay_out, ec);
      throw;
    }
  }

  if (!args.model.quiet) {
    const auto top = top_k(maps.logits.data.data(), model->labels(), 1);
    std::string what = "input grid " + std::to_string(maps.grid.height) + "x" +
                       std::to_string(maps.grid.width) + ", " + std::to_string(maps.tensors.size()) +
                       " attention tensors";
    if (!top.empty()) {
      char p[32];
      std::snprintf(p, sizeof(p), "%.3f", top[0].probability);
      what += ", top class '" + top[0].label + "' (" + p + ")";
    }
    if (!args.out.empty()) std::fprintf(stderr, "wrote %s (%s)\n", args.out.c_str(), what.c_str());
    if (!args.overlay_out.empty())
      std::fprintf(stderr, "wrote %s%s\n", args.overlay_out.c_str(),
                   args.out.empty() ? (" (" + what + ")").c_str() : "");
  }
}

}  // namespace

void register_attention(CLI::App& app) {
  auto args = std::make_shared<AttentionArgs>();
  CLI::App* cmd = app.add_subcommand(
      "attention",
      "Write every attention map of a forward pass (.npy + manifest.json) and an overlay picture");
  args->model.add_to(cmd);
  cmd->add_option("image", args->image, "Image file (JPEG, PNG, WebP)");
  cmd->add_option("--pixels", args->pixels,
                  "Preprocessed float32 pixels [B,3,H,W] (.npy) instead of an image");
  cmd->add_option("-o,--out", args->out,
                  "Folder to write: cross_attn_probs.npy, self_attn_probs_b{block}_l{layer}.npy, "
                  "decoder_cross_attn_probs.npy, relevance.npy, relevance_rollout.npy, manifest.json");
  cmd->add_option("--overlay-out", args->overlay_out,
                  "PNG to write: the relevance map over the image (at least 224 px on its short side)");
  cmd->add_option("--latents", args->latents,
                  "Instead draw the cross-attention of these latents, one tile each: all, or e.g. 3,17");
  cmd->add_flag("--rollout", args->rollout,
                "Relevance by attention rollout through the self-attention layers (docs/attention.md)");
  cmd->add_option("--colormap", args->colour_map, "viridis (default) or magma")
      ->check(CLI::IsMember({"viridis", "magma"}));
  cmd->add_option("--opacity", args->opacity, "Opacity of the colours over the image, 0..1 (default 0.6)");
  cmd->add_flag("--preprocess-defaults", args->preprocess_defaults,
                "Without preprocessor_config.json, use PerceiverImageProcessor's defaults");
  cmd->callback([args]() { run_attention(*args); });
}

}  // namespace perceiver::cli
