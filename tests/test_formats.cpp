// File-format layer: safetensors, pytorch_model.bin (zip + restricted pickle), .npy, atomic writes.
#include <zip.h>

#include <bit>
#include <cstring>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <set>

#include "formats/npy.h"
#include "formats/pickle.h"
#include "formats/tensor_file.h"
#include "perceiver/error.h"
#include "test_util.h"
#include "util/atomic_file.h"

namespace perceiver {
namespace {

namespace fs = std::filesystem;
using test::temp_dir;
using test::vectors_dir;

// --- helpers -----------------------------------------------------------------------------------------------

std::string read_bytes(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error("cannot read " + path.string());
  return std::string(std::istreambuf_iterator<char>(in), {});
}

void write_bytes(const fs::path& path, std::string_view bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  if (!out) throw std::runtime_error("cannot write " + path.string());
}

// Expects f() to throw perceiver::Error of `kind` whose one-line message starts with "<file>: " and contains
// `needle`.
template <typename F>
::testing::AssertionResult ThrowsError(F&& f, ErrorKind kind, const fs::path& file,
                                       const std::string& needle) {
  try {
    f();
  } catch (const Error& e) {
    std::string msg = e.what();
    if (e.kind() != kind)
      return ::testing::AssertionFailure() << "kind " << static_cast<int>(e.kind()) << ": " << msg;
    if (msg.rfind(file.string() + ": ", 0) != 0)
      return ::testing::AssertionFailure() << "message does not start with the file name: " << msg;
    if (msg.find(needle) == std::string::npos)
      return ::testing::AssertionFailure() << "message lacks '" << needle << "': " << msg;
    if (msg.find('\n') != std::string::npos) return ::testing::AssertionFailure() << "multi-line: " << msg;
    return ::testing::AssertionSuccess() << msg;
  } catch (const std::exception& e) {
    return ::testing::AssertionFailure() << "other exception: " << e.what();
  }
  return ::testing::AssertionFailure() << "nothing thrown";
}

std::string u64le(uint64_t v) {
  std::string s(8, '\0');
  for (int i = 0; i < 8; ++i) s[i] = static_cast<char>(v >> (8 * i));
  return s;
}

std::string safetensors_bytes(const std::string& header, const std::string& data) {
  return u64le(header.size()) + header + data;
}

// 3 floats + 1 int64: a small valid file.
std::string small_safetensors() {
  std::string header =
      R"({"__metadata__":{"format":"pt"},"w":{"dtype":"F32","shape":[3],"data_offsets":[0,12]},)"
      R"("n":{"dtype":"I64","shape":[],"data_offsets":[16,24]}})";
  float w[3] = {1.5f, -2.0f, 3.25f};
  int64_t n = 42;
  std::string data(24, '\0');
  std::memcpy(data.data(), w, 12);
  std::memcpy(data.data() + 16, &n, 8);
  return safetensors_bytes(header, data);
}

void write_zip(const fs::path& path, const std::vector<std::pair<std::string, std::string>>& entries,
               bool deflate = false) {
  int err = 0;
  zip_t* z = zip_open(path.c_str(), ZIP_CREATE | ZIP_TRUNCATE, &err);
  if (!z) throw std::runtime_error("zip_open failed");
  for (const auto& [name, data] : entries) {
    zip_source_t* src = zip_source_buffer(z, data.data(), data.size(), 0);
    zip_int64_t index = src ? zip_file_add(z, name.c_str(), src, ZIP_FL_OVERWRITE) : -1;
    if (index < 0 || zip_set_file_compression(z, static_cast<zip_uint64_t>(index),
                                              deflate ? ZIP_CM_DEFLATE : ZIP_CM_STORE, 0) != 0)
      throw std::runtime_error("zip_file_add failed");
  }
  if (zip_close(z) != 0) throw std::runtime_error("zip_close failed");
}

// Emits pickle opcodes.
class PickleBuilder {
 public:
  PickleBuilder& op(uint8_t c) {
    s_ += static_cast<char>(c);
    return *this;
  }
  PickleBuilder& proto(int v) { return op(0x80).op(static_cast<uint8_t>(v)); }
  PickleBuilder& mark() { return op('('); }
  PickleBuilder& str(std::string_view v) {
    op('X');
    for (int i = 0; i < 4; ++i) s_ += static_cast<char>(v.size() >> (8 * i));
    s_ += v;
    return *this;
  }
  PickleBuilder& short_str(std::string_view v) {
    op(0x8c).op(static_cast<uint8_t>(v.size()));
    s_ += v;
    return *this;
  }
  PickleBuilder& integer(int64_t v) {
    if (v >= 0 && v < 256) return op('K').op(static_cast<uint8_t>(v));
    if (v >= INT32_MIN && v <= INT32_MAX) {
      op('J');
      for (int i = 0; i < 4; ++i) s_ += static_cast<char>(static_cast<uint32_t>(v) >> (8 * i));
      return *this;
    }
    op(0x8a).op(8);
    for (int i = 0; i < 8; ++i) s_ += static_cast<char>(static_cast<uint64_t>(v) >> (8 * i));
    return *this;
  }
  PickleBuilder& global(std::string_view module, std::string_view name) {
    op('c');
    s_ += std::string(module) + "\n" + std::string(name) + "\n";
    return *this;
  }
  PickleBuilder& ints_tuple(const std::vector<int64_t>& v) {
    mark();
    for (int64_t x : v) integer(x);
    return op('t');
  }
  const std::string& bytes() const { return s_; }

