// model.safetensors: header length, JSON header, tensor table, offsets against the file size.
#include <cmath>

#include "formats/tensor_file.h"
#include "fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace perceiver;
  const auto& path = fuzz::write_scratch("safetensors", data, size);
  fuzz::expect_only_errors([&] {
    auto file = open_safetensors(path);
    volatile float sink = 0;
    for (const TensorRef& t : file->tensors()) {
      if (t.dtype == DType::i64) continue;
      std::vector<float> values = tensor_to_f32(t, path);  // touches every byte of the tensor
      for (float v : values) sink = sink + v;
      (void)file->find(t.name);
    }
  });
  return 0;
}
