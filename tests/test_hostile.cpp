// Hostile inputs, generated here at test time (from the conv-tiny golden vectors where a real file helps):
// truncated and corrupted weights, malicious pickles, absurd configs, lying .npy headers, broken and
// oversized images, directories where files belong. Each is fed to `perceiver classify` (or `preprocess`) and
// must be refused: exit code in 1..127 (never 70, "internal"), one stderr line "error: <file>: ..." naming
// the file, no sanitizer report, no output file or temporary left behind, and nothing executed (the pickles
// try to `touch` a sentinel file).
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <zip.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <limits>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "test_util.h"

namespace perceiver {
namespace {

namespace fs = std::filesystem;
using namespace std::string_literals;
using Bytes = std::string;  // binary file contents

std::string quote(const fs::path& p) {
  std::string out = "'";
  for (char c : p.string()) out += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return out + "'";
}

Bytes read_bytes(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  return Bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

void write_bytes(const fs::path& p, const Bytes& bytes) {
  fs::create_directories(p.parent_path());
  std::ofstream out(p, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), std::streamsize(bytes.size()));
  ASSERT_TRUE(out.good()) << p;
}

void put_le(Bytes* b, uint64_t v, int n) {
  for (int i = 0; i < n; ++i) b->push_back(char((v >> (8 * i)) & 0xff));
}
void put_be32(Bytes* b, uint32_t v) {
  for (int i = 3; i >= 0; --i) b->push_back(char((v >> (8 * i)) & 0xff));
}

// --- file builders -----------------------------------------------------------------------------------------

Bytes safetensors(const std::string& header, const Bytes& data) {
  Bytes b;
  put_le(&b, header.size(), 8);
  return b + header + data;
}

// The real conv-tiny checkpoint with its header edited.
Bytes edit_safetensors(const Bytes& real, const std::function<void(nlohmann::ordered_json&)>& edit) {
  uint64_t n = 0;
  std::memcpy(&n, real.data(), 8);
  auto header = nlohmann::ordered_json::parse(real.substr(8, n));
  edit(header);
  return safetensors(header.dump(), real.substr(8 + n));
}

Bytes npy(const std::string& dict, const Bytes& data, int version = 1) {
  std::string header = dict;
  const size_t prefix = version == 1 ? 10 : 12;
  while ((prefix + header.size() + 1) % 64) header += ' ';
  header += '\n';
  Bytes b = "\x93NUMPY";
  b += char(version);
  b += char(0);
  put_le(&b, header.size(), version == 1 ? 2 : 4);
  return b + header + data;
}

Bytes floats(size_t n, float value = 0.25f) {
  Bytes b(n * 4, '\0');
  for (size_t i = 0; i < n; ++i) std::memcpy(&b[i * 4], &value, 4);
  return b;
}

uint32_t crc32_of(const Bytes& b) {
  uint32_t crc = 0xffffffffu;
  for (unsigned char c : b) {
    crc ^= c;
    for (int k = 0; k < 8; ++k) crc = (crc >> 1) ^ (0xedb88320u & (0u - (crc & 1u)));
  }
  return ~crc;
}

Bytes png_chunk(const std::string& type, const Bytes& body) {
  Bytes b;
  put_be32(&b, uint32_t(body.size()));
  b += type + body;
  put_be32(&b, crc32_of(type + body));
  return b;
}

// zlib stream of stored (uncompressed) deflate blocks.
Bytes zlib_stored(const Bytes& data) {
  Bytes b = "\x78\x01";
  size_t pos = 0;
  do {
    const size_t n = std::min<size_t>(data.size() - pos, 65535);
    b += char(pos + n == data.size() ? 1 : 0);
    put_le(&b, n, 2);
    put_le(&b, ~n & 0xffff, 2);
    b += data.substr(pos, n);
    pos += n;
  } while (pos < data.size());
  uint32_t a = 1, s = 0;
  for (unsigned char c : data) {
    a = (a + c) % 65521;
    s = (s + a) % 65521;
  }
  put_be32(&b, (s << 16) | a);
  return b;
}

// An 8-bit RGB PNG declaring width x height, with `rows` rows of pixel data.
Bytes png(uint32_t width, uint32_t height, uint32_t rows) {
  Bytes ihdr;
  put_be32(&ihdr, width);
  put_be32(&ihdr, height);
  ihdr += Bytes("\x08\x02\x00\x00\x00", 5);
  Bytes raw;
  for (uint32_t y = 0; y < rows; ++y) raw += '\0' + Bytes(size_t(width) * 3, char(y * 7));
  return "\x89PNG\r\n\x1a\n" + png_chunk("IHDR", ihdr) + png_chunk("IDAT", zlib_stored(raw)) +
         png_chunk("IEND", "");
}

// Pickle programs, opcode by opcode.
struct Pickle {
  Bytes b;
  Pickle& op(const Bytes& o) { return b += o, *this; }
  Pickle& proto(int v) { return op(Bytes("\x80", 1) + char(v)); }
  Pickle& global(const std::string& module, const std::string& name) {
    return op("c" + module + "\n" + name + "\n");
  }
  Pickle& str(const std::string& s) {
    b += 'X';
    put_le(&b, s.size(), 4);
    return op(s);
  }
  Pickle& integer(int32_t v) {
    b += 'J';
    put_le(&b, uint32_t(v), 4);
    return *this;
  }
  Pickle& mark() { return op("("); }
  Pickle& tuple() { return op("t"); }
  Pickle& tuple1() { return op("\x85"); }
  Pickle& reduce() { return op("R"); }
  Pickle& stop() { return op("."); }
};

struct ZipEntry {
  std::string name;
  Bytes data;
};

Bytes zip_archive(const fs::path& scratch, const std::vector<ZipEntry>& entries) {
  int error = 0;
  fs::remove(scratch);
  zip_t* z = zip_open(scratch.c_str(), ZIP_CREATE | ZIP_TRUNCATE, &error);
  if (!z) return {};
  for (const auto& e : entries) {
    zip_source_t* src = zip_source_buffer(z, e.data.data(), e.data.size(), 0);
    zip_int64_t index = zip_file_add(z, e.name.c_str(), src, ZIP_FL_ENC_UTF_8);
    zip_set_file_compression(z, zip_uint64_t(index), ZIP_CM_STORE, 0);
  }
  zip_close(z);
  Bytes out = read_bytes(scratch);
  fs::remove(scratch);
  return out;
}

// --- the harness -------------------------------------------------------------------------------------------

class Hostile : public ::testing::Test {
 protected:
  void SetUp() override {
    root_ = test::temp_dir("hostile");
    out_ = root_ / "out";
    fs::create_directories(out_);
    sentinel_ = root_ / "pwned";
    conv_ = test::vectors_dir() / "conv-tiny";
    ASSERT_TRUE(fs::exists(conv_ / "model.safetensors")) << "no golden vectors at " << conv_;
    pixels_ = conv_ / "pixel_values.npy";
  }
  void TearDown() override {
    EXPECT_FALSE(fs::exists(sentinel_)) << "a payload ran";
    // No temporary or partial file anywhere under the test's folder.
    for (auto& e : fs::recursive_directory_iterator(root_))
      EXPECT_EQ(e.path().filename().string().find(".tmp-"), std::string::npos) << e.path();
  }