 private:
  std::string s_;
};

struct FakeTensor {
  std::string name;
  std::string key;
  int64_t storage_numel;
  int64_t offset;
  std::vector<int64_t> size, stride;
  std::string storage_class = "FloatStorage";
};

// A torch.save-style state dict. ordered: OrderedDict + BUILD of _metadata (as model.state_dict() pickles).
std::string state_dict_pickle(const std::vector<FakeTensor>& tensors, bool ordered = false,
                              bool metadata_arg = false) {
  PickleBuilder p;
  p.proto(2);
  if (ordered) {
    p.global("collections", "OrderedDict").op(')').op('R');
  } else {
    p.op('}');
  }
  p.op('q').op(0);  // BINPUT 0
  p.mark();
  for (const FakeTensor& t : tensors) {
    p.str(t.name).global("torch._utils", "_rebuild_tensor_v2");
    p.mark();
    p.mark().str("storage").global("torch", t.storage_class).str(t.key).str("cpu").integer(t.storage_numel);
    p.op('t').op('Q');  // TUPLE, BINPERSID
    p.integer(t.offset).ints_tuple(t.size).ints_tuple(t.stride).op(0x89);
    p.global("collections", "OrderedDict").op(')').op('R');
    if (metadata_arg) p.op('}');
    p.op('t').op('R');
  }
  p.op('u');      // SETITEMS
  if (ordered) {  // BUILD with {'_metadata': OrderedDict({'': {'version': 1}})}
    p.op('}').mark().str("_metadata").global("collections", "OrderedDict").op(')').op('R');
    p.mark().str("").op('}').mark().str("version").integer(1).op('u').op('u');
    p.op('u').op('b');
  }
  p.op('.');
  return p.bytes();
}

std::string floats_bytes(const std::vector<float>& v) {
  std::string s(v.size() * 4, '\0');
  std::memcpy(s.data(), v.data(), s.size());
  return s;
}

std::vector<float> tensor_floats(const TensorRef& t) { return tensor_to_f32(t, "x"); }

// --- dtypes ------------------------------------------------------------------------------------------------

TEST(TensorFile, DTypeNamesAndSizes) {
  EXPECT_STREQ(dtype_name(DType::f32), "F32");
  EXPECT_STREQ(dtype_name(DType::f16), "F16");
  EXPECT_STREQ(dtype_name(DType::bf16), "BF16");
  EXPECT_STREQ(dtype_name(DType::i64), "I64");
  EXPECT_EQ(dtype_size(DType::f32), 4u);
  EXPECT_EQ(dtype_size(DType::f16), 2u);
  EXPECT_EQ(dtype_size(DType::bf16), 2u);
  EXPECT_EQ(dtype_size(DType::i64), 8u);
  TensorRef t;
  t.shape = {64, 3, 7, 7};
  EXPECT_EQ(t.numel(), 9408);
  EXPECT_EQ(t.shape_string(), "[64, 3, 7, 7]");
  t.shape = {};
  EXPECT_EQ(t.numel(), 1);
  EXPECT_EQ(t.shape_string(), "[]");
}

TEST(TensorFile, HalfAndBFloat16WidenExactly) {
  EXPECT_EQ(half_to_float(0x3c00), 1.0f);
  EXPECT_EQ(half_to_float(0xc100), -2.5f);
  EXPECT_EQ(half_to_float(0x7bff), 65504.0f);
  EXPECT_EQ(half_to_float(0x0001), std::ldexp(1.0f, -24));  // smallest subnormal
  EXPECT_EQ(half_to_float(0x03ff), std::ldexp(1023.0f, -24));
  EXPECT_EQ(half_to_float(0x0400), std::ldexp(1.0f, -14));  // smallest normal
  EXPECT_TRUE(std::signbit(half_to_float(0x8000)));
  EXPECT_EQ(half_to_float(0x7c00), INFINITY);
  EXPECT_EQ(half_to_float(0xfc00), -INFINITY);
  EXPECT_TRUE(std::isnan(half_to_float(0x7e00)));
  EXPECT_EQ(bfloat16_to_float(0x3f80), 1.0f);
  EXPECT_EQ(bfloat16_to_float(0xc020), -2.5f);
  EXPECT_EQ(printable("a\nb\\"), "a\\x0ab\\x5c");
  EXPECT_EQ(printable(std::string(300, 'x'), 10), "xxxxxxxxxx...");
}

// --- the real tiny checkpoints -----------------------------------------------------------------------------

class RealCheckpoint : public ::testing::TestWithParam<const char*> {
 protected:
  fs::path dir() const { return vectors_dir() / (std::string(GetParam()) + "-tiny"); }
};

TEST_P(RealCheckpoint, BothFormatsAgreeBitForBit) {
  auto st = open_safetensors(dir() / "model.safetensors");
  auto bin = open_torch_zip(dir() / "pytorch_model.bin");
  std::ifstream manifest_in(dir() / "manifest.json");
  const auto manifest = nlohmann::json::parse(manifest_in);
  const size_t expected = manifest.at("state_dict_tensors").get<size_t>();
  ASSERT_EQ(st->tensors().size(), expected);
  ASSERT_EQ(bin->tensors().size(), expected);

  std::set<std::string> names;
  for (const TensorRef& a : st->tensors()) {
    EXPECT_TRUE(names.insert(a.name).second) << "duplicate " << a.name;
    const TensorRef* b = bin->find(a.name);
    ASSERT_NE(b, nullptr) << a.name << " missing from pytorch_model.bin";
    EXPECT_EQ(a.dtype, b->dtype) << a.name;
    EXPECT_EQ(a.shape, b->shape) << a.name;
    ASSERT_EQ(a.nbytes, b->nbytes) << a.name;
    EXPECT_EQ(a.nbytes, static_cast<size_t>(a.numel()) * dtype_size(a.dtype)) << a.name;
    EXPECT_EQ(std::memcmp(a.data, b->data, a.nbytes), 0) << a.name << " differs";
    for (const TensorRef* t : {&a, b})
      EXPECT_EQ(reinterpret_cast<uintptr_t>(t->data) % dtype_size(t->dtype), 0u) << t->name << " misaligned";
    // Both files are read in place: torch.save stores its entries uncompressed and 64-byte aligned.
    EXPECT_EQ(a.mapped, a.nbytes != 0) << a.name;
    EXPECT_EQ(b->mapped, b->nbytes != 0) << a.name;
  }
  EXPECT_EQ(st->find("no.such.tensor"), nullptr);

  // open_weights picks the right reader for each.
  for (const char* file : {"model.safetensors", "pytorch_model.bin"}) {
    auto w = open_weights(dir() / file);
    ASSERT_EQ(w->tensors().size(), expected) << file;
    EXPECT_EQ(w->path(), dir() / file);
  }
}

TEST_P(RealCheckpoint, NamesAndShapesMatchTheReference) {
  std::ifstream config_in(dir() / "config.json");
  const auto config = nlohmann::json::parse(config_in);
  const int64_t num_latents = config.at("num_latents"), d_latents = config.at("d_latents");
  const int64_t num_labels = static_cast<int64_t>(config.at("id2label").size());
  auto bin = open_torch_zip(dir() / "pytorch_model.bin");
  auto shape_of = [&](const std::string& name) {
    const TensorRef* t = bin->find(name);
    return t ? t->shape : std::vector<int64_t>{-1};
  };
  EXPECT_EQ(shape_of("perceiver.embeddings.latents"), (std::vector<int64_t>{num_latents, d_latents}));
  EXPECT_EQ(shape_of("perceiver.decoder.decoder.final_layer.weight"),
            (std::vector<int64_t>{num_labels, d_latents}));
  EXPECT_EQ(shape_of("perceiver.decoder.decoder.final_layer.bias"), (std::vector<int64_t>{num_labels}));
  EXPECT_EQ(shape_of("perceiver.encoder.self_attends.0.attention.self.layernorm1.weight"),
            (std::vector<int64_t>{d_latents}));
  // Shared self-attention weights: only num_self_attends_per_block layers are stored.
  const int64_t per_block = config.at("num_self_attends_per_block");
  EXPECT_NE(
      bin->find("perceiver.encoder.self_attends." + std::to_string(per_block - 1) + ".mlp.dense1.weight"),
      nullptr);
  EXPECT_EQ(bin->find("perceiver.encoder.self_attends." + std::to_string(per_block) + ".mlp.dense1.weight"),
            nullptr);

  const TensorRef* conv = bin->find("perceiver.input_preprocessor.convnet.conv.weight");
  const TensorRef* tracked = bin->find("perceiver.input_preprocessor.convnet.batchnorm.num_batches_tracked");
  if (std::string(GetParam()) == "conv") {
    ASSERT_NE(conv, nullptr);
    EXPECT_EQ(conv->dtype, DType::f32);
    EXPECT_EQ(conv->shape, (std::vector<int64_t>{64, 3, 7, 7}));
    ASSERT_NE(tracked, nullptr);
    EXPECT_EQ(tracked->dtype, DType::i64);
    EXPECT_TRUE(tracked->shape.empty());
    EXPECT_EQ(tracked->nbytes, 8u);
    EXPECT_TRUE(ThrowsError([&] { tensor_to_f32(*tracked, "w.bin"); }, ErrorKind::model, "w.bin", "I64"));
    // fp32 conversion of an F32 tensor is a plain copy.
    std::vector<float> w = tensor_to_f32(*conv, "w.bin");
    ASSERT_EQ(w.size(), 9408u);
    EXPECT_EQ(std::memcmp(w.data(), conv->data, conv->nbytes), 0);
  } else {
    EXPECT_EQ(conv, nullptr);
    EXPECT_EQ(tracked, nullptr);
  }
  if (std::string(GetParam()) == "learned") {
    EXPECT_NE(bin->find("perceiver.input_preprocessor.position_embeddings.position_embeddings"), nullptr);
  }
}

INSTANTIATE_TEST_SUITE_P(Tiny, RealCheckpoint, ::testing::Values("conv", "fourier", "learned"),
                         [](const auto& info) { return std::string(info.param); });

// --- safetensors -------------------------------------------------------------------------------------------

TEST(Safetensors, SmallFileLoads) {
  auto path = temp_dir("st") / "model.safetensors";
  write_bytes(path, small_safetensors());
  auto f = open_safetensors(path);
  ASSERT_EQ(f->tensors().size(), 2u);
  EXPECT_EQ(f->tensors()[0].name, "w");  // header order is kept
  EXPECT_EQ(tensor_floats(*f->find("w")), (std::vector<float>{1.5f, -2.0f, 3.25f}));
  const TensorRef* n = f->find("n");
  ASSERT_NE(n, nullptr);
  int64_t v;
  std::memcpy(&v, n->data, 8);
  EXPECT_EQ(v, 42);
}

TEST(Safetensors, HalfTypesAndMisalignedDataAndEmptyTensors) {
  // Header padded so that the data section starts at an odd address: tensors get realigned copies.
  std::string header =
      R"({"h":{"dtype":"F16","shape":[2,2],"data_offsets":[0,8]},"b":{"dtype":"BF16","shape":[2],)"
      R"("data_offsets":[8,12]},"f":{"dtype":"F32","shape":[1],"data_offsets":[12,16]},)"
      R"("e":{"dtype":"F32","shape":[0,5],"data_offsets":[16,16]}})";
  if ((8 + header.size()) % 2 == 0) header += ' ';
  const uint16_t h[4] = {0x3c00, 0xc100, 0x0001, 0x7c00}, b[2] = {0x3f80, 0xc020};
  const float f = 0.1f;
  std::string data(16, '\0');
  std::memcpy(data.data(), h, 8);
  std::memcpy(data.data() + 8, b, 4);
  std::memcpy(data.data() + 12, &f, 4);
  auto path = temp_dir("st") / "half.safetensors";
  write_bytes(path, safetensors_bytes(header, data));
  auto file = open_weights(path);
  for (const TensorRef& t : file->tensors()) {
    EXPECT_NE(t.data, nullptr);
    EXPECT_EQ(reinterpret_cast<uintptr_t>(t.data) % dtype_size(t.dtype), 0u) << t.name;
  }
  EXPECT_EQ(tensor_floats(*file->find("h")),
            (std::vector<float>{1.0f, -2.5f, std::ldexp(1.0f, -24), INFINITY}));
  EXPECT_EQ(tensor_floats(*file->find("b")), (std::vector<float>{1.0f, -2.5f}));
  EXPECT_EQ(tensor_floats(*file->find("f")), (std::vector<float>{0.1f}));
  const TensorRef* e = file->find("e");
  EXPECT_EQ(e->nbytes, 0u);
  EXPECT_EQ(e->numel(), 0);
  EXPECT_TRUE(tensor_floats(*e).empty());
}

TEST(Safetensors, TruncatedAtManyPoints) {
  const std::string good = small_safetensors();
  const size_t header_end = 8 + (good.size() - 8 - 24);
  auto dir = temp_dir("st-trunc");
  for (size_t cut : {size_t{0}, size_t{3}, size_t{7}, size_t{8}, size_t{20}, header_end - 1, header_end,
                     header_end + 10, good.size() - 1}) {
    auto path = dir / ("cut" + std::to_string(cut) + ".safetensors");
    write_bytes(path, good.substr(0, cut));
    const char* needle = cut < 8            ? "too short"
                         : cut < header_end ? "exceeds file size"
                                            : "exceed the data section";
    EXPECT_TRUE(ThrowsError([&] { open_safetensors(path); }, ErrorKind::model, path, needle))
        << "cut " << cut;
  }
}

TEST(Safetensors, HeaderLengthLies) {
  auto dir = temp_dir("st-len");
  const std::string good = small_safetensors();
  auto path = dir / "long.safetensors";
  write_bytes(path, u64le(good.size()) + good.substr(8));
  EXPECT_TRUE(ThrowsError([&] { open_safetensors(path); }, ErrorKind::model, path, "exceeds file size"));
  write_bytes(path, u64le(uint64_t{1} << 62) + good.substr(8));
  EXPECT_TRUE(ThrowsError([&] { open_safetensors(path); }, ErrorKind::model, path, "100 MB"));
  write_bytes(path, u64le(~uint64_t{0}) + good.substr(8));
  EXPECT_TRUE(ThrowsError([&] { open_safetensors(path); }, ErrorKind::model, path, "100 MB"));
}

TEST(Safetensors, BadHeaders) {
  auto dir = temp_dir("st-bad");
  const std::string data(64, '\0');
  const std::string ok_entry = R"("a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]})";
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"{not json", "not valid JSON"},
      {"", "not valid JSON"},
      {"[1,2,3]", "not a JSON object"},
      {R"({"a":{"dtype":"F64","shape":[2],"data_offsets":[0,16]}})", "unsupported dtype 'F64'"},
      {R"({"a":{"dtype":"U8","shape":[2],"data_offsets":[0,2]}})", "unsupported dtype 'U8'"},
      {R"({"a":{"dtype":7,"shape":[2],"data_offsets":[0,8]}})", "dtype is not a string"},
      {R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[60,68]}})", "exceed the data section"},
      {R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,12]}})", "needs 8"},
      {R"({"a":{"dtype":"F32","shape":[3,3],"data_offsets":[0,8]}})", "needs 36"},
      {R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[8,0]}})", "reversed"},
      {R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0]}})", "data_offsets"},
      {R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[-4,4]}})", "data_offsets"},
      {R"({"a":{"dtype":"F32","shape":[2]}})", "lacks"},
      {R"({"a":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}})", "shape"},
      {R"({"a":{"dtype":"F32","shape":[2.0],"data_offsets":[0,8]}})", "shape"},
      {R"({"a":{"dtype":"F32","shape":"2","data_offsets":[0,8]}})", "shape is not an array"},
      {R"({"a":{"dtype":"F32","shape":[1,1,1,1,1,1,1,1,2],"data_offsets":[0,8]}})", "rank 9"},
      {R"({"a":{"dtype":"F32","shape":[4294967296,4294967296,4],"data_offsets":[0,8]}})",
       "too many elements"},
      {R"({"a":{"dtype":"F32","shape":[18446744073709551615],"data_offsets":[0,8]}})", "shape"},
      {R"({"a":[1]})", "not a JSON object"},
      {"{" + ok_entry + "," + ok_entry + "}", "duplicate key 'a'"},
      {R"({"a":{"dtype":"F32","dtype":"F32","shape":[2],"data_offsets":[0,8]}})", "duplicate key 'dtype'"},
      {"{" + ok_entry + R"(,"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})", "overlap"},
      {"{" + ok_entry + R"(,"b":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}})", "overlap"},
      {R"({"__metadata__":{"format":1}})", "__metadata__"},
      {R"({"__metadata__":[]})", "__metadata__"},
      {R"({"__metadata__":)" + std::string(1000, '[') + std::string(1000, ']') + "}", "nested"},
  };
  int i = 0;
  for (const auto& [header, needle] : cases) {
    auto path = dir / ("bad" + std::to_string(i++) + ".safetensors");
    write_bytes(path, safetensors_bytes(header, data));
    EXPECT_TRUE(ThrowsError([&] { open_safetensors(path); }, ErrorKind::model, path, needle)) << header;
  }
  // Adjacent, empty and unordered tensors are fine, and trailing spaces pad the header.
  auto path = dir / "good.safetensors";
  write_bytes(path,
              safetensors_bytes(R"({"b":{"dtype":"F32","shape":[2],"data_offsets":[8,16]},)" + ok_entry +
                                    R"(,"e":{"dtype":"I64","shape":[0],"data_offsets":[4,4]}}   )",
                                data));
  EXPECT_EQ(open_safetensors(path)->tensors().size(), 3u);
}

