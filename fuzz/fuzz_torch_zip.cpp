// pytorch_model.bin: zip archive (libzip) + restricted unpickler + storage/stride checks.
#include "formats/tensor_file.h"
#include "fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace perceiver;
  const auto& path = fuzz::write_scratch("torchzip", data, size);
  fuzz::expect_only_errors([&] {
    auto file = open_weights(path);  // magic-byte dispatch, as Model::load does
    volatile float sink = 0;
    for (const TensorRef& t : file->tensors()) {
      if (t.dtype == DType::i64) continue;
      for (float v : tensor_to_f32(t, path)) sink = sink + v;
    }
  });
  return 0;
}
