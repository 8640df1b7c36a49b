// Restricted pickle VM: a value stack, a mark stack and a memo; only the opcodes torch.save uses.
#include "formats/pickle.h"

#include <bit>
#include <cstring>
#include <unordered_map>

#include "perceiver/error.h"

namespace perceiver::pickle {

const char* kind_name(Kind kind) {
  switch (kind) {
    case Kind::none:
      return "None";
    case Kind::boolean:
      return "bool";
    case Kind::integer:
      return "int";
    case Kind::floating:
      return "float";
    case Kind::string:
      return "str";
    case Kind::tuple:
      return "tuple";
    case Kind::list:
      return "list";
    case Kind::dict:
      return "dict";
    case Kind::global:
      return "global";
    case Kind::storage:
      return "storage";
    case Kind::tensor:
      return "tensor";
  }
  return "?";
}

namespace {

// Opcodes (pickletools names).
enum Op : uint8_t {
  kMark = '(',
  kStop = '.',
  kBinFloat = 'G',
  kBinInt = 'J',
  kBinInt1 = 'K',
  kBinInt2 = 'M',
  kNone = 'N',
  kBinPersId = 'Q',
  kReduce = 'R',
  kBinUnicode = 'X',
  kAppend = 'a',
  kBuild = 'b',
  kGlobal = 'c',
  kAppends = 'e',
  kBinGet = 'h',
  kLongBinGet = 'j',
  kEmptyList = ']',
  kBinPut = 'q',
  kLongBinPut = 'r',
  kSetItem = 's',
  kTuple = 't',
  kSetItems = 'u',
  kEmptyDict = '}',
  kEmptyTuple = ')',
  kProto = 0x80,
  kTuple1 = 0x85,
  kTuple2 = 0x86,
  kTuple3 = 0x87,
  kNewTrue = 0x88,
  kNewFalse = 0x89,
  kLong1 = 0x8a,
  kShortBinUnicode = 0x8c,
  kBinUnicode8 = 0x8d,
  kStackGlobal = 0x93,
  kMemoize = 0x94,
  kFrame = 0x95,
};

constexpr size_t kMaxGlobalLine = 256;

}  // namespace

class Machine {
 public:
  Machine(std::span<const std::byte> data, const std::string& file, const Limits& limits)
      : data_(data), file_(file), limits_(limits) {}

  Result run();

 private:
  [[noreturn]] void fail(const std::string& what) const {
    throw Error(ErrorKind::model, file_ + ": " + what + " (data.pkl byte " + std::to_string(op_pos_) + ")");
  }

  // --- reading the program -------------------------------------------------------------------------------
  const std::byte* take(size_t n) {
    if (n > data_.size() - pos_) fail("truncated pickle");
    const std::byte* p = data_.data() + pos_;
    pos_ += n;
    return p;
  }
  uint64_t read_le(size_t n) {  // n <= 8
    const std::byte* p = take(n);
    uint64_t v = 0;
    for (size_t i = 0; i < n; ++i) v |= static_cast<uint64_t>(p[i]) << (8 * i);
    return v;
  }
  std::string read_string(uint64_t n) {
    if (n > limits_.max_string) fail("pickle string of " + std::to_string(n) + " bytes exceeds the limit");
    const std::byte* p = take(static_cast<size_t>(n));
    return std::string(reinterpret_cast<const char*>(p), static_cast<size_t>(n));
  }
  std::string read_line() {  // GLOBAL operand: text up to '\n'
    for (size_t i = pos_; i < data_.size() && i - pos_ <= kMaxGlobalLine; ++i) {
      if (data_[i] == std::byte{'\n'}) {
        std::string s(reinterpret_cast<const char*>(data_.data() + pos_), i - pos_);
        pos_ = i + 1;
        return s;
      }
    }
    fail(pos_ >= data_.size() || data_.size() - pos_ <= kMaxGlobalLine ? "truncated pickle"
                                                                       : "GLOBAL operand too long");
  }