TEST(Weights, MissingFileAndUnknownFormats) {
  auto dir = temp_dir("missing");
  auto missing = dir / "nope" / "model.safetensors";
  EXPECT_TRUE(ThrowsError([&] { open_weights(missing); }, ErrorKind::model, missing, "no such file"));
  EXPECT_TRUE(ThrowsError([&] { open_safetensors(missing); }, ErrorKind::model, missing, "no such file"));
  EXPECT_TRUE(ThrowsError([&] { open_torch_zip(missing); }, ErrorKind::model, missing, "no such file"));
  EXPECT_TRUE(ThrowsError([&] { open_weights(dir); }, ErrorKind::model, dir, "not a regular file"));
  auto legacy = dir / "legacy.bin";
  write_bytes(legacy, std::string("\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19.", 15));
  EXPECT_TRUE(ThrowsError([&] { open_weights(legacy); }, ErrorKind::model, legacy, "legacy"));
  auto empty = dir / "empty.bin";
  write_bytes(empty, "");
  EXPECT_TRUE(ThrowsError([&] { open_weights(empty); }, ErrorKind::model, empty, "too short"));
}

// --- pytorch_model.bin -------------------------------------------------------------------------------------

const std::vector<float> kStorage = {0, 1, 2, 3, 4, 5};

