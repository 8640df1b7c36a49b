// config.json: JSON parsing, value bounds, id2label, derived attention widths.
#include <string>

#include "fuzz_util.h"
#include "model/config.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace perceiver;
  const std::string text(reinterpret_cast<const char*>(data), size);
  fuzz::expect_only_errors([&] {
    PerceiverConfig c = parse_config(text, "config.json");
    // What a model load would derive from it must be sane.
    if (c.num_labels() < 1 || c.num_latents < 1 || c.d_latents < 1 || c.encoder_cross.heads < 1 ||
        c.encoder_cross.qk_channels % c.encoder_cross.heads != 0 ||
        c.self_attention.v_channels % c.self_attention.heads != 0)
      __builtin_trap();
  });
  return 0;
}
