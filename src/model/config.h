// config.json of the three Perceiver IO image classifiers, with every derived attention width.
#pragma once

#include <filesystem>
#include <string>
#include <vector>

namespace perceiver {

enum class Architecture { conv, fourier, learned };

// Widths of one PerceiverLayer (attention + MLP), derived as Hugging Face's PerceiverLayer derives them.
struct LayerShape {
  int q_dim = 0;        // query stream width (and output width)
  int kv_dim = 0;       // key/value stream width
  int qk_channels = 0;  // total query/key width over all heads
  int v_channels = 0;   // total value width over all heads
  int heads = 1;
  int mlp_hidden = 0;  // widening_factor * q_dim
  bool query_residual = true;
  bool is_cross = false;
};

struct PerceiverConfig {
  std::string architecture_name;
  Architecture architecture = Architecture::conv;
  int num_latents = 0, d_latents = 0;
  int num_blocks = 0, num_self_attends_per_block = 0;
  int image_size = 56;              // learned model: the position table covers image_size^2 pixels
  std::vector<std::string> labels;  // id2label in index order

  // Derived.
  int input_channels = 0;  // kv width of the encoder cross-attention: 322 conv / 261 fourier / 512 learned
  LayerShape encoder_cross, self_attention, decoder_cross;

  int num_labels() const { return static_cast<int>(labels.size()); }
};

// Largest model a config.json may describe (2^32 parameters, 16 GiB in fp32; published Perceiver IO image
// classifiers have about 60 million). Refused by parse_config before anything is allocated.
constexpr double kMaxParameters = 4294967296.0;

// Throws Error(ErrorKind::model, "<file>: ...") for missing or nonsensical values.
PerceiverConfig load_config(const std::filesystem::path& path);
PerceiverConfig parse_config(const std::string& json_text, const std::string& name);

// Conv stem geometry (HF Conv2DDownsample): pad 3, 7x7 stride 2, then 3x3 stride 2 max-pool without padding.
inline int conv_stem_out(int size) { return (size + 6 - 7) / 2 + 1; }
inline int conv_pool_out(int size) { return (size - 3) / 2 + 1; }

// Fourier position encoding constants of the HF classes.
constexpr int kFourierBands = 64;
constexpr int kConvStemChannels = 64;
constexpr int kLearnedChannels = 256;

}  // namespace perceiver