std::vector<FakeTensor> fake_tensors() {
  return {
      {"a", "0", 6, 0, {2, 3}, {3, 1}},  // plain view of the whole storage
      {"t", "0", 6, 0, {3, 2}, {1, 3}},  // its transpose: not contiguous
      {"s", "0", 6, 2, {2}, {1}},        // offset view
      {"e", "0", 6, 0, {0, 3}, {3, 1}},  // empty
      {"n", "1", 1, 0, {}, {}, "LongStorage"},
  };
}

std::vector<std::pair<std::string, std::string>> fake_zip_entries(const std::string& root,
                                                                  const std::string& pickle) {
  int64_t n = 7;
  std::string long_bytes(8, '\0');
  std::memcpy(long_bytes.data(), &n, 8);
  return {{root + "/data.pkl", pickle},
          {root + "/data/0", floats_bytes(kStorage)},
          {root + "/data/1", long_bytes},
          {root + "/version", "3\n"}};
}

void check_fake(const TensorFile& f) {
  ASSERT_EQ(f.tensors().size(), 5u);
  EXPECT_EQ(f.tensors()[0].name, "a");  // pickle order
  EXPECT_EQ(tensor_floats(*f.find("a")), (std::vector<float>{0, 1, 2, 3, 4, 5}));
  EXPECT_EQ(f.find("t")->shape, (std::vector<int64_t>{3, 2}));
  EXPECT_EQ(tensor_floats(*f.find("t")), (std::vector<float>{0, 3, 1, 4, 2, 5}));
  EXPECT_EQ(tensor_floats(*f.find("s")), (std::vector<float>{2, 3}));
  EXPECT_EQ(f.find("e")->nbytes, 0u);
  EXPECT_NE(f.find("e")->data, nullptr);
  const TensorRef* n = f.find("n");
  ASSERT_EQ(n->dtype, DType::i64);
  int64_t v;
  std::memcpy(&v, n->data, 8);
  EXPECT_EQ(v, 7);
}

TEST(TorchZip, SyntheticArchivesLoad) {
  auto dir = temp_dir("tz");
  struct Variant {
    const char* root;
    bool ordered, metadata_arg, deflate;
  };
  for (const Variant& v :
       {Variant{"archive", false, false, false}, Variant{"pytorch_model", true, false, false},
        Variant{"archive", true, true, true}}) {
    SCOPED_TRACE(std::string(v.root) + (v.ordered ? " OrderedDict" : "") + (v.deflate ? " deflate" : ""));
    auto path = dir / "model.bin";
    write_zip(path, fake_zip_entries(v.root, state_dict_pickle(fake_tensors(), v.ordered, v.metadata_arg)),
              v.deflate);
    auto f = open_weights(path);
    check_fake(*f);
  }
}