  // --- values and the stack ------------------------------------------------------------------------------
  Value* make(Kind kind) {
    if (result_.arena_.size() >= limits_.max_values) fail("pickle creates too many objects");
    result_.arena_.push_back(std::make_unique<Value>());
    result_.arena_.back()->kind = kind;
    return result_.arena_.back().get();
  }
  void count_items(size_t n) {
    items_ += n;
    if (items_ > limits_.max_items) fail("pickle holds too many items");
  }
  void push(Value* v) {
    count_items(1);
    stack_.push_back(v);
  }
  Value* pop() {
    if (stack_.size() <= floor()) fail("pickle stack underflow");
    Value* v = stack_.back();
    stack_.pop_back();
    return v;
  }
  Value* top() {
    if (stack_.size() <= floor()) fail("pickle stack underflow");
    return stack_.back();
  }
  size_t floor() const { return marks_.empty() ? 0 : marks_.back(); }
  std::vector<Value*> pop_mark() {  // everything above the innermost MARK, which is removed
    if (marks_.empty()) fail("pickle MARK expected");
    size_t m = marks_.back();
    marks_.pop_back();
    std::vector<Value*> items(stack_.begin() + static_cast<ptrdiff_t>(m), stack_.end());
    stack_.resize(m);
    return items;
  }
  Value* pop_typed(Kind kind, const char* what) {
    Value* v = pop();
    if (v->kind != kind)
      fail(std::string(what) + " expects a " + kind_name(kind) + ", got " + kind_name(v->kind));
    return v;
  }

  void memo_put(uint64_t index, Value* v) {
    if (memo_.size() >= limits_.max_memo && !memo_.count(index)) fail("pickle memo too large");
    memo_[index] = v;
  }
  Value* memo_get(uint64_t index) {
    auto it = memo_.find(index);
    if (it == memo_.end()) fail("pickle memo key " + std::to_string(index) + " undefined");
    return it->second;
  }

  Value* make_tuple(std::vector<Value*> items) {
    Value* t = make(Kind::tuple);
    count_items(items.size());
    t->items.assign(items.begin(), items.end());
    return t;
  }
  Value* make_int(int64_t v) {
    Value* x = make(Kind::integer);
    x->integer = v;
    return x;
  }
  Value* make_bool(bool b) {
    Value* x = make(Kind::boolean);
    x->integer = b;
    return x;
  }
  Value* make_string(std::string s) {
    Value* x = make(Kind::string);
    x->text = std::move(s);
    return x;
  }

  // --- the interesting opcodes ---------------------------------------------------------------------------
  Value* resolve_global(const std::string& module, const std::string& name);
  Value* reduce(Value* callable, Value* args);
  Value* rebuild_tensor(const Value& args);
  Value* persistent_load(const Value& pid);
  void set_items(Value* dict, const std::vector<Value*>& items);

