// The restricted unpickler on its own (data.pkl bytes), with tight limits so that deep structures are
// reached.
#include <span>

#include "formats/pickle.h"
#include "fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace perceiver;
  fuzz::expect_only_errors([&] {
    pickle::Limits limits;
    limits.max_values = 1 << 16;
    limits.max_items = 1 << 18;
    limits.max_memo = 1 << 12;
    limits.max_marks = 64;
    limits.max_string = 1 << 16;
    limits.max_tensors = 1024;
    pickle::Result result = pickle::unpickle(
        std::span<const std::byte>(reinterpret_cast<const std::byte*>(data), size), "data.pkl", limits);
    const pickle::Value& root = result.root();
    volatile size_t sink = 0;
    for (const pickle::Value* v : root.items) sink = sink + v->items.size() + v->size.size();
  });
  return 0;
}