  // A model folder: config.json (text, or the real one) and a weights file (bytes, or a link to the real
  // one).
  fs::path model(const std::string& tag, const std::string* config, const std::string& weights_name,
                 const Bytes* weights) {
    fs::path dir = root_ / ("model-" + tag);
    fs::create_directories(dir);
    if (config)
      write_bytes(dir / "config.json", *config);
    else
      fs::copy_file(conv_ / "config.json", dir / "config.json");
    if (weights)
      write_bytes(dir / weights_name, *weights);
    else if (!weights_name.empty())
      fs::create_symlink(conv_ / weights_name, dir / weights_name);
    return dir;
  }
  fs::path weights_model(const std::string& tag, const std::string& name, const Bytes& bytes) {
    return model(tag, nullptr, name, &bytes);
  }
  fs::path config_model(const std::string& tag, const std::string& config) {
    return model(tag, &config, "model.safetensors", nullptr);
  }
  fs::path file(const std::string& name, const Bytes& bytes) {
    write_bytes(root_ / "in" / name, bytes);
    return root_ / "in" / name;
  }
  Bytes zip_file(const std::vector<ZipEntry>& entries) { return zip_archive(root_ / "scratch.zip", entries); }
  // A torch.save-like archive around a pickle program.
  Bytes torch_zip(const Bytes& pickle, std::vector<ZipEntry> extra = {}) {
    extra.insert(extra.begin(), {{"archive/data.pkl", pickle}, {"archive/version", "3\n"}});
    return zip_file(extra);
  }

  // Runs the CLI (stdout discarded) and checks the refusal. `names`: what the message must mention.
  void expect_refused(const std::string& what, const std::string& command_args, const std::string& names,
                      int expected_code = 0) {
    SCOPED_TRACE(what + ": perceiver " + command_args);
    std::string err;
    // stderr alone is captured: { ... 2>&1 >/dev/null; } sends the CLI's stdout away.
    const int rc =
        test::run_command("{ " + quote(test::cli_path()) + " " + command_args + " 2>&1 >/dev/null; }", &err);
    if (std::getenv("PERCEIVER_HOSTILE_VERBOSE")) std::printf("[%d] %-40s %s", rc, what.c_str(), err.c_str());
    EXPECT_GE(rc, 1) << err;
    EXPECT_LE(rc, 127) << err;
    EXPECT_NE(rc, 70) << "internal error: " << err;
    if (expected_code) {
      EXPECT_EQ(rc, expected_code) << err;
    }
    EXPECT_EQ(err.rfind("error: ", 0), 0u) << err;
    EXPECT_EQ(std::count(err.begin(), err.end(), '\n'), 1) << "not one line: " << err;
    EXPECT_NE(err.find(names), std::string::npos) << "does not name " << names << ": " << err;
    for (const char* bad : {"Sanitizer", "runtime error", "terminate called", "Aborted", "Segmentation"})
      EXPECT_EQ(err.find(bad), std::string::npos) << err;
    int left = 0;
    for (auto& e : fs::directory_iterator(out_)) left += !e.is_directory() || e.path().filename() != "keep";
    EXPECT_EQ(left, 0) << "output left behind in " << out_;
    EXPECT_FALSE(fs::exists(sentinel_)) << "a payload ran";
  }
  std::string logits_out() const { return " --logits-out " + quote(out_ / "logits.npy"); }
  void refuse_pixels(const std::string& what, const fs::path& model_dir, const fs::path& pixels,
                     const std::string& names, int code = 0) {
    expect_refused(what, "classify --model " + quote(model_dir) + " --pixels " + quote(pixels) + logits_out(),
                   names, code);
  }
  void refuse_weights(const std::string& what, const fs::path& model_dir, const std::string& weights_name) {
    refuse_pixels(what, model_dir, pixels_, (model_dir / weights_name).string(), 4);
  }
  void refuse_image(const std::string& what, const fs::path& image, const std::string& extra = "") {
    expect_refused(
        what,
        "classify --model " + quote(conv_) + " --preprocess-defaults " + extra + quote(image) + logits_out(),
        image.string(), 3);
  }

