// Pictures of attention maps: a token map carried onto the original image through the token grid and the
// preprocessor's crop, coloured with a perceptually uniform colour map and blended; PNG output with libpng.
#include <png.h>

#include <algorithm>
#include <cmath>
#include <csetjmp>
#include <cstring>

#include "perceiver/attention.h"
#include "util/atomic_file.h"

namespace perceiver {
namespace {

// matplotlib's viridis and magma (Stéfan van der Walt and Nathaniel Smith, 2015; CC0) are published as
// 256-entry sRGB tables. These are those tables' values at evenly spaced points (viridis at t = i / 10,
// magma at t = i / 8), as 8-bit sRGB; colours in between are interpolated linearly, which stays close to the
// full tables because both maps change slowly and smoothly in sRGB.
constexpr uint8_t kViridis[][3] = {
    {0x44, 0x01, 0x54}, {0x48, 0x24, 0x75}, {0x41, 0x44, 0x87}, {0x35, 0x5f, 0x8d},
    {0x2a, 0x78, 0x8e}, {0x21, 0x91, 0x8c}, {0x22, 0xa8, 0x84}, {0x44, 0xbf, 0x70},
    {0x7a, 0xd1, 0x51}, {0xbd, 0xdf, 0x26}, {0xfd, 0xe7, 0x25},
};
constexpr uint8_t kMagma[][3] = {
    {0x00, 0x00, 0x04}, {0x1c, 0x10, 0x44}, {0x4f, 0x12, 0x7b}, {0x81, 0x25, 0x81}, {0xb5, 0x36, 0x7a},
    {0xe5, 0x50, 0x64}, {0xfb, 0x87, 0x61}, {0xfe, 0xc2, 0x87}, {0xfc, 0xfd, 0xbf},
};

template <size_t N>
void interpolate(const uint8_t (&table)[N][3], double t, uint8_t rgb[3]) {
  const double x = std::clamp(t, 0.0, 1.0) * double(N - 1);
  const size_t i = std::min(size_t(x), N - 2);
  const double f = x - double(i);
  for (int c = 0; c < 3; ++c) rgb[c] = uint8_t(std::lround((1.0 - f) * table[i][c] + f * table[i + 1][c]));
}

// Bilinear sample of a [h, w] float map at (y, x) in its sample coordinates, clamped at the edges.
double sample(const float* map, int h, int w, double y, double x) {
  y = std::clamp(y, 0.0, double(h - 1));
  x = std::clamp(x, 0.0, double(w - 1));
  const int y0 = std::min(int(y), h - 1), x0 = std::min(int(x), w - 1);
  const int y1 = std::min(y0 + 1, h - 1), x1 = std::min(x0 + 1, w - 1);
  const double fy = y - y0, fx = x - x0;
  const double top = (1 - fx) * map[size_t(y0) * w + x0] + fx * map[size_t(y0) * w + x1];
  const double bottom = (1 - fx) * map[size_t(y1) * w + x0] + fx * map[size_t(y1) * w + x1];
  return (1 - fy) * top + fy * bottom;
}

// Bilinear sample of channel c of an RGB image at (y, x) in pixel-centre coordinates.
double sample_rgb(const Image& image, double y, double x, int c) {
  y = std::clamp(y, 0.0, double(image.height - 1));
  x = std::clamp(x, 0.0, double(image.width - 1));
  const int y0 = std::min(int(y), image.height - 1), x0 = std::min(int(x), image.width - 1);
  const int y1 = std::min(y0 + 1, image.height - 1), x1 = std::min(x0 + 1, image.width - 1);
  const double fy = y - y0, fx = x - x0;
  auto at = [&](int yy, int xx) { return double(image.rgb[(size_t(yy) * image.width + xx) * 3 + c]); };
  return (1 - fy) * ((1 - fx) * at(y0, x0) + fx * at(y0, x1)) +
         fy * ((1 - fx) * at(y1, x0) + fx * at(y1, x1));
}

void check_image(const Image& image) {
  if (image.width <= 0 || image.height <= 0 || image.rgb.size() != size_t(image.width) * image.height * 3)
    throw Error(ErrorKind::usage, "overlay: empty image or pixel buffer of the wrong size");
}

// The overlay of `token_map` at `scale` times the image's size (scale may be fractional for tiles).
Image overlay_at(const Image& image, const AttentionMaps& maps, const float* token_map, int out_w, int out_h,
                 const OverlayOptions& options) {
  const TokenGrid& g = maps.grid;
  const int N = g.tokens();
  // Normalise the map to [0, 1] by its range.
  const auto [lo_it, hi_it] = std::minmax_element(token_map, token_map + N);
  const double lo = *lo_it, range = double(*hi_it) - lo;
  std::vector<float> unit(N);
  for (int t = 0; t < N; ++t) unit[t] = range > 0 ? float((token_map[t] - lo) / range) : 0.5f;

  const ImageRegion& r = maps.source_region;
  const double sx = double(image.width) / out_w, sy = double(image.height) / out_h;
  const double alpha = std::clamp(options.opacity, 0.0, 1.0);
  Image out;
  out.width = out_w;
  out.height = out_h;
  out.rgb.resize(size_t(out_w) * out_h * 3);
  for (int Y = 0; Y < out_h; ++Y)
    for (int X = 0; X < out_w; ++X) {
      // Output pixel centre in image coordinates (pixel edges at integers), then in the model's input.
      const double u = (X + 0.5) * sx, v = (Y + 0.5) * sy;
      const double px = (u - r.left) * maps.width / r.width - 0.5,
                   py = (v - r.top) * maps.height / r.height - 0.5;
      const bool seen = px >= -0.5 && px < maps.width - 0.5 && py >= -0.5 && py < maps.height - 0.5;
      uint8_t* dst = &out.rgb[(size_t(Y) * out_w + X) * 3];
      double background[3];
      for (int c = 0; c < 3; ++c) background[c] = sample_rgb(image, v - 0.5, u - 0.5, c);
      if (!seen) {
        for (int c = 0; c < 3; ++c) dst[c] = uint8_t(std::lround(background[c] * options.outside_dim));
        continue;
      }
      const double value =
          sample(unit.data(), g.height, g.width, (py - g.offset) / g.stride, (px - g.offset) / g.stride);
      uint8_t colour[3];
      colour_map_rgb(options.colour_map, value, colour);
      for (int c = 0; c < 3; ++c)
        dst[c] = uint8_t(std::clamp(std::lround((1 - alpha) * background[c] + alpha * colour[c]), 0L, 255L));
    }
  return out;
}

void check_maps_for_image(const Image& image, const AttentionMaps& maps) {
  check_image(image);
  if (!maps.has_source_region)
    throw Error(ErrorKind::usage,
                "overlay: the attention maps were not made from an image (no source region)");
  if (maps.source_width != image.width || maps.source_height != image.height)
    throw Error(ErrorKind::usage, "overlay: the image is " + std::to_string(image.width) + "x" +
                                      std::to_string(image.height) + ", the attention maps were made from " +
                                      std::to_string(maps.source_width) + "x" +
                                      std::to_string(maps.source_height));
  if (maps.grid.tokens() <= 0) throw Error(ErrorKind::usage, "overlay: empty token grid");
}

// The whole factor that brings the short side to at least `min_short_side`.
int enlargement(const Image& image, int min_short_side) {
  const int short_side = std::min(image.width, image.height);
  return std::max(1, (std::max(min_short_side, 1) + short_side - 1) / short_side);
}

}  // namespace

ColourMap parse_colour_map(const std::string& name) {
  if (name == "viridis") return ColourMap::viridis;
  if (name == "magma") return ColourMap::magma;
  throw Error(ErrorKind::usage, "colour map '" + name + "': expected viridis or magma");
}

void colour_map_rgb(ColourMap map, double t, uint8_t rgb[3]) {
  if (std::isnan(t)) t = 0;
  if (map == ColourMap::magma)
    interpolate(kMagma, t, rgb);
  else
    interpolate(kViridis, t, rgb);
}

Image render_overlay(const Image& image, const AttentionMaps& maps, const float* token_map,
                     const OverlayOptions& options) {
  check_maps_for_image(image, maps);
  const int k = enlargement(image, options.min_short_side);
  return overlay_at(image, maps, token_map, image.width * k, image.height * k, options);
}

Image render_overlay(const Image& image, const AttentionMaps& maps, const Tensor& relevance,
                     const OverlayOptions& options) {
  if (relevance.shape.size() != 3 || relevance.shape[1] != maps.grid.height ||
      relevance.shape[2] != maps.grid.width || relevance.data.size() < size_t(maps.grid.tokens()))
    throw Error(ErrorKind::usage, "overlay: the relevance map is not [B, grid_h, grid_w] of these maps");
  return render_overlay(image, maps, relevance.data.data(), options);
}

Image render_latent_grid(const Image& image, const AttentionMaps& maps, const std::vector<int>& latents,
                         const OverlayOptions& options) {
  check_maps_for_image(image, maps);
  if (latents.empty()) throw Error(ErrorKind::usage, "overlay: no latents chosen");
  const Tensor per_latent = latent_maps(maps, latents);  // [B, n, gh, gw]; image 0 used
  const int n = int(latents.size());
  const int columns = int(std::ceil(std::sqrt(double(n)))), rows = (n + columns - 1) / columns;
  const int short_side = std::clamp(448 / columns, 64, std::max(64, options.min_short_side));
  const double scale = double(short_side) / std::min(image.width, image.height);
  const int tile_w = std::max(1, int(std::lround(image.width * scale)));
  const int tile_h = std::max(1, int(std::lround(image.height * scale)));
  constexpr int kGap = 4;
  Image grid;
  grid.width = columns * tile_w + (columns - 1) * kGap;
  grid.height = rows * tile_h + (rows - 1) * kGap;
  grid.rgb.assign(size_t(grid.width) * grid.height * 3, 0);
  const size_t N = size_t(maps.grid.tokens());
  for (int i = 0; i < n; ++i) {
    const Image tile =
        overlay_at(image, maps, per_latent.data.data() + size_t(i) * N, tile_w, tile_h, options);
    const int x0 = (i % columns) * (tile_w + kGap), y0 = (i / columns) * (tile_h + kGap);
    for (int y = 0; y < tile_h; ++y)
      std::memcpy(&grid.rgb[(size_t(y0 + y) * grid.width + x0) * 3], &tile.rgb[size_t(y) * tile_w * 3],
                  size_t(tile_w) * 3);
  }
  return grid;
}

// --- PNG ---------------------------------------------------------------------------------------------------

namespace {

struct PngWriteState {
  std::string bytes;
  std::jmp_buf jump;
  char message[200] = {};
};

void png_append(png_structp png, png_bytep data, png_size_t size) {
  auto* state = static_cast<PngWriteState*>(png_get_io_ptr(png));
  state->bytes.append(reinterpret_cast<const char*>(data), size);
}

void png_flush(png_structp) {}

[[noreturn]] void png_fail(png_structp png, png_const_charp message) {
  auto* state = static_cast<PngWriteState*>(png_get_error_ptr(png));
  std::snprintf(state->message, sizeof(state->message), "%s", message ? message : "libpng error");
  std::longjmp(state->jump, 1);
}

void png_warn(png_structp, png_const_charp) {}

}  // namespace

std::string encode_png(const Image& image) {
  check_image(image);
  PngWriteState state;
  png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, &state, png_fail, png_warn);
  if (!png) throw Error(ErrorKind::internal, "png: cannot create a libpng writer");
  png_infop info = png_create_info_struct(png);
  if (!info) {
    png_destroy_write_struct(&png, nullptr);
    throw Error(ErrorKind::internal, "png: cannot create a libpng info struct");
  }
  std::vector<png_bytep> rows(image.height);
  for (int y = 0; y < image.height; ++y)
    rows[y] = const_cast<png_bytep>(image.rgb.data() + size_t(y) * image.width * 3);
  if (setjmp(state.jump)) {
    png_destroy_write_struct(&png, &info);
    throw Error(ErrorKind::internal, std::string("png: ") + state.message);
  }
  png_set_write_fn(png, &state, png_append, png_flush);
  png_set_IHDR(png, info, png_uint_32(image.width), png_uint_32(image.height), 8, PNG_COLOR_TYPE_RGB,
               PNG_INTERLACE_NONE, PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
  png_set_rows(png, info, rows.data());
  png_write_png(png, info, PNG_TRANSFORM_IDENTITY, nullptr);
  png_destroy_write_struct(&png, &info);
  return std::move(state.bytes);
}

void write_png_file(const std::filesystem::path& path, const Image& image) {
  write_file_atomic(path, encode_png(image));
}

}  // namespace perceiver
