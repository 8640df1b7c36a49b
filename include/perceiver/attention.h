// perceiver.cpp: the attention maps of a forward pass (Hugging Face's output_attentions=True) and pictures of
// where the classifier looks.
//
//   auto model = perceiver::Model::load("deepmind/vision-perceiver-conv");
//   auto ctx = model->create_context();
//   perceiver::Image image = perceiver::decode_image_file("cat.jpg");
//   perceiver::AttentionMaps maps = perceiver::attention_maps(*ctx, image);
//   perceiver::Tensor where = perceiver::relevance_map(maps);           // [1, 55, 55], sums to 1
//   perceiver::write_png_file("cat-attention.png", perceiver::render_overlay(image, maps, where));
//
// Shapes: B batch, heads, L latents, N input tokens (N = grid.height * grid.width).
//
// Materialising the probabilities is a separate, traced mode of the forward pass (ForwardArgs::trace with
// trace_attention_probs): the normal forward never writes them. The kernels are the same and give the same
// logits (bit for bit on the AVX-512 kernels and the reference backend; on the oneDNN path a softmax over
// more keys than one tile chunk is summed in one chunk instead of several, within float rounding).
//
// Memory: every self-attention layer's probabilities are kept, [B, heads, L, L] each; for the ImageNet conv
// model (8 heads, 512 latents, 8 x 6 layers) that is 400 MB per image, plus 6 MB of cross-attention.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <string_view>
#include <vector>

#include "perceiver/image.h"
#include "perceiver/perceiver.h"

namespace perceiver {

// How the encoder's input tokens lie over the model's (preprocessed) input pixels [height, width].
// Token t is at row t / width, column t % width of the grid, centred on pixel
//   y = offset + stride * row,  x = offset + stride * column,
// and computed from the receptive_field x receptive_field pixels around it. The conv models' stem (7x7
// stride-2 convolution, pad 3, then 3x3 stride-2 max-pool) gives stride 4, offset 2, receptive field 11:
// 55 x 55 tokens for 224 x 224 pixels. The Fourier and learned models have one token per pixel (stride 1,
// offset 0, receptive field 1).
struct TokenGrid {
  int height = 0, width = 0;
  int stride = 1;
  double offset = 0;
  int receptive_field = 1;
  int tokens() const { return height * width; }
};

// Where the model's input pixels come from in an original image, in that image's pixel units: the
// preprocessor's centre crop (the whole image without one), resized to the model's [height, width]. A crop
// larger than the image reaches past its borders (HF pads it with zeros).
struct ImageRegion {
  double top = 0, left = 0, height = 0, width = 0;
};

struct NamedTensor {
  std::string name;
  Tensor tensor;
};

// Every softmax probability of one forward pass, named and shaped as HF's output_attentions and the golden
// vectors' manifest.json.
struct AttentionMaps {
  int batch = 0, height = 0, width = 0;  // the model's input pixels [batch, 3, height, width]
  int num_latents = 0;
  TokenGrid grid;
  // In the order the layers run:
  //   "cross_attn_probs"                   [B, cross_heads, L, N]  the latents over the input tokens
  //   "self_attn_probs_b{block}_l{layer}"  [B, heads, L, L]        each self-attention layer as applied
  //                                                                (block-major: b0_l0, b0_l1, .., b1_l0, ..)
  //   "decoder_cross_attn_probs"           [B, heads, 1, L]        the classifier's query over the latents
  // Each row (the last axis) sums to 1.
  std::vector<NamedTensor> tensors;
  Tensor logits;  // [B, num_labels], the same as Context::logits on the same pixels
  // Set by the image overload of attention_maps (batch 1): the image's part the pixels were made from.
  bool has_source_region = false;
  ImageRegion source_region;
  int source_height = 0, source_width = 0;  // the original image's size