  fs::path root_, out_, sentinel_, conv_, pixels_;
};

TEST_F(Hostile, SafetensorsTruncatedCorruptedOrLying) {
  const Bytes real = read_bytes(conv_ / "model.safetensors");
  uint64_t hlen = 0;
  std::memcpy(&hlen, real.data(), 8);
  const std::string st = "model.safetensors";
  std::vector<std::pair<std::string, Bytes>> cases = {
      {"zero bytes", ""},
      {"three bytes", real.substr(0, 3)},
      {"header cut", real.substr(0, 8 + hlen / 2)},
      {"data cut in half", real.substr(0, 8 + hlen + (real.size() - 8 - hlen) / 2)},
      {"last byte missing", real.substr(0, real.size() - 1)},
      {"header length 2^64-1", Bytes(8, '\xff') + real.substr(8)},
      {"header length = file size",
       [&] {
         Bytes b = real;
         uint64_t n = b.size();
         std::memcpy(&b[0], &n, 8);
         return b;
       }()},
      {"header length 0", Bytes(8, '\0') + real.substr(8)},
      {"header JSON corrupted",
       [&] {
         Bytes b = real;
         b[8] = 'X';
         b[8 + hlen / 2] = '\x01';
         return b;
       }()},
      {"garbage",
       [] {
         Bytes b;
         uint32_t x = 12345;
         for (int i = 0; i < 5000; ++i) b += char((x = x * 1103515245 + 12345) >> 16);
         return b;
       }()},
      {"header is an array", safetensors("[]", "")},
      {"nested 100000 deep",
       safetensors("{\"a\":" + std::string(100000, '[') + std::string(100000, ']') + "}", "")},
      {"duplicate keys",
       safetensors(
           R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})",
           floats(1))},
      {"unsupported dtype",
       safetensors(R"({"a":{"dtype":"F64","shape":[1],"data_offsets":[0,8]}})", floats(2))},
      {"shape product overflows",
       safetensors(R"({"a":{"dtype":"F32","shape":[4294967296,4294967296,4294967296],"data_offsets":[0,4]}})",
                   floats(1))},
      {"negative dimension",
       safetensors(R"({"a":{"dtype":"F32","shape":[-1,4],"data_offsets":[0,16]}})", floats(4))},
      {"rank 64", safetensors(R"({"a":{"dtype":"F32","shape":[)" +
                                  [] {
                                    std::string s = "1";
                                    for (int i = 1; i < 64; ++i) s += ",1";
                                    return s;
                                  }() +
                                  R"(],"data_offsets":[0,4]}})",
                              floats(1))},
      {"offsets past the end",
       safetensors(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,9223372036854775800]}})", floats(2))},
      {"offsets reversed",
       safetensors(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[8,4]}})", floats(2))},
      {"offsets as floats",
       safetensors(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4.0]}})", floats(1))},
      {"overlapping tensors",
       safetensors(
           R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})",
           floats(3))},
      {"metadata not strings", safetensors(R"({"__metadata__":{"format":7}})", "")},
      {"empty header (every tensor missing)", safetensors("{}", "")},
      {"latents transposed", edit_safetensors(real,
                                              [](auto& h) {
                                                auto& s = h["perceiver.embeddings.latents"]["shape"];
                                                std::swap(s[0], s[1]);
                                              })},
      {"latents missing", edit_safetensors(real, [](auto& h) { h.erase("perceiver.embeddings.latents"); })},
      {"latents as I64", edit_safetensors(real,
                                          [](auto& h) {
                                            auto& t = h["perceiver.embeddings.latents"];
                                            t["dtype"] = "I64";
                                            t["shape"][1] = t["shape"][1].template get<int>() / 2;
                                          })},
      {"unexpected extra tensor",
       edit_safetensors(real,
                        [](auto& h) {
                          h["evil\n\x1b[2J"] = {{"dtype", "F32"}, {"shape", {0}}, {"data_offsets", {0, 0}}};
                        })},
  };
  int i = 0;
  for (const auto& [what, bytes] : cases)
    refuse_weights(what, weights_model("st" + std::to_string(i++), st, bytes), st);
  // A well-formed file whose floats are all NaN: no made-up probabilities, the model folder is named.
  Bytes nan_weights = real;
  const float nan = std::numeric_limits<float>::quiet_NaN();
  for (size_t k = 8 + hlen; k + 4 <= nan_weights.size(); k += 4) std::memcpy(&nan_weights[k], &nan, 4);
  auto dir = weights_model("st-nan", st, nan_weights);
  refuse_pixels("NaN weights", dir, pixels_, dir.string(), 4);
}