TEST(TorchZip, RejectsBadTensorLayouts) {
  auto dir = temp_dir("tz-bad");
  const std::vector<std::pair<FakeTensor, std::string>> cases = {
      {{"x", "0", 6, 5, {2}, {1}}, "beyond its storage"},               // storage offset beyond storage
      {{"x", "0", 6, 7, {0}, {1}}, ""},                                 // empty tensor: fine anywhere
      {{"x", "0", 6, 0, {2, 3}, {4, 1}}, "beyond its storage"},         // strides run past the end
      {{"x", "0", 7, 0, {7}, {1}}, "has 24 bytes, expected 7 x 4"},     // numel lies about the entry
      {{"x", "9", 6, 0, {6}, {1}}, "no zip entry"},                     // missing storage entry
      {{"x", "0", 6, 0, {1LL << 40, 1LL << 40}, {1, 1}}, "too large"},  // overflow
      {{"x", "0", 6, 0, {1, 1, 1, 1, 1, 1, 1, 1, 1}, {1, 1, 1, 1, 1, 1, 1, 1, 1}}, "rank 9"},
      {{"x", "0", 6, 0, {2}, {1}, "DoubleStorage"}, "unsupported tensor storage type 'torch.DoubleStorage'"},
      {{"x", "../0", 6, 0, {2}, {1}}, "invalid storage key"},
  };
  int i = 0;
  for (const auto& [tensor, needle] : cases) {
    auto path = dir / ("bad" + std::to_string(i++) + ".bin");
    write_zip(path, fake_zip_entries("archive", state_dict_pickle({tensor})));
    if (needle.empty()) {
      EXPECT_EQ(open_torch_zip(path)->tensors().size(), 1u);
    } else {
      EXPECT_TRUE(ThrowsError([&] { open_torch_zip(path); }, ErrorKind::model, path, needle)) << needle;
    }
  }
  // Two tensors, one key, different storage types.
  auto path = dir / "mixed.bin";
  write_zip(path,
            fake_zip_entries("archive", state_dict_pickle({{"x", "0", 6, 0, {6}, {1}},
                                                           {"y", "0", 3, 0, {3}, {1}, "LongStorage"}})));
  EXPECT_TRUE(ThrowsError([&] { open_torch_zip(path); }, ErrorKind::model, path, "different types"));
  // Same name twice.
  write_zip(path, fake_zip_entries("archive", state_dict_pickle(
                                                  {{"x", "0", 6, 0, {6}, {1}}, {"x", "0", 6, 0, {6}, {1}}})));
  EXPECT_TRUE(ThrowsError([&] { open_torch_zip(path); }, ErrorKind::model, path, "duplicate key 'x'"));
}

TEST(TorchZip, RejectsNonTensorValuesAndWrappers) {
  auto dir = temp_dir("tz-values");
  auto path = dir / "model.bin";
  PickleBuilder p;  // {'epoch': 3}
  p.proto(2).op('}').str("epoch").integer(3).op('s').op('.');
  write_zip(path, fake_zip_entries("archive", p.bytes()));
  EXPECT_TRUE(ThrowsError([&] { open_torch_zip(path); }, ErrorKind::model, path, "entry 'epoch' is a int"));
  PickleBuilder q;  // {'state_dict': {}}
  q.proto(2).op('}').str("state_dict").op('}').op('s').op('.');
  write_zip(path, fake_zip_entries("archive", q.bytes()));
  EXPECT_TRUE(ThrowsError([&] { open_torch_zip(path); }, ErrorKind::model, path, "'state_dict' is a dict"));
  PickleBuilder r;  // [] at the top
  r.proto(2).op(']').op('.');
  write_zip(path, fake_zip_entries("archive", r.bytes()));
  EXPECT_TRUE(ThrowsError([&] { open_torch_zip(path); }, ErrorKind::model, path, "holds a list"));
}

TEST(TorchZip, ForbiddenGlobalsAreNeverResolved) {
  auto dir = temp_dir("tz-evil");
  auto path = dir / "pytorch_model.bin";
  // GLOBAL 'os system' called with ('echo pwned',)
  for (const auto& [module, name] :
       std::vector<std::pair<std::string, std::string>>{{"os", "system"},
                                                        {"posix", "system"},
                                                        {"subprocess", "Popen"},
                                                        {"torch", "load"},
                                                        {"builtins", "exec"},
                                                        {"torch._utils", "_rebuild_qtensor"}}) {
    PickleBuilder p;
    p.proto(2).global(module, name).str("echo pwned").op(0x85).op('R').op('.');
    write_zip(path, fake_zip_entries("archive", p.bytes()));
    EXPECT_TRUE(ThrowsError([&] { open_weights(path); }, ErrorKind::model, path,
                            "forbidden pickle global '" + module + "." + name + "'"));
  }
  // STACK_GLOBAL 'builtins' 'eval' (protocol 4 style, with MEMOIZE).
  PickleBuilder q;
  q.proto(4).short_str("builtins").op(0x94).short_str("eval").op(0x94).op(0x93).short_str("1+1").op(0x85);
  q.op('R').op('.');
  write_zip(path, fake_zip_entries("archive", q.bytes()));
  EXPECT_TRUE(ThrowsError([&] { open_weights(path); }, ErrorKind::model, path,
                          "forbidden pickle global 'builtins.eval'"));
  // Hidden inside a tensor's arguments, after valid entries.
  std::string pickle = state_dict_pickle(fake_tensors());
  pickle.insert(pickle.size() - 2, PickleBuilder().global("os", "system").op('0' /* POP */).bytes());
  write_zip(path, fake_zip_entries("archive", pickle));
  EXPECT_TRUE(ThrowsError([&] { open_weights(path); }, ErrorKind::model, path, "forbidden"));
}

TEST(TorchZip, TruncatedAndCorruptArchives) {
  auto dir = temp_dir("tz-trunc");
  const std::string good = read_bytes(vectors_dir() / "conv-tiny" / "pytorch_model.bin");
  for (size_t cut : {size_t{2}, size_t{4}, size_t{100}, good.size() / 2, good.size() - 22, good.size() - 1}) {
    auto path = dir / ("cut" + std::to_string(cut) + ".bin");
    write_bytes(path, good.substr(0, cut));
    // Two-byte files cannot be told apart from safetensors by magic; everything else is a broken zip.
    EXPECT_TRUE(ThrowsError([&] { open_weights(path); }, ErrorKind::model, path, cut < 4 ? "" : "zip"))
        << "cut " << cut;
  }
  auto path = dir / "garbage.bin";
  write_bytes(path, std::string("PK\x03\x04", 4) + std::string(200, 'x'));
  EXPECT_TRUE(ThrowsError([&] { open_weights(path); }, ErrorKind::model, path, "not a valid zip archive"));
  // Valid zip, but not a torch archive.
  write_zip(path, {{"hello.txt", "hi"}});
  EXPECT_TRUE(ThrowsError([&] { open_weights(path); }, ErrorKind::model, path, "no <root>/data.pkl"));
  write_zip(path, {{"a/data.pkl", "x"}, {"b/data.pkl", "y"}});
  EXPECT_TRUE(ThrowsError([&] { open_weights(path); }, ErrorKind::model, path, "more than one data.pkl"));
  // Big-endian archives are refused.
  auto entries = fake_zip_entries("archive", state_dict_pickle(fake_tensors()));
  entries.push_back({"archive/byteorder", "big"});
  write_zip(path, entries);
  EXPECT_TRUE(ThrowsError([&] { open_weights(path); }, ErrorKind::model, path, "byteorder"));
  // A truncated pickle inside a valid zip.
  std::string pickle = state_dict_pickle(fake_tensors());
  write_zip(path, fake_zip_entries("archive", pickle.substr(0, pickle.size() / 2)));
  EXPECT_TRUE(ThrowsError([&] { open_weights(path); }, ErrorKind::model, path, "truncated pickle"));
  // A corrupted storage byte fails the CRC check.
  std::string raw = read_bytes(vectors_dir() / "conv-tiny" / "pytorch_model.bin");
  size_t at = raw.find("pytorch_model/data/0");
  ASSERT_NE(at, std::string::npos);
  raw[at + 200] = static_cast<char>(raw[at + 200] ^ 0x55);  // inside the first storage's data
  write_bytes(path, raw);
  EXPECT_TRUE(ThrowsError([&] { open_weights(path); }, ErrorKind::model, path, "CRC error"));
}