  // The tensor called `name`; throws Error(usage) naming it when there is none.
  const Tensor& get(std::string_view name) const;
  const Tensor& cross_attention() const { return get("cross_attn_probs"); }
  const Tensor& decoder_attention() const { return get("decoder_cross_attn_probs"); }
  std::vector<const NamedTensor*> self_attention() const;  // in the order applied
};

// Runs the network once on preprocessed pixels [batch, 3, height, width] (Model::preprocess) in the traced
// mode and keeps every attention probability. Throws as Context::forward does.
AttentionMaps attention_maps(Context& context, const float* pixels, int batch, int height, int width);
// The same on one image, preprocessed as the model's PerceiverImageProcessor does; records the source region.
// Throws Error(model) when the model has no preprocessor.
AttentionMaps attention_maps(Context& context, const Image& image);

// The part of `image` that Model::preprocess turns into the model's input (see ImageRegion).
ImageRegion preprocessed_region(const Model& model, const Image& image);

// How much each input token matters to the classification, per image: [B, grid.height, grid.width], a
// distribution over the tokens (it sums to 1). With heads averaged (mean over h of P[b, h, ...]):
//
//   d = decoder_cross_attn_probs[b, :, 0, :]    [L]     the classifier's query over the latents
//   X = cross_attn_probs[b]                      [L, N]  the latents over the input tokens
//   S_k = self_attn_probs of the k-th layer run  [L, L]  (k = 1..K, block-major)
//
//   direct (default):  r = d X
//   rollout:           r = d A_K ... A_2 A_1 X,  with A_k = (S_k + I) / 2
//
// The rollout (Abnar & Zuidema 2020, "Quantifying Attention Flow in Transformers") carries the decoder's
// attention back through the self-attention layers to the latents as the cross-attention left them; the
// identity stands for the residual connection around each attention. Every factor is row-stochastic, so r
// sums to 1 either way.
struct RelevanceOptions {
  bool rollout = false;
};
Tensor relevance_map(const AttentionMaps& maps, const RelevanceOptions& options = {});

// The cross-attention of chosen latents over the input tokens, heads averaged:
// [B, latents.size(), grid.height, grid.width], each map summing to 1. Throws Error(usage) for a latent
// index outside 0..L-1.
Tensor latent_maps(const AttentionMaps& maps, const std::vector<int>& latents);

// Parses "all" or "3,17,..." into latent indices for a model with `num_latents` latents; throws Error(usage)
// "--latents: ..." for anything else, an index out of range included.
std::vector<int> parse_latent_list(const std::string& text, int num_latents);

// Perceptually uniform colour maps (matplotlib's viridis and magma, van der Walt and Smith 2015).
enum class ColourMap { viridis, magma };
ColourMap parse_colour_map(const std::string& name);  // "viridis" / "magma"; throws Error(usage)
// The colour of t in [0, 1] (clamped): rgb[0..2].
void colour_map_rgb(ColourMap map, double t, uint8_t rgb[3]);

struct OverlayOptions {
  ColourMap colour_map = ColourMap::viridis;
  double opacity = 0.6;       // of the colour over the image
  int min_short_side = 224;   // smaller images are enlarged by a whole factor to at least this (aspect kept)
  double outside_dim = 0.35;  // brightness of the image outside the region the model saw
};

// A token map (one image's [grid.height, grid.width], e.g. a row of relevance_map or latent_maps) drawn over
// `image`: the map is normalised to [0, 1] by its minimum and maximum, carried to the image's pixels through
// the token grid and the source region (bilinear), coloured and blended. The result has the image's size, or
// an integer multiple of it when its short side is under min_short_side. Needs maps.has_source_region.
Image render_overlay(const Image& image, const AttentionMaps& maps, const float* token_map,
                     const OverlayOptions& options = {});
// The same for image 0 of a relevance map [1, gh, gw].
Image render_overlay(const Image& image, const AttentionMaps& maps, const Tensor& relevance,
                     const OverlayOptions& options = {});
// One overlay tile per chosen latent (latent_maps of image 0), in a near-square grid, row by row in the
// order given, tiles 4 px apart on black. Tiles are scaled so the grid stays readable: their short side is
// 448 / columns pixels, between 64 and min_short_side.
Image render_latent_grid(const Image& image, const AttentionMaps& maps, const std::vector<int>& latents,
                         const OverlayOptions& options = {});

// 8-bit RGB PNG (libpng). write_png_file writes atomically (a temporary file, renamed); Error(io) on failure.
std::string encode_png(const Image& image);
void write_png_file(const std::filesystem::path& path, const Image& image);

// Writes every tensor of `maps` as float32 .npy into the folder `dir` (named <name>.npy), the relevance maps
// (relevance.npy, and relevance_rollout.npy) and manifest.json listing each file with its shape, the token
// grid and the source region. The folder appears whole or not at all: it is written as a temporary folder
// next to it and renamed. An existing `dir` is replaced only when it is empty or holds an earlier output of
// this function; otherwise Error(io).
void write_attention_maps(const AttentionMaps& maps, const std::filesystem::path& dir);

}  // namespace perceiver