TEST_F(Hostile, TorchZipTruncatedCorruptedOrLying) {
  const Bytes real = read_bytes(conv_ / "pytorch_model.bin");
  const std::string bin = "pytorch_model.bin";
  auto patched = [&](const std::string& signature, size_t field, uint32_t value) {
    Bytes b = real;
    size_t at = b.find(signature);
    if (at == Bytes::npos) return b;
    for (int k = 0; k < 4; ++k) b[at + field + k] = char((value >> (8 * k)) & 0xff);
    return b;
  };
  std::vector<std::pair<std::string, Bytes>> cases = {
      {"zero bytes", ""},
      {"local header only", real.substr(0, 4)},
      {"cut in half", real.substr(0, real.size() / 2)},
      {"end of central directory cut", real.substr(0, real.size() - 10)},
      {"storage bytes corrupted (CRC)",
       [&] {
         Bytes b = real;
         for (size_t k = 0; k < 64; ++k) b[real.size() / 3 + k] ^= 0x5a;
         return b;
       }()},
      {"central directory corrupted",
       [&] {
         Bytes b = real;
         size_t at = b.find("PK\x01\x02");
         if (at != Bytes::npos) b.replace(at, 64, Bytes(64, '\xee'));
         return b;
       }()},
      {"central directory lies about a size", patched(Bytes("PK\x01\x02", 4), 24, 0xfffffff0u)},
      {"local header lies about a size", patched(Bytes("PK\x03\x04", 4), 22, 0x7ffffff0u)},
      {"no data.pkl", zip_file({{"archive/version", "3\n"}})},
      {"two data.pkl", zip_file({{"a/data.pkl", Pickle().proto(2).op("}").stop().b},
                                 {"b/data.pkl", Pickle().proto(2).op("}").stop().b}})},
      {"big-endian byteorder",
       zip_file({{"archive/data.pkl", Pickle().proto(2).op("}").stop().b}, {"archive/byteorder", "big"}})},
  };
  int i = 0;
  for (const auto& [what, bytes] : cases)
    refuse_weights(what, weights_model("zip" + std::to_string(i++), bin, bytes), bin);
}