TEST(TorchZip, MappedEntriesSurviveAZipCommentAndMatchTheReadPath) {
  // The central directory is found behind an archive comment; the mapped storages hold the same bytes as
  // the deflated copy of the same archive, which is read through libzip.
  auto dir = temp_dir("tz-map");
  std::string raw = read_bytes(vectors_dir() / "conv-tiny" / "pytorch_model.bin");
  ASSERT_EQ(raw.compare(raw.size() - 22, 4, "PK\x05\x06", 4), 0);  // no comment yet
  const std::string comment = "PK\x05\x06 a comment that looks like a signature";
  raw[raw.size() - 2] = static_cast<char>(comment.size());
  auto commented = dir / "commented.bin";
  write_bytes(commented, raw + comment);
  auto mapped = open_torch_zip(commented);

  std::vector<std::pair<std::string, std::string>> entries;
  {
    int err = 0;
    zip_t* z = zip_open((vectors_dir() / "conv-tiny" / "pytorch_model.bin").c_str(), ZIP_RDONLY, &err);
    ASSERT_NE(z, nullptr);
    for (zip_int64_t i = 0; i < zip_get_num_entries(z, 0); ++i) {
      zip_stat_t st;
      ASSERT_EQ(zip_stat_index(z, i, 0, &st), 0);
      std::string data(st.size, '\0');
      zip_file_t* f = zip_fopen_index(z, i, 0);
      ASSERT_NE(f, nullptr);
      ASSERT_EQ(zip_fread(f, data.data(), data.size()), zip_int64_t(data.size()));
      zip_fclose(f);
      entries.emplace_back(st.name, std::move(data));
    }
    zip_discard(z);
  }
  auto deflated = dir / "deflated.bin";
  write_zip(deflated, entries, /*deflate=*/true);
  auto read = open_torch_zip(deflated);

  ASSERT_EQ(mapped->tensors().size(), read->tensors().size());
  size_t mapped_count = 0;
  for (const TensorRef& a : mapped->tensors()) {
    const TensorRef* b = read->find(a.name);
    ASSERT_NE(b, nullptr) << a.name;
    EXPECT_FALSE(b->mapped) << a.name;
    ASSERT_EQ(a.nbytes, b->nbytes) << a.name;
    EXPECT_EQ(std::memcmp(a.data, b->data, a.nbytes), 0) << a.name;
    mapped_count += a.mapped;
  }
  EXPECT_GT(mapped_count, 0u);
}

// --- the unpickler on its own ------------------------------------------------------------------------------

TEST(Pickle, EveryTruncationFails) {
  const std::string pickle = state_dict_pickle(fake_tensors(), /*ordered=*/true, /*metadata_arg=*/true);
  auto span = [](const std::string& s) {
    return std::span<const std::byte>(reinterpret_cast<const std::byte*>(s.data()), s.size());
  };
  EXPECT_EQ(pickle::unpickle(span(pickle), "f").root().kind, pickle::Kind::dict);
  for (size_t cut = 0; cut < pickle.size(); ++cut) {
    std::string prefix = pickle.substr(0, cut);
    EXPECT_TRUE(ThrowsError([&] { pickle::unpickle(span(prefix), "f"); }, ErrorKind::model, "f", "")) << cut;
  }
  std::string longer = pickle + "N";
  EXPECT_TRUE(ThrowsError([&] { pickle::unpickle(span(longer), "f"); }, ErrorKind::model, "f", "trailing"));
}

TEST(Pickle, BitFlipsNeverCrash) {
  // Single-bit corruptions (2 of 8 bits per byte, for speed) of a state-dict pickle either still parses or
  // throws perceiver::Error.
  const std::string pickle = state_dict_pickle(fake_tensors(), true, true);
  size_t parsed = 0, failed = 0;
  for (size_t i = 0; i < pickle.size(); ++i) {
    for (int bit : {0, 7}) {
      std::string mutated = pickle;
      mutated[i] = static_cast<char>(mutated[i] ^ (1 << bit));
      try {
        pickle::unpickle(
            std::span<const std::byte>(reinterpret_cast<const std::byte*>(mutated.data()), mutated.size()),
            "f");
        ++parsed;
      } catch (const Error&) {
        ++failed;
      }
    }
  }
  EXPECT_GT(failed, 0u);
  EXPECT_GT(parsed, 0u);
}

TEST(Pickle, ZipLevelCorruptionNeverCrashes) {
  // Byte corruption of data.pkl inside a valid zip: loads or throws Error, never reads out of bounds.
  auto dir = temp_dir("tz-fuzz");
  auto path = dir / "model.bin";
  const std::string pickle = state_dict_pickle(fake_tensors());
  for (size_t i = 0; i < pickle.size(); i += 5) {
    std::string mutated = pickle;
    mutated[i] = static_cast<char>(mutated[i] + 1 + (i % 7));
    write_zip(path, fake_zip_entries("archive", mutated));
    try {
      auto f = open_torch_zip(path);
      for (const TensorRef& t : f->tensors())
        if (t.dtype != DType::i64) tensor_floats(t);  // touches every byte under ASan
    } catch (const Error& e) {
      EXPECT_EQ(e.kind(), ErrorKind::model);
    }
  }
}