  std::span<const std::byte> data_;
  const std::string& file_;
  const Limits& limits_;
  size_t pos_ = 0, op_pos_ = 0;
  size_t items_ = 0, tensors_ = 0;
  std::vector<Value*> stack_;
  std::vector<size_t> marks_;
  std::unordered_map<uint64_t, Value*> memo_;
  Result result_;
};

Value* Machine::resolve_global(const std::string& module, const std::string& name) {
  Value* g = make(Kind::global);
  g->text = module + "." + name;
  if (module == "collections" && name == "OrderedDict") {
    g->callable = Callable::ordered_dict;
  } else if (module == "torch._utils" && name == "_rebuild_tensor_v2") {
    g->callable = Callable::rebuild_tensor_v2;
  } else if (module == "torch._utils" && name == "_rebuild_parameter") {
    g->callable = Callable::rebuild_parameter;
  } else if (module == "torch" && name == "FloatStorage") {
    g->callable = Callable::storage_class;
    g->dtype = DType::f32;
  } else if (module == "torch" && name == "HalfStorage") {
    g->callable = Callable::storage_class;
    g->dtype = DType::f16;
  } else if (module == "torch" && name == "BFloat16Storage") {
    g->callable = Callable::storage_class;
    g->dtype = DType::bf16;
  } else if (module == "torch" && name == "LongStorage") {
    g->callable = Callable::storage_class;
    g->dtype = DType::i64;
  } else if (module == "torch" && name.size() > 7 && name.ends_with("Storage") &&
             name.find_first_not_of("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789") ==
                 std::string::npos) {
    fail("unsupported tensor storage type '" + printable(g->text) +
         "' (supported: FloatStorage, HalfStorage, BFloat16Storage, LongStorage)");
  } else {
    fail("forbidden pickle global '" + printable(g->text) + "'");
  }
  return g;
}

// ('storage', <storage class>, key, location, numel) -> a storage reference.
Value* Machine::persistent_load(const Value& pid) {
  const auto& f = pid.items;
  if (pid.kind != Kind::tuple || f.size() != 5 || f[0]->kind != Kind::string || f[0]->text != "storage")
    fail("persistent id is not ('storage', type, key, location, numel)");
  if (f[1]->kind != Kind::global || f[1]->callable != Callable::storage_class)
    fail("persistent id names a storage type that is not a storage class");
  if (f[2]->kind != Kind::string || f[2]->text.empty() || f[2]->text.size() > 64 ||
      f[2]->text.find_first_not_of("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_") !=
          std::string::npos)
    fail("persistent id has an invalid storage key");
  if (f[3]->kind != Kind::string) fail("persistent id location is not a string");
  if (f[4]->kind != Kind::integer || f[4]->integer < 0) fail("persistent id numel is not an integer >= 0");
  Value* s = make(Kind::storage);
  s->dtype = f[1]->dtype;
  s->text = f[2]->text;
  s->integer = f[4]->integer;
  return s;
}

// _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad, backward_hooks[, metadata])
Value* Machine::rebuild_tensor(const Value& args) {
  const auto& a = args.items;
  if (a.size() != 6 && a.size() != 7)
    fail("_rebuild_tensor_v2 takes 6 or 7 arguments, got " + std::to_string(a.size()));
  if (a[0]->kind != Kind::storage)
    fail(std::string("_rebuild_tensor_v2: storage is a ") + kind_name(a[0]->kind));
  if (a[1]->kind != Kind::integer || a[1]->integer < 0) fail("_rebuild_tensor_v2: bad storage offset");
  if (a[2]->kind != Kind::tuple || a[3]->kind != Kind::tuple || a[2]->items.size() != a[3]->items.size())
    fail("_rebuild_tensor_v2: size and stride must be tuples of equal length");
  if (a[2]->items.size() > limits_.max_rank)
    fail("_rebuild_tensor_v2: rank " + std::to_string(a[2]->items.size()) + " > " +
         std::to_string(limits_.max_rank));
  if (a[4]->kind != Kind::boolean) fail("_rebuild_tensor_v2: requires_grad is not a bool");
  if (a[5]->kind != Kind::dict) fail("_rebuild_tensor_v2: backward_hooks is not a dict");
  if (++tensors_ > limits_.max_tensors) fail("pickle holds too many tensors");
  Value* t = make(Kind::tensor);
  t->storage = a[0];
  t->dtype = a[0]->dtype;
  t->integer = a[1]->integer;
  for (size_t i = 0; i < a[2]->items.size(); ++i) {
    const Value* size = a[2]->items[i];
    const Value* stride = a[3]->items[i];
    if (size->kind != Kind::integer || size->integer < 0 || stride->kind != Kind::integer ||
        stride->integer < 0)
      fail("_rebuild_tensor_v2: size/stride entries must be integers >= 0");
    t->size.push_back(size->integer);
    t->stride.push_back(stride->integer);
  }
  return t;
}

Value* Machine::reduce(Value* callable, Value* args) {
  if (callable->kind != Kind::global) fail(std::string("REDUCE on a ") + kind_name(callable->kind));
  if (args->kind != Kind::tuple) fail(std::string("REDUCE arguments are a ") + kind_name(args->kind));
  switch (callable->callable) {
    case Callable::ordered_dict:
      if (!args->items.empty()) fail("OrderedDict() with arguments is not supported");
      return make(Kind::dict);
    case Callable::rebuild_tensor_v2:
      return rebuild_tensor(*args);
    case Callable::rebuild_parameter:  // _rebuild_parameter(data, requires_grad, backward_hooks)
      if (args->items.size() != 3 || args->items[0]->kind != Kind::tensor)
        fail("_rebuild_parameter expects (tensor, requires_grad, backward_hooks)");
      return const_cast<Value*>(args->items[0]);
    case Callable::storage_class:
    case Callable::none:
      break;
  }
  fail("calling '" + printable(callable->text) + "' is not supported");
}

void Machine::set_items(Value* dict, const std::vector<Value*>& items) {
  if (dict->kind != Kind::dict) fail(std::string("SETITEM(S) on a ") + kind_name(dict->kind));
  if (items.size() % 2) fail("SETITEMS with an odd number of items");
  count_items(items.size());
  dict->items.insert(dict->items.end(), items.begin(), items.end());
}

Result Machine::run() {
  for (;;) {
    op_pos_ = pos_;
    const auto op = static_cast<uint8_t>(*take(1));
    switch (op) {
      case kProto: {
        uint64_t version = read_le(1);
        if (version > 5) fail("unsupported pickle protocol " + std::to_string(version));
        break;
      }
      case kFrame: {
        uint64_t frame = read_le(8);
        if (frame > data_.size() - pos_) fail("truncated pickle");
        break;
      }
      case kMark:
        if (marks_.size() >= limits_.max_marks) fail("pickle MARKs nested too deeply");
        marks_.push_back(stack_.size());
        break;
      case kEmptyDict:
        push(make(Kind::dict));
        break;
      case kEmptyList:
        push(make(Kind::list));
        break;
      case kEmptyTuple:
        push(make(Kind::tuple));
        break;
      case kNone:
        push(make(Kind::none));
        break;
      case kNewTrue:
        push(make_bool(true));
        break;
      case kNewFalse:
        push(make_bool(false));
        break;
      case kBinInt:
        push(make_int(static_cast<int32_t>(read_le(4))));
        break;
      case kBinInt1:
        push(make_int(static_cast<int64_t>(read_le(1))));
        break;
      case kBinInt2:
        push(make_int(static_cast<int64_t>(read_le(2))));
        break;
      case kLong1: {
        uint64_t n = read_le(1);
        if (n > 8) fail("integer of " + std::to_string(n) + " bytes is too large");
        uint64_t v = n ? read_le(static_cast<size_t>(n)) : 0;
        if (n && n < 8 && (v >> (8 * n - 1)) & 1) v |= ~uint64_t{0} << (8 * n);  // sign-extend
        push(make_int(static_cast<int64_t>(v)));
        break;
      }
      case kBinFloat: {
        uint64_t be = 0;
        const std::byte* p = take(8);
        for (int i = 0; i < 8; ++i) be = (be << 8) | static_cast<uint64_t>(p[i]);
        Value* x = make(Kind::floating);
        x->floating = std::bit_cast<double>(be);
        push(x);
        break;
      }
      case kBinUnicode:
        push(make_string(read_string(read_le(4))));
        break;
      case kShortBinUnicode:
        push(make_string(read_string(read_le(1))));
        break;
      case kBinUnicode8:
        push(make_string(read_string(read_le(8))));
        break;
      case kBinPut:
        memo_put(read_le(1), top());
        break;
      case kLongBinPut:
        memo_put(read_le(4), top());
        break;
      case kMemoize:
        memo_put(memo_.size(), top());
        break;
      case kBinGet:
        push(memo_get(read_le(1)));
        break;
      case kLongBinGet:
        push(memo_get(read_le(4)));
        break;
      case kTuple:
        push(make_tuple(pop_mark()));
        break;
      case kTuple1: {
        Value* a = pop();
        push(make_tuple({a}));
        break;
      }
      case kTuple2: {
        Value* b = pop();
        Value* a = pop();
        push(make_tuple({a, b}));
        break;
      }
      case kTuple3: {
        Value* c = pop();
        Value* b = pop();
        Value* a = pop();
        push(make_tuple({a, b, c}));
        break;
      }
      case kAppend: {
        Value* v = pop();
        Value* list = top();
        if (list->kind != Kind::list) fail(std::string("APPEND on a ") + kind_name(list->kind));
        count_items(1);
        list->items.push_back(v);
        break;
      }
      case kAppends: {
        std::vector<Value*> items = pop_mark();
        Value* list = top();
        if (list->kind != Kind::list) fail(std::string("APPENDS on a ") + kind_name(list->kind));
        count_items(items.size());
        list->items.insert(list->items.end(), items.begin(), items.end());
        break;
      }
      case kSetItem: {
        Value* v = pop();
        Value* k = pop();
        set_items(top(), {k, v});
        break;
      }
      case kSetItems: {
        std::vector<Value*> items = pop_mark();
        set_items(top(), items);
        break;
      }
      case kGlobal: {
        std::string module = read_line();
        std::string name = read_line();
        push(resolve_global(module, name));
        break;
      }
      case kStackGlobal: {
        Value* name = pop_typed(Kind::string, "STACK_GLOBAL");
        Value* module = pop_typed(Kind::string, "STACK_GLOBAL");
        push(resolve_global(module->text, name->text));
        break;
      }
      case kReduce: {
        Value* args = pop();
        Value* callable = pop();
        push(reduce(callable, args));
        break;
      }
      case kBinPersId:
        push(persistent_load(*pop()));
        break;
      case kBuild: {  // only OrderedDict's __dict__ (the state dict's _metadata), which is dropped
        Value* state = pop();
        (void)state;
        if (top()->kind != Kind::dict) fail(std::string("BUILD on a ") + kind_name(top()->kind));
        break;
      }
      case kStop: {
        if (!marks_.empty() || stack_.size() != 1) fail("pickle stack not balanced at STOP");
        if (pos_ != data_.size()) fail("trailing bytes after pickle STOP");
        result_.root_ = stack_.back();
        return std::move(result_);
      }
      default: {
        static const char kHex[] = "0123456789abcdef";
        fail(std::string("unsupported pickle opcode 0x") + kHex[op >> 4] + kHex[op & 15]);
      }
    }
  }
}

Result unpickle(std::span<const std::byte> data, const std::string& file, const Limits& limits) {
  Machine machine(data, file, limits);
  return machine.run();
}

}  // namespace perceiver::pickle