TEST_F(Hostile, PicklesThatTryToRunCodeExecuteNothing) {
  const std::string bin = "pytorch_model.bin";
  const std::string touch = "touch " + sentinel_.string();
  const std::string py = "__import__('os').system('" + touch + "')";
  // ('storage', <storage class>, key, location, numel) as a persistent id
  auto storage = [](Pickle& p, const std::string& module, const std::string& cls, int32_t numel) -> Pickle& {
    return p.mark().str("storage").global(module, cls).str("0").str("cpu").integer(numel).tuple().op("Q");
  };
  auto tensor =
      [&](const std::string& size_stride) {  // {'w': _rebuild_tensor_v2(storage, 0, size, stride, False, {})}
        Pickle p;
        p.proto(2).op("}").str("w").global("torch._utils", "_rebuild_tensor_v2").mark();
        storage(p, "torch", "FloatStorage", 1)
            .integer(0)
            .op(size_stride)
            .op("\x89}")
            .tuple()
            .reduce()
            .op("s")
            .stop();
        return p.b;
      };
  std::vector<std::pair<std::string, Bytes>> cases = {
      {"os.system", Pickle().proto(2).global("os", "system").str(touch).tuple1().reduce().stop().b},
      {"posix.system", Pickle().proto(2).global("posix", "system").str(touch).tuple1().reduce().stop().b},
      {"nt.system", Pickle().proto(2).global("nt", "system").str(touch).tuple1().reduce().stop().b},
      {"builtins.eval", Pickle().proto(2).global("builtins", "eval").str(py).tuple1().reduce().stop().b},
      {"builtins.exec", Pickle().proto(2).global("builtins", "exec").str(py).tuple1().reduce().stop().b},
      {"__builtin__.eval",
       Pickle().proto(2).global("__builtin__", "eval").str(py).tuple1().reduce().stop().b},
      {"builtins.getattr", Pickle()
                               .proto(2)
                               .global("builtins", "getattr")
                               .global("os", "system")
                               .str("__call__")
                               .op("\x86")
                               .reduce()
                               .stop()
                               .b},
      {"subprocess.check_call", Pickle()
                                    .proto(2)
                                    .global("subprocess", "check_call")
                                    .op("]")
                                    .mark()
                                    .str("touch")
                                    .str(sentinel_.string())
                                    .op("e")
                                    .tuple1()
                                    .reduce()
                                    .stop()
                                    .b},
      {"subprocess.Popen", Pickle()
                               .proto(2)
                               .global("subprocess", "Popen")
                               .mark()
                               .str("/bin/sh")
                               .str("-c")
                               .str(touch)
                               .op("l")
                               .tuple1()
                               .reduce()
                               .stop()
                               .b},
      {"STACK_GLOBAL os.system (protocol 4)",
       Pickle().proto(4).op("\x8c\x02os\x8c\x06system\x93").str(touch).tuple1().reduce().stop().b},
      {"INST os.system", Pickle().proto(2).mark().str(touch).op("ios\nsystem\n").stop().b},
      {"OBJ os.system", Pickle().proto(2).mark().global("os", "system").str(touch).op("o").stop().b},
      {"NEWOBJ subprocess.Popen", Pickle()
                                      .proto(2)
                                      .global("subprocess", "Popen")
                                      .mark()
                                      .str(touch)
                                      .tuple()
                                      .tuple1()
                                      .op("\x81")
                                      .stop()
                                      .b},
      {"EXT1 registry call", Pickle().proto(2).op("\x82\x01").str(touch).tuple1().reduce().stop().b},
      {"text PERSID", Pickle().proto(2).op("Pos.system\n").stop().b},
      {"payload inside the state dict", Pickle()
                                            .proto(2)
                                            .op("}")
                                            .mark()
                                            .str("w")
                                            .global("os", "system")
                                            .str(touch)
                                            .tuple1()
                                            .reduce()
                                            .op("u")
                                            .stop()
                                            .b},
      {"payload as the storage class",
       [&] {
         Pickle p;
         p.proto(2).op("}").str("w");
         storage(p, "os", "system", 1);
         return p.op("s").stop().b;
       }()},
      {"payload as BUILD state", Pickle()
                                     .proto(2)
                                     .global("collections", "OrderedDict")
                                     .op(")")
                                     .reduce()
                                     .global("os", "system")
                                     .str(touch)
                                     .tuple1()
                                     .reduce()
                                     .op("b")
                                     .stop()
                                     .b},
      {"runpy._run_code",
       Pickle().proto(2).global("runpy", "_run_code").str(py).op("}").op("\x86").reduce().stop().b},
      {"pickle.loads of a payload",
       Pickle().proto(2).global("pickle", "loads").str("cos\nsystem\n").tuple1().reduce().stop().b},
      {"torch.load", Pickle().proto(2).global("torch", "load").str("/etc/passwd").tuple1().reduce().stop().b},
      {"100000 nested MARKs", Pickle().proto(2).op(std::string(100000, '(')).stop().b},
      {"undefined memo key", Pickle().proto(2).op("j\xff\xff\xff\x7f").stop().b},
      {"stride-0 broadcast of one element to 2^40",
       tensor("J\x00\x00\x10\x00J\x00\x00\x10\x00\x86K\x00K\x00\x86"s)},
      {"offset beyond its storage", tensor("K\x05\x85K\x01\x85")},
      {"storage key with a path",
       [&] {
         Pickle p;
         p.proto(2)
             .op("}")
             .str("w")
             .mark()
             .str("storage")
             .global("torch", "FloatStorage")
             .str("../../etc/passwd")
             .str("cpu")
             .integer(1)
             .tuple()
             .op("Q")
             .op("s")
             .stop();
         return p.b;
       }()},
      {"truncated program", Pickle().proto(2).op("}").str("w").b.substr(0, 9)},
  };
  int i = 0;
  for (const auto& [what, program] : cases) {
    std::vector<ZipEntry> storages = {{"archive/data/0", floats(1)}};
    refuse_weights(what, weights_model("pkl" + std::to_string(i++), bin, torch_zip(program, storages)), bin);
  }
  EXPECT_FALSE(fs::exists(sentinel_));
}

