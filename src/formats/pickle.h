// A restricted unpickler for the subset of pickle that torch.save writes for a state dict (data.pkl).
// Nothing is ever executed: GLOBAL/STACK_GLOBAL resolve only against a fixed whitelist, REDUCE and
// BINPERSID build plain data (dicts, storage references, tensor descriptions), and every read is bounded.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "formats/tensor_file.h"

namespace perceiver::pickle {

enum class Kind { none, boolean, integer, floating, string, tuple, list, dict, global, storage, tensor };
const char* kind_name(Kind kind);

// The whitelisted callables a global may name.
enum class Callable { none, ordered_dict, rebuild_tensor_v2, rebuild_parameter, storage_class };

struct Value {
  Kind kind = Kind::none;
  int64_t integer = 0;  // integer; boolean (0/1); storage: element count; tensor: storage offset (elements)
  double floating = 0;  // floating
  std::string text;     // string; global: "module.name"; storage: its key (zip entry <root>/data/<key>)
  Callable callable = Callable::none;  // global
  DType dtype = DType::f32;            // global storage_class, storage, tensor
  std::vector<const Value*> items;     // tuple, list; dict: key0, value0, key1, value1, ... (insertion order)
  const Value* storage = nullptr;      // tensor
  std::vector<int64_t> size, stride;   // tensor: [rank] each, in elements
};

struct Limits {
  size_t max_values = size_t{1} << 20;  // objects created
  size_t max_items = size_t{1} << 24;   // stack entries + container slots, all together
  size_t max_memo = size_t{1} << 20;
  size_t max_marks = 1024;              // nesting of MARKs
  size_t max_string = size_t{1} << 20;  // bytes per string
  size_t max_tensors = 100'000;
  size_t max_rank = 8;
};

// The unpickled object graph. Values are owned by the result (graphs may be cyclic) and live as long as it.
class Result {
 public:
  const Value& root() const { return *root_; }

 private:
  friend class Machine;
  std::vector<std::unique_ptr<Value>> arena_;
  const Value* root_ = nullptr;
};

// Runs the pickle program in `data`. Errors are perceiver::Error(ErrorKind::model, "<file>: ...").
Result unpickle(std::span<const std::byte> data, const std::string& file, const Limits& limits = {});

}  // namespace perceiver::pickle