TEST(Pickle, ValueKinds) {
  PickleBuilder p;  // [None, True, -5, 2**40, -1 (LONG1 1 byte), 1.5, (1, 2, 3), 'x', memo get]
  p.proto(2).op(']').op('q').op(1).mark();
  p.op('N').op(0x88).integer(-5).integer(int64_t{1} << 40);
  p.op(0x8a).op(1).op(0xff);                                                 // LONG1 -1
  p.op('G').op(0x3f).op(0xf8).op(0).op(0).op(0).op(0).op(0).op(0);           // BINFLOAT 1.5
  p.integer(1).integer(2).integer(3).op(0x87).short_str("x").op('h').op(1);  // TUPLE3, BINGET 1 (the list)
  p.op('e').integer(9).op('a').op('.');                                      // APPENDS, APPEND
  std::string s = p.bytes();
  auto result = pickle::unpickle(
      std::span<const std::byte>(reinterpret_cast<const std::byte*>(s.data()), s.size()), "f");
  const pickle::Value& list = result.root();
  ASSERT_EQ(list.kind, pickle::Kind::list);
  ASSERT_EQ(list.items.size(), 10u);
  EXPECT_EQ(list.items[0]->kind, pickle::Kind::none);
  EXPECT_EQ(list.items[1]->kind, pickle::Kind::boolean);
  EXPECT_EQ(list.items[2]->integer, -5);
  EXPECT_EQ(list.items[3]->integer, int64_t{1} << 40);
  EXPECT_EQ(list.items[4]->integer, -1);
  EXPECT_EQ(list.items[5]->floating, 1.5);
  EXPECT_EQ(list.items[6]->items.size(), 3u);
  EXPECT_EQ(list.items[7]->text, "x");
  EXPECT_EQ(list.items[8], &list);  // self-reference through the memo
  EXPECT_EQ(list.items[9]->integer, 9);
}

TEST(Pickle, LimitsAndMalformedPrograms) {
  auto run = [](const std::string& s, const pickle::Limits& limits = {}) {
    return pickle::unpickle(
        std::span<const std::byte>(reinterpret_cast<const std::byte*>(s.data()), s.size()), "f", limits);
  };
  auto fails = [&](const std::string& s, const std::string& needle, const pickle::Limits& limits = {}) {
    return ThrowsError([&] { run(s, limits); }, ErrorKind::model, "f", needle);
  };
  EXPECT_TRUE(fails(std::string("\x80\x02", 2), "truncated"));
  EXPECT_TRUE(fails("", "truncated"));
  EXPECT_TRUE(fails(std::string("\x80\x09.", 3), "protocol"));
  EXPECT_TRUE(fails("t.", "MARK expected"));
  EXPECT_TRUE(fails("a.", "underflow"));
  EXPECT_TRUE(fails("(N.", "not balanced"));
  EXPECT_TRUE(fails("NN.", "not balanced"));
  EXPECT_TRUE(fails("h\x05.", "memo key 5 undefined"));
  EXPECT_TRUE(fails("NNNs.", "SETITEM(S) on a None"));
  EXPECT_TRUE(fails("NNa.", "APPEND on a None"));
  EXPECT_TRUE(fails("NN\x85R.", "REDUCE on a None"));
  EXPECT_TRUE(fails(std::string("\x8a\x09") + std::string(9, '\x01') + ".", "too large"));
  EXPECT_TRUE(fails("X\xff\xff\xff\x7f", "exceeds the limit"));
  EXPECT_TRUE(fails(std::string("X\x10\x00\x00\x00", 5) + "abc", "truncated"));
  EXPECT_TRUE(fails("cos\nsys", "truncated"));
  EXPECT_TRUE(fails("c" + std::string(300, 'a') + "\nb\n.", "too long"));
  EXPECT_TRUE(fails("S'abc'\n.", "unsupported pickle opcode 0x53"));
  EXPECT_TRUE(fails("ctorch\nFloatStorage\n).", "not balanced"));
  EXPECT_TRUE(fails("ctorch\nFloatStorage\n)R.", "calling 'torch.FloatStorage'"));
  EXPECT_TRUE(fails("ccollections\nOrderedDict\nK\x01\x85R.", "OrderedDict() with arguments"));
  EXPECT_TRUE(fails("K\x01Q.", "persistent id"));
  EXPECT_TRUE(
      fails("NK\x01"
            "b.",
            "BUILD on a None"));
  pickle::Limits small;
  small.max_values = 10;
  EXPECT_TRUE(fails(std::string(20, 'N') + ".", "too many objects", small));
  small = {};
  small.max_marks = 4;
  EXPECT_TRUE(fails(std::string(5, '(') + ".", "nested too deeply", small));
  small = {};
  small.max_memo = 2;
  EXPECT_TRUE(fails("Nq\x01q\x02q\x03.", "memo too large", small));
  small = {};
  small.max_items = 8;
  EXPECT_TRUE(fails("]" + std::string(10, 'N') + ".", "too many items", small));
}

// --- .npy --------------------------------------------------------------------------------------------------

std::string npy_with_header(const std::string& dict, const std::string& data, int major = 1) {
  std::string header = dict;
  const size_t prefix = major == 1 ? 10 : 12;
  while ((prefix + header.size() + 1) % 64) header += ' ';
  header += '\n';
  std::string out = std::string("\x93NUMPY", 6) + static_cast<char>(major) + '\0';
  out += static_cast<char>(header.size() & 0xff);
  out += static_cast<char>(header.size() >> 8);
  if (major != 1) out += std::string(2, '\0');
  return out + header + data;
}

TEST(Npy, ReadsAndRewritesByteIdentically) {
  const fs::path golden = vectors_dir() / "conv-tiny" / "logits.npy";
  NpyArray a = read_npy(golden);
  EXPECT_EQ(a.dtype, "f4");
  EXPECT_EQ(a.shape, (std::vector<int64_t>{2, 10}));
  EXPECT_EQ(a.numel(), 20);
  std::vector<float> v = a.to_f32();
  ASSERT_EQ(v.size(), 20u);
  auto out = temp_dir("npy") / "logits.npy";
  write_npy_f32(out, a.shape, v.data());
  EXPECT_EQ(read_bytes(out), read_bytes(golden));  // numpy's exact layout
  EXPECT_TRUE(test::AllCloseScaled(read_npy(out).to_f32(), v, 0.0));
  // Other ranks, including 0-d, 1-d and empty.
  for (const std::vector<int64_t>& shape :
       std::vector<std::vector<int64_t>>{{}, {5}, {0}, {2, 0, 3}, {1, 2, 3, 4}}) {
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    std::vector<float> data(static_cast<size_t>(n));
    for (size_t i = 0; i < data.size(); ++i) data[i] = 0.5f * static_cast<float>(i) - 3.0f;
    write_npy_f32(out, shape, data.data());
    NpyArray back = read_npy(out);
    EXPECT_EQ(back.shape, shape);
    EXPECT_EQ(back.to_f32(), data);
    EXPECT_EQ(read_bytes(out).size() % 64, static_cast<size_t>(n * 4) % 64);  // header padded to 64
  }
  const std::string dict = "{'descr': '<f4', 'fortran_order': False, 'shape': (1, 2, 3, 4), }";
  EXPECT_EQ(read_bytes(out).substr(10, dict.size()), dict);
}