TEST_F(Hostile, ConfigsWithAbsurdOrMissingValues) {
  const std::string real = read_bytes(conv_ / "config.json");
  auto edited = [&](const std::function<void(nlohmann::json&)>& edit) {
    auto j = nlohmann::json::parse(real);
    edit(j);
    return j.dump();
  };
  std::vector<std::pair<std::string, std::string>> cases = {
      {"zero bytes", ""},
      {"not JSON", "{\"architectures\": [\"PerceiverForImageClassificationConvProcessing\""},
      {"array", "[]"},
      {"nested 100000 deep", "{\"x\":" + std::string(100000, '[') + std::string(100000, ']') + "}"},
      {"no architectures", edited([](auto& j) { j.erase("architectures"); })},
      {"unknown architecture", edited([](auto& j) { j["architectures"] = {"os.system\nrm -rf /"}; })},
      {"num_latents 1e9", edited([](auto& j) { j["num_latents"] = 1e9; })},
      {"num_latents 1000000000", edited([](auto& j) { j["num_latents"] = 1000000000; })},
      {"num_latents 2^64", edited([](auto& j) { j["num_latents"] = 18446744073709551615ull; })},
      {"negative heads", edited([](auto& j) { j["num_self_attention_heads"] = -8; })},
      {"zero heads", edited([](auto& j) { j["num_cross_attention_heads"] = 0; })},
      {"heads do not divide channels", edited([](auto& j) { j["num_self_attention_heads"] = 5; })},
      {"num_labels disagrees with id2label", edited([](auto& j) { j["num_labels"] = 1000; })},
      {"id2label with a gap", edited([](auto& j) {
         j["id2label"].erase("3");
         j["id2label"]["12"] = "x";
       })},
      {"id2label key not a number", edited([](auto& j) { j["id2label"]["x\ny"] = "z"; })},
      {"id2label empty", edited([](auto& j) { j["id2label"] = nlohmann::json::object(); })},
      {"label2id out of range", edited([](auto& j) { j["label2id"]["LABEL_0"] = 99; })},
      {"huge image_size (learned)", edited([](auto& j) {
         j["architectures"] = {"PerceiverForImageClassificationLearned"};
         j["image_size"] = 1000000;
       })},
      {"image_size 30000 (learned)", edited([](auto& j) {
         j["architectures"] = {"PerceiverForImageClassificationLearned"};
         j["image_size"] = 30000;
       })},
      {"65536 x 65536 latents", edited([](auto& j) {
         j["num_latents"] = 65536;
         j["d_latents"] = 65536;
       })},
      {"1024 x 1024 layers", edited([](auto& j) {
         j["num_blocks"] = 1024;
         j["num_self_attends_per_block"] = 1024;
         j["d_latents"] = 4096;
       })},
      {"widening 64 of 65536", edited([](auto& j) {
         j["d_latents"] = 65536;
         j["self_attention_widening_factor"] = 64;
       })},
      {"1M labels", edited([](auto& j) {
         j.erase("id2label");
         j.erase("label2id");
         j["num_labels"] = 1 << 20;
       })},
      {"hidden_act relu", edited([](auto& j) { j["hidden_act"] = "relu"; })},
      {"model_type bert", edited([](auto& j) { j["model_type"] = "bert"; })},
      {"qk_channels a string", edited([](auto& j) { j["qk_channels"] = "64"; })},
      {"d_latents fractional", edited([](auto& j) { j["d_latents"] = 31.5; })},
  };
  int i = 0;
  for (const auto& [what, config] : cases) {
    auto dir = config_model("cfg" + std::to_string(i++), config);
    refuse_pixels(what, dir, pixels_, dir.string(), 4);  // config.json, or the weights that disagree with it
  }
  // Big but in-range values with a weights file that lacks them: refused before zeros are allocated for them.
  const std::string big = edited([](auto& j) {
    j["num_latents"] = 8192;
    j["d_latents"] = 8192;
  });
  const Bytes empty = safetensors("{}", "");
  auto dir = model("big-empty", &big, "model.safetensors", &empty);
  refuse_pixels("big config, empty weights", dir, pixels_, (dir / "model.safetensors").string(), 4);

  auto no_config = root_ / "model-no-config";
  fs::create_directories(no_config);
  fs::create_symlink(conv_ / "model.safetensors", no_config / "model.safetensors");
  refuse_pixels("config.json missing", no_config, pixels_, (no_config / "config.json").string(), 4);
  auto config_dir = root_ / "model-config-dir";
  fs::create_directories(config_dir / "config.json");
  refuse_pixels("config.json is a directory", config_dir, pixels_, (config_dir / "config.json").string(), 4);
  auto weights_dir = model("weights-dir", nullptr, "", nullptr);
  fs::create_directories(weights_dir / "model.safetensors");
  refuse_weights("model.safetensors is a directory", weights_dir, "model.safetensors");
  auto no_weights = model("no-weights", nullptr, "", nullptr);
  refuse_pixels("no weights at all", no_weights, pixels_, no_weights.string(), 4);
  refuse_pixels("model folder is a file", pixels_, pixels_, pixels_.string(), 4);
  expect_refused("--weights is a directory",
                 "classify --model " + quote(conv_) + " --weights " + quote(root_) + " --pixels " +
                     quote(pixels_) + logits_out(),
                 root_.string(), 4);
}

TEST_F(Hostile, PreprocessorConfigs) {
  const std::string cat = (test::vectors_dir() / "preprocess" / "rocket_small_exif6.jpg").string();
  std::vector<std::pair<std::string, std::string>> cases = {
      {"zero bytes", ""},
      {"nested 100000 deep", "{\"size\":" + std::string(100000, '[') + std::string(100000, ']') + "}"},
      {"size 0", R"({"size": 0})"},
      {"size 100000", R"({"size": {"height": 100000, "width": 100000}})"},
      {"negative crop", R"({"crop_size": {"height": -5, "width": 5}})"},
      {"image_std zero", R"({"image_std": [0, 0, 0]})"},
      {"image_mean text", R"({"image_mean": "abc"})"},
      {"resample 99", R"({"resample": 99})"},
      {"size 8192 (beyond what the model admits)",
       R"({"size": {"height": 8192, "width": 8192}, "do_center_crop": false})"},
  };
  int i = 0;
  for (const auto& [what, text] : cases) {
    auto dir = config_model("prep" + std::to_string(i++), read_bytes(conv_ / "config.json"));
    write_bytes(dir / "preprocessor_config.json", text);
    const std::string names =
        what.rfind("size 8192", 0) == 0 ? cat : (dir / "preprocessor_config.json").string();
    expect_refused(what, "classify --model " + quote(dir) + " " + quote(cat) + logits_out(), names);
  }
  auto dir = config_model("prep-dir", read_bytes(conv_ / "config.json"));
  fs::create_directories(dir / "preprocessor_config.json");
  expect_refused("preprocessor_config.json is a directory",
                 "classify --model " + quote(dir) + " " + quote(cat) + logits_out(),
                 (dir / "preprocessor_config.json").string(), 4);
}

