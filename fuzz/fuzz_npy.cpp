// .npy: magic, version, header dict literal, dtype, shape product vs the file size, conversions.
#include "formats/npy.h"
#include "fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace perceiver;
  const auto& path = fuzz::write_scratch("npy", data, size);
  fuzz::expect_only_errors([&] {
    NpyArray array = read_npy(path);
    if (array.dtype[0] == 'f') {
      (void)array.to_f32();
    } else {
      (void)array.to_i64();
      (void)array.to_f32();
    }
  });
  return 0;
}