TEST(Npy, OtherDtypesAndVersions) {
  auto dir = temp_dir("npy-types");
  auto path = dir / "a.npy";
  std::vector<int64_t> ints = {-3, 0, 1LL << 40};
  std::string bytes(24, '\0');
  std::memcpy(bytes.data(), ints.data(), 24);
  write_bytes(path, npy_with_header("{'descr': '<i8', 'fortran_order': False, 'shape': (3,), }", bytes));
  NpyArray a = read_npy(path);
  EXPECT_EQ(a.dtype, "i8");
  EXPECT_EQ(a.to_i64(), ints);
  EXPECT_EQ(a.to_f32(), (std::vector<float>{-3.0f, 0.0f, 1099511627776.0f}));

  std::vector<double> doubles = {0.25, -1e10};
  bytes.assign(16, '\0');
  std::memcpy(bytes.data(), doubles.data(), 16);
  write_bytes(path,
              npy_with_header("{\"shape\": (1, 2), \"descr\": \"<f8\", \"fortran_order\": False}", bytes, 2));
  a = read_npy(path);  // version 2.0, double quotes, other key order, no trailing comma
  EXPECT_EQ(a.shape, (std::vector<int64_t>{1, 2}));
  EXPECT_EQ(a.to_f32(), (std::vector<float>{0.25f, -1e10f}));
  EXPECT_TRUE(ThrowsError([&] { a.to_i64(); }, ErrorKind::bad_input, path, "not an integer type"));

  write_bytes(path,
              npy_with_header("{'descr': '|u1', 'fortran_order': False, 'shape': (2,), }", "\x05\xff", 3));
  a = read_npy(path);
  EXPECT_EQ(a.to_i64(), (std::vector<int64_t>{5, 255}));
  write_bytes(path, npy_with_header("{'descr': '|b1', 'fortran_order': False, 'shape': (), }", "\x01"));
  EXPECT_EQ(read_npy(path).to_i64(), (std::vector<int64_t>{1}));
  const uint16_t half[2] = {0x3c00, 0xc100};
  write_bytes(path, npy_with_header("{'descr': '<f2', 'fortran_order': False, 'shape': (2,), }",
                                    std::string(reinterpret_cast<const char*>(half), 4)));
  EXPECT_EQ(read_npy(path).to_f32(), (std::vector<float>{1.0f, -2.5f}));

  const fs::path predictions =
      test::shared_dir() / "models" / "fashion-mnist-conv" / "expected" / "test_predictions.npy";
  if (fs::exists(predictions)) {
    std::vector<int64_t> labels = read_npy(predictions).to_i64();
    EXPECT_EQ(labels.size(), 10000u);
    for (int64_t l : labels) ASSERT_TRUE(l >= 0 && l < 10) << l;
  }
}

TEST(Npy, RejectsLyingOrUnsupportedFiles) {
  auto dir = temp_dir("npy-bad");
  const std::string golden = read_bytes(vectors_dir() / "conv-tiny" / "logits.npy");
  auto replaced = [&](const std::string& from, const std::string& to) {
    std::string s = golden;
    size_t at = s.find(from);
    if (at == std::string::npos) throw std::runtime_error("pattern not found");
    return s.replace(at, from.size(), to);
  };
  const std::string f4 = std::string(16, '\0');
  const std::vector<std::pair<std::string, std::string>> cases = {
      {replaced("(2, 10)", "(2, 11)"), "header promises 88 data bytes"},  // lying shape: too few bytes
      {replaced("(2, 10)", "(2, 9) "), "header promises 72 data bytes"},  // lying shape: too many bytes
      {golden.substr(0, golden.size() - 4), "header promises"},           // truncated data
      {golden.substr(0, 50), "exceeds file size"},                        // truncated header
      {golden.substr(0, 5), "bad magic"},
      {replaced("False", "True "), "fortran_order"},
      {replaced("<f4", ">f4"), "big-endian"},
      {replaced("'<f4'", "'|O' "), "object arrays"},
      {replaced("<f4", "<c8"), "unsupported dtype '<c8'"},
      {replaced("<f4", "<U1"), "unsupported dtype"},
      {replaced("'shape'", "'shapo'"), "unexpected or repeated key 'shapo'"},
      {replaced("(2, 10)", "(2,-1) "), "shape entries"},
      {replaced("(2, 10)", "[2, 10]"), "shape is not a tuple"},
      {replaced("), }  ", "), }x "), "trailing characters"},
      {replaced("NUMPY\x01", std::string("NUMPY\x04", 6)), "version 4.0"},
      {npy_with_header("{'descr': '<f4', 'fortran_order': False, 'shape': (4), }", f4), "expected (n,)"},
      {npy_with_header("{'descr': '<f4', 'fortran_order': False, }", f4), "missing"},
      {npy_with_header("{'descr': '<f4', 'fortran_order': False, 'shape': (4,), 'descr': '<f4'}", f4),
       "repeated key"},
      {npy_with_header("{'descr': [('a', '<f4')], 'fortran_order': False, 'shape': (4,), }", f4),
       "structured"},
      {npy_with_header("{'descr': '<f4', 'fortran_order': False, 'shape': (4294967296, 4294967296, 2), }",
                       f4),
       "too many elements"},
      {npy_with_header("{'descr': '<f4', 'fortran_order': False, 'shape': (99999999999999999999,), }", f4),
       "too large"},
  };
  int i = 0;
  for (const auto& [bytes, needle] : cases) {
    auto path = dir / ("bad" + std::to_string(i++) + ".npy");
    write_bytes(path, bytes);
    EXPECT_TRUE(ThrowsError([&] { read_npy(path); }, ErrorKind::bad_input, path, needle)) << needle;
  }
  auto missing = dir / "missing.npy";
  EXPECT_TRUE(ThrowsError([&] { read_npy(missing); }, ErrorKind::bad_input, missing, "no such file"));
}

// --- atomic writes -----------------------------------------------------------------------------------------

TEST(AtomicFile, WritesReplacesAndCleansUp) {
  auto dir = temp_dir("atomic");
  auto path = dir / "out.txt";
  write_file_atomic(path, "first");
  EXPECT_EQ(read_bytes(path), "first");
  write_file_atomic(path, std::string(100000, 'z'));
  EXPECT_EQ(read_bytes(path), std::string(100000, 'z'));
  write_file_atomic(path, "");
  EXPECT_EQ(read_bytes(path), "");
  size_t count = 0;
  for (const auto& entry : fs::directory_iterator(dir))
    count += entry.path().filename() != "out.txt" ? 100 : 1;
  EXPECT_EQ(count, 1u) << "temporary files left behind";

  auto missing = dir / "no" / "such" / "dir" / "out.npy";
  float x = 1;
  EXPECT_TRUE(ThrowsError([&] { write_npy_f32(missing, {1}, &x); }, ErrorKind::io, missing, "temporary"));
  EXPECT_FALSE(fs::exists(dir / "no"));

  // Renaming onto a directory fails after the temporary was written: it must be removed.
  auto target_dir = dir / "taken";
  fs::create_directory(target_dir);
  fs::create_directory(target_dir / "child");
  EXPECT_TRUE(ThrowsError([&] { write_file_atomic(target_dir, "x"); }, ErrorKind::io, target_dir, "rename"));
  count = 0;
  for (const auto& entry : fs::directory_iterator(dir))
    count += entry.path().filename().string().find(".tmp-") != std::string::npos;
  EXPECT_EQ(count, 0u);
}

}  // namespace
}  // namespace perceiver