TEST_F(Hostile, PixelFilesWithLyingHeaders) {
  const std::string ok = "{'descr': '<f4', 'fortran_order': False, 'shape': (1, 3, 56, 56), }";
  const Bytes data = floats(3 * 56 * 56);
  std::vector<std::pair<std::string, Bytes>> cases = {
      {"zero bytes", ""},
      {"bad magic", "\x93NUMPZ" + npy(ok, data).substr(6)},
      {"header length past the end",
       [&] {
         Bytes b = npy(ok, data);
         b[8] = '\xff';
         b[9] = '\xff';
         return b.substr(0, 200);
       }()},
      {"shape bigger than the data",
       npy("{'descr': '<f4', 'fortran_order': False, 'shape': (1, 3, 64, 64), }", data)},
      {"shape smaller than the data",
       npy("{'descr': '<f4', 'fortran_order': False, 'shape': (1, 3, 50, 50), }", data)},
      {"shape product overflows",
       npy("{'descr': '<f4', 'fortran_order': False, 'shape': (1099511627776, 1099511627776, 3, 3), }",
           data)},
      {"negative dimension",
       npy("{'descr': '<f4', 'fortran_order': False, 'shape': (-1, 3, 56, 56), }", data)},
      {"dimension beyond int64",
       npy("{'descr': '<f4', 'fortran_order': False, 'shape': (1, 3, 99999999999999999999999, 1), }", data)},
      {"rank 40 (ones)", npy(
                             [] {
                               std::string s = "{'descr': '<f4', 'fortran_order': False, 'shape': (1";
                               for (int k = 1; k < 40; ++k) s += ", 1";
                               return s + "), }";
                             }(),
                             floats(1))},
      {"float64 pixels", npy("{'descr': '<f8', 'fortran_order': False, 'shape': (1, 3, 56, 28), }", data)},
      {"object array", npy("{'descr': '|O', 'fortran_order': False, 'shape': (1, 3, 56, 56), }", data)},
      {"fortran order", npy("{'descr': '<f4', 'fortran_order': True, 'shape': (1, 3, 56, 56), }", data)},
      {"big-endian", npy("{'descr': '>f4', 'fortran_order': False, 'shape': (1, 3, 56, 56), }", data)},
      {"version 9.0",
       [&] {
         Bytes b = npy(ok, data);
         b[6] = 9;
         return b;
       }()},
      {"version 2.0 header length 4 GiB",
       [&] {
         Bytes b = npy(ok, data, 2);
         b[8] = b[9] = b[10] = b[11] = '\xff';
         return b;
       }()},
      {"zero-sized image", npy("{'descr': '<f4', 'fortran_order': False, 'shape': (1, 3, 0, 0), }", "")},
      {"huge batch of empty images",
       npy("{'descr': '<f4', 'fortran_order': False, 'shape': (100000000000, 3, 0, 56), }", "")},
      {"100000 x 100000 claimed",
       npy("{'descr': '<f4', 'fortran_order': False, 'shape': (1, 3, 100000, 100000), }", data)},
      {"2 x 2 image (model refuses the size)",
       npy("{'descr': '<f4', 'fortran_order': False, 'shape': (1, 3, 2, 2), }", floats(12))},
      {"four channels", npy("{'descr': '<f4', 'fortran_order': False, 'shape': (1, 4, 56, 42), }", data)},
      {"unterminated string",
       npy("{'descr': '<f4, 'fortran_order': False, 'shape': (1, 3, 56, 56), }", data)},
      {"no trailing newline",
       [&] {
         Bytes b = npy(ok, data);
         b[10 + (uint8_t(b[8]) | uint8_t(b[9]) << 8) - 1] = ' ';
         return b;
       }()},
      {"NaN pixels", npy(ok, floats(3 * 56 * 56, std::numeric_limits<float>::quiet_NaN()))},
      {"infinite pixels", npy(ok, floats(3 * 56 * 56, std::numeric_limits<float>::infinity()))},
      {"python expression in the header",
       npy("{'descr': __import__('os').system('touch " + sentinel_.string() +
               "'), 'fortran_order': False, 'shape': (1,), }",
           floats(1))},
  };
  int i = 0;
  for (const auto& [what, bytes] : cases) {
    auto f = file("pixels" + std::to_string(i++) + ".npy", bytes);
    refuse_pixels(what, conv_, f, f.string(), 3);
  }
  refuse_pixels("pixels path is a directory", conv_, root_, root_.string(), 3);
  refuse_pixels("pixels path is /dev/zero", conv_, "/dev/zero", "/dev/zero", 3);
  const fs::path fifo = root_ / "fifo.npy";
  ASSERT_EQ(::mkfifo(fifo.c_str(), 0600), 0);
  refuse_pixels("pixels path is a FIFO with no writer", conv_, fifo, fifo.string(), 3);
  refuse_pixels("pixels file missing", conv_, root_ / "nope.npy", (root_ / "nope.npy").string(), 3);
}

TEST_F(Hostile, BrokenAndOversizedImages) {
  const Bytes rocket = read_bytes(test::vectors_dir() / "preprocess" / "rocket_small_exif6.jpg");
  const Bytes coffee = read_bytes(test::vectors_dir() / "preprocess" / "coffee_rgba_240x160.png");
  auto sof_patched = [&](uint16_t h, uint16_t w) {
    Bytes b = rocket;
    for (size_t k = 2; k + 9 < b.size(); ++k)
      if (uint8_t(b[k]) == 0xff && (uint8_t(b[k + 1]) == 0xc0 || uint8_t(b[k + 1]) == 0xc2)) {
        b[k + 5] = char(h >> 8), b[k + 6] = char(h & 0xff), b[k + 7] = char(w >> 8),
              b[k + 8] = char(w & 0xff);
        break;
      }
    return b;
  };
  std::vector<std::pair<std::string, Bytes>> cases = {
      {"empty.jpg", ""},
      {"empty.png", ""},
      {"half.jpg", rocket.substr(0, rocket.size() / 2)},
      {"headers-only.jpg", rocket.substr(0, 300)},
      {"soi-garbage.jpg", "\xff\xd8\xff" + Bytes(2000, '\x42')},
      {"bomb-65000x65000.jpg", sof_patched(65000, 65000)},
      {"zero-height.jpg", sof_patched(0, 100)},
      {"bomb-100000x100000.png", png(100000, 100000, 2)},
      {"zero-width.png", png(0, 10, 0)},
      {"truncated-rows.png", png(64, 64, 16)},
      {"ihdr-only.png", png(64, 64, 64).substr(0, 33)},
      {"bad-crc.png",
       [] {
         Bytes b = png(8, 8, 8);
         b[29] ^= 1;
         return b;
       }()},
      {"idat-garbage.png",
       [] {
         Bytes b = png(8, 8, 8);
         for (size_t k = 41; k < 60 && k < b.size(); ++k) b[k] = '\x99';
         return b;
       }()},
      {"half.png", coffee.substr(0, coffee.size() / 2)},
      {"text.png", "this is not a picture\n"},
      {"riff-only.webp", Bytes("RIFF\x10\x00\x00\x00WEBPVP8L\x04\x00\x00\x00\x2f\x00", 22)},
      {"gif.jpg", "GIF89a\x01\x00\x01\x00\x00\x00\x00;"s},
  };
  for (const auto& [name, bytes] : cases) refuse_image(name, file(name, bytes));

  // Pillow's decompression-bomb limit, lowered on the command line; classify and preprocess both take it.
  auto rocket_file = file("rocket.jpg", rocket);
  refuse_image("--max-image-pixels 100", rocket_file, "--max-image-pixels 100 ");
  expect_refused("preprocess --max-image-pixels 100",
                 "preprocess --model " + quote(conv_) + " --preprocess-defaults --max-image-pixels 100 " +
                     quote(rocket_file) + " -o " + quote(out_ / "pixels.npy"),
                 rocket_file.string(), 3);
  expect_refused("preprocess of a PNG bomb",
                 "preprocess --model " + quote(conv_) + " --preprocess-defaults " +
                     quote(file("bomb.png", png(100000, 100000, 1))) + " -o " + quote(out_ / "pixels.npy"),
                 "bomb.png", 3);
  // A folder named like an image, and a folder holding no images.
  fs::create_directories(root_ / "folder.png");
  refuse_image("folder named .png", root_ / "folder.png");
  fs::create_symlink("/dev/zero", root_ / "zero.jpg");
  refuse_image("link to /dev/zero", root_ / "zero.jpg");
  ASSERT_EQ(::mkfifo((root_ / "fifo.png").c_str(), 0600), 0);
  refuse_image("FIFO with no writer", root_ / "fifo.png");
  // One good image, then a broken one: no logits file for the half that worked.
  auto good = file("a-good.jpg", rocket);
  auto bad = file("b-bad.png", png(100000, 100000, 1));
  expect_refused("good then bad",
                 "classify --model " + quote(conv_) + " --preprocess-defaults " + quote(good) + " " +
                     quote(bad) + logits_out(),
                 bad.string(), 3);
}

TEST_F(Hostile, OutputPathsThatCannotBeWritten) {
  // Valid inputs; the output cannot be written. Nothing may be left in the output folder.
  fs::create_directories(out_ / "keep");
  expect_refused("--logits-out is a directory",
                 "classify --model " + quote(conv_) + " --pixels " + quote(pixels_) + " --logits-out " +
                     quote(out_ / "keep"),
                 (out_ / "keep").string(), 6);
  EXPECT_TRUE(fs::is_empty(out_ / "keep"));
  expect_refused("--logits-out in a missing folder",
                 "classify --model " + quote(conv_) + " --pixels " + quote(pixels_) + " --logits-out " +
                     quote(out_ / "missing" / "logits.npy"),
                 "logits.npy", 6);
  expect_refused("preprocess -o in a missing folder",
                 "preprocess --model " + quote(conv_) + " --preprocess-defaults " +
                     quote(test::vectors_dir() / "preprocess" / "rocket_small_exif6.jpg") + " -o " +
                     quote(out_ / "missing" / "pixels.npy"),
                 "pixels.npy", 6);
}

}  // namespace
}  // namespace perceiver
