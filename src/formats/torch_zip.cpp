// pytorch_model.bin as written by torch.save (zip format, torch >= 1.6):
//   <root>/data.pkl    {name: _rebuild_tensor_v2(persistent storage id, offset, size, stride, ...)}
//   <root>/data/<key>  raw little-endian storage bytes (normally stored uncompressed)
//   <root>/version, <root>/byteorder (optional), ...
// libzip opens and checks the archive. Stored storages (torch.save stores them, 64-byte aligned) are then
// memory-mapped like model.safetensors instead of read, their CRC-32 checked with libdeflate (4x zlib's
// speed): loading the full-size conv model's 195 MB is then as fast as from safetensors. Compressed or
// misaligned entries are read through libzip.
#include <fcntl.h>
#include <libdeflate.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zip.h>

#include <cerrno>
#include <cstring>
#include <map>
#include <set>
#include <span>
#include <system_error>
#include <unordered_map>

#include "formats/pickle.h"
#include "formats/tensor_file.h"
#include "perceiver/error.h"

namespace perceiver {
namespace {

constexpr uint64_t kMaxPickleBytes = uint64_t{64} << 20;
constexpr uint64_t kMaxEntryBytes = uint64_t{8} << 30;  // 8 GiB: far beyond any Perceiver storage
constexpr uint64_t kMaxDeflateRatio = 1032;             // deflate cannot expand data by more than this
constexpr int64_t kMaxEntries = 1'000'000;

alignas(16) const std::byte kEmpty[16] = {};

// A storage's bytes: read into memory (owned), or a view into the file's mapping.
struct Buffer {
  std::unique_ptr<std::byte[]> owned;  // operator new: aligned for any dtype
  const std::byte* data = nullptr;
  size_t size = 0;
  bool mapped = false;
};

uint64_t get_le(const std::byte* p, int bytes) {
  uint64_t v = 0;
  for (int i = bytes; i-- > 0;) v = v << 8 | std::to_integer<uint64_t>(p[i]);
  return v;
}

// Offsets of the local headers of the entries, by name, from the zip's central directory (libzip 1.7 does
// not tell them). Empty when anything is unexpected: the entries are then read through libzip, which has
// already checked the archive (ZIP_CHECKCONS) and reports what is wrong.
std::unordered_map<std::string, uint64_t> local_header_offsets(std::span<const std::byte> file) {
  constexpr uint64_t kEocd = 22, kLocator = 20, kEocd64 = 56, kCentral = 46, kMax32 = 0xffffffff;
  const uint64_t size = file.size();
  auto at = [&](uint64_t offset, uint64_t length) -> const std::byte* {
    return offset <= size && length <= size - offset ? file.data() + offset : nullptr;
  };
  // End of central directory: the last signature whose comment reaches the end of the file exactly.
  uint64_t eocd = size;
  for (uint64_t back = kEocd; back <= std::min<uint64_t>(size, kEocd + 0xffff); ++back) {
    const std::byte* p = file.data() + size - back;
    if (get_le(p, 4) == 0x06054b50 && get_le(p + 20, 2) == back - kEocd) {
      eocd = size - back;
      break;
    }
  }
  if (eocd == size) return {};
  const std::byte* end = file.data() + eocd;
  uint64_t entries = get_le(end + 10, 2), cd_size = get_le(end + 12, 4), cd_offset = get_le(end + 16, 4);
  if (const std::byte* loc = eocd >= kLocator ? at(eocd - kLocator, kLocator) : nullptr;
      loc && get_le(loc, 4) == 0x07064b50) {  // zip64 (torch.save always writes it)
    const std::byte* end64 = at(get_le(loc + 8, 8), kEocd64);
    if (!end64 || get_le(end64, 4) != 0x06064b50) return {};
    entries = get_le(end64 + 32, 8), cd_size = get_le(end64 + 40, 8), cd_offset = get_le(end64 + 48, 8);
  }
  if (!at(cd_offset, cd_size) || entries > cd_size / kCentral) return {};
  std::unordered_map<std::string, uint64_t> offsets;
  uint64_t pos = cd_offset;
  for (uint64_t i = 0; i < entries; ++i) {
    const std::byte* h = at(pos, kCentral);
    if (!h || get_le(h, 4) != 0x02014b50) return {};
    const uint64_t name_len = get_le(h + 28, 2), extra_len = get_le(h + 30, 2),
                   comment_len = get_le(h + 32, 2);
    const std::byte* name = at(pos + kCentral, name_len + extra_len);
    if (!name) return {};
    uint64_t offset = get_le(h + 42, 4);
    if (offset == kMax32) {  // in the zip64 extra field, after the 64-bit sizes that overflowed
      int skip = 8 * ((get_le(h + 24, 4) == kMax32) + (get_le(h + 20, 4) == kMax32));
      offset = size;
      for (const std::byte* x = name + name_len; x + 4 <= name + name_len + extra_len;) {
        const uint64_t id = get_le(x, 2), len = get_le(x + 2, 2);
        if (x + 4 + len > name + name_len + extra_len) break;
        if (id == 1 && len >= uint64_t(skip) + 8) offset = get_le(x + 4 + skip, 8);
        x += 4 + len;
      }
    }
    offsets.emplace(std::string(reinterpret_cast<const char*>(name), name_len), offset);
    pos += kCentral + name_len + extra_len + comment_len;
  }
  return offsets;
}

class TorchZipFile final : public TensorFile {
 public:
  explicit TorchZipFile(const std::filesystem::path& path) { path_ = path; }
  ~TorchZipFile() override {
    if (zip_) zip_discard(zip_);
    if (map_ != MAP_FAILED) ::munmap(map_, file_size_);
  }
  TorchZipFile(const TorchZipFile&) = delete;
  TorchZipFile& operator=(const TorchZipFile&) = delete;

  void load();

 private:
  [[noreturn]] void fail(const std::string& what) const {
    throw Error(ErrorKind::model, path_.string() + ": " + what);
  }
  void open_archive();
  void release(const TensorRef& tensor) override;
  zip_stat_t stat_entry(zip_int64_t index, const std::string& where, uint64_t max_size);
  Buffer read_entry(zip_int64_t index, const std::string& name, uint64_t max_size);
  Buffer map_entry(zip_int64_t index, const std::string& name, uint64_t max_size);
  void check_mapped_crcs();
  const Buffer& storage(const pickle::Value& ref);
  void add_tensor(const std::string& name, const pickle::Value& t);

  zip_t* zip_ = nullptr;
  uint64_t file_size_ = 0;
  void* map_ = MAP_FAILED;                                   // the whole file, read-only, if mmap worked
  std::unordered_map<std::string, uint64_t> local_headers_;  // entry name -> local header offset
  struct Unchecked {                                         // a mapped entry whose CRC-32 is not checked yet
    std::string where;
    const std::byte* data;
    size_t size;
    uint32_t crc;
  };
  std::vector<Unchecked> unchecked_;
  std::string root_;                                               // "archive", "pytorch_model", ...
  std::map<std::string, Buffer> storages_;                         // key -> bytes
  std::map<std::string, std::pair<DType, int64_t>> storage_info_;  // key -> (dtype, numel) first seen
  std::vector<Buffer> copies_;                                     // materialised non-contiguous tensors
  // Tensors (by name) that point into a storage, and how many of them are not released yet, by storage key:
  // a storage is freed when its last tensor is released.
  std::map<std::string, std::string> storage_of_;
  std::map<std::string, int> unreleased_;
};

void TorchZipFile::release(const TensorRef& tensor) {
  auto it = storage_of_.find(tensor.name);
  if (it == storage_of_.end()) return;  // a copy, an empty tensor, or released before
  const std::string key = it->second;
  storage_of_.erase(it);
  if (--unreleased_[key] == 0) storages_.erase(key);
}

void TorchZipFile::open_archive() {
  struct stat st;
  if (::stat(path_.c_str(), &st) != 0) {
    int err = errno;
    if (err == ENOENT || err == ENOTDIR) fail("no such file");
    fail(std::generic_category().message(err));
  }
  if (!S_ISREG(st.st_mode)) fail("not a regular file");
  file_size_ = static_cast<uint64_t>(st.st_size);

  int code = 0;
  zip_ = zip_open(path_.c_str(), ZIP_RDONLY | ZIP_CHECKCONS, &code);
  if (!zip_) {
    zip_error_t error;
    zip_error_init_with_code(&error, code);
    std::string message = zip_error_strerror(&error);
    zip_error_fini(&error);
    fail("not a valid zip archive (" + message + ")");
  }

  // Map the file for its stored entries (best effort: without a mapping every entry is read).
  if (int fd = ::open(path_.c_str(), O_RDONLY | O_CLOEXEC); fd >= 0) {
    struct stat now;
    if (::fstat(fd, &now) == 0 && uint64_t(now.st_size) == file_size_ && file_size_ > 0)
      map_ = ::mmap(nullptr, file_size_, PROT_READ, MAP_PRIVATE, fd, 0);
    ::close(fd);
  }
  if (map_ != MAP_FAILED)
    local_headers_ = local_header_offsets({static_cast<const std::byte*>(map_), file_size_});
}

// The entry's sizes, checked against the file size and max_size before anything is allocated or read.
zip_stat_t TorchZipFile::stat_entry(zip_int64_t index, const std::string& where, uint64_t max_size) {
  zip_stat_t st;
  zip_stat_init(&st);
  if (zip_stat_index(zip_, static_cast<zip_uint64_t>(index), 0, &st) != 0)
    fail(where + ": " + zip_strerror(zip_));
  constexpr zip_uint64_t kNeeded = ZIP_STAT_SIZE | ZIP_STAT_COMP_SIZE | ZIP_STAT_COMP_METHOD;
  if ((st.valid & kNeeded) != kNeeded) fail(where + ": sizes unknown");
  if ((st.valid & ZIP_STAT_ENCRYPTION_METHOD) && st.encryption_method != ZIP_EM_NONE)
    fail(where + " is encrypted");
  if (st.comp_size > file_size_)
    fail(where + " claims " + std::to_string(st.comp_size) + " compressed bytes, more than the file size " +
         std::to_string(file_size_));
  if (st.comp_method == ZIP_CM_STORE ? st.size != st.comp_size
                                     : st.size / kMaxDeflateRatio > st.comp_size + 1)
    fail(where + " has inconsistent sizes (" + std::to_string(st.comp_size) + " compressed, " +
         std::to_string(st.size) + " uncompressed)");
  if (st.size > max_size)
    fail(where + " is " + std::to_string(st.size) + " bytes, over the limit of " + std::to_string(max_size));
  return st;
}

// Reads a whole entry into an owned buffer, bounding its size before allocating.
Buffer TorchZipFile::read_entry(zip_int64_t index, const std::string& name, uint64_t max_size) {
  const std::string where = "zip entry '" + printable(name) + "'";
  const zip_stat_t st = stat_entry(index, where, max_size);
  Buffer buffer;
  buffer.size = static_cast<size_t>(st.size);
  buffer.owned = std::make_unique_for_overwrite<std::byte[]>(buffer.size ? buffer.size : 1);
  buffer.data = buffer.owned.get();
  zip_file_t* f = zip_fopen_index(zip_, static_cast<zip_uint64_t>(index), 0);
  if (!f) fail(where + ": " + zip_strerror(zip_));
  size_t done = 0;
  std::string error;
  while (done < buffer.size) {
    zip_int64_t n = zip_fread(f, buffer.owned.get() + done, buffer.size - done);
    if (n < 0) {
      error = zip_file_strerror(f);
      break;
    }
    if (n == 0) {
      error = "ends after " + std::to_string(done) + " of " + std::to_string(buffer.size) + " bytes";
      break;
    }
    done += static_cast<size_t>(n);
  }
  if (error.empty()) {  // one more read reaches the end of the entry, where libzip checks the CRC
    std::byte extra;
    zip_int64_t n = zip_fread(f, &extra, 1);
    if (n < 0) error = zip_file_strerror(f);
    if (n > 0) error = "holds more bytes than its header says";
  }
  zip_fclose(f);
  if (!error.empty()) fail(where + ": " + printable(error));
  return buffer;
}

// A stored entry as a view into the file's mapping (its CRC-32 checked at the end of load()); anything else
// is read.
Buffer TorchZipFile::map_entry(zip_int64_t index, const std::string& name, uint64_t max_size) {
  const std::string where = "zip entry '" + printable(name) + "'";
  const zip_stat_t st = stat_entry(index, where, max_size);
  auto header = local_headers_.find(name);
  if (map_ == MAP_FAILED || header == local_headers_.end() || st.comp_method != ZIP_CM_STORE ||
      !(st.valid & ZIP_STAT_CRC))
    return read_entry(index, name, max_size);
  // Local header: signature, ..., name length @26, extra length @28, name @30, extra, then the data.
  const std::byte* file = static_cast<const std::byte*>(map_);
  const uint64_t local = header->second;
  if (local > file_size_ || file_size_ - local < 30 || get_le(file + local, 4) != 0x04034b50)
    return read_entry(index, name, max_size);
  const uint64_t name_len = get_le(file + local + 26, 2), extra_len = get_le(file + local + 28, 2);
  const uint64_t data = local + 30 + name_len + extra_len;
  if (name_len != name.size() || data > file_size_ || file_size_ - data < st.size || data % 8 != 0 ||
      std::memcmp(file + local + 30, name.data(), name_len) != 0)
    return read_entry(index, name, max_size);  // misaligned for its dtype, or not what libzip saw

  Buffer buffer;
  buffer.data = file + data;
  buffer.size = static_cast<size_t>(st.size);
  buffer.mapped = true;
  unchecked_.push_back({where, buffer.data, buffer.size, st.crc});  // checked by check_mapped_crcs()
  return buffer;
}

// The CRC-32 of every mapped entry, on all threads; then their pages are given back: the model maps them
// again (from the page cache) as it packs them, so that loading never holds the whole file and the packed
// weights at once.
void TorchZipFile::check_mapped_crcs() {
  size_t bad = unchecked_.size();
#pragma omp parallel for schedule(dynamic, 1)
  for (size_t i = 0; i < unchecked_.size(); ++i) {
    const Unchecked& e = unchecked_[i];
    if (libdeflate_crc32(0, e.data, e.size) != e.crc) {
#pragma omp critical(torch_zip_crc)
      bad = std::min(bad, i);
    }
    drop_mapped(e.data, e.size);
  }
  if (bad < unchecked_.size()) fail(unchecked_[bad].where + ": CRC error");
  unchecked_.clear();
}

// The bytes of a storage, read once per key.
const Buffer& TorchZipFile::storage(const pickle::Value& ref) {
  auto [info, fresh] = storage_info_.try_emplace(ref.text, ref.dtype, ref.integer);
  if (!fresh && (info->second.first != ref.dtype || info->second.second != ref.integer))
    fail("storage '" + ref.text + "' is referenced with different types or sizes");
  if (auto it = storages_.find(ref.text); it != storages_.end()) return it->second;

  const std::string name = root_ + "/data/" + ref.text;
  zip_int64_t index = zip_name_locate(zip_, name.c_str(), 0);
  if (index < 0) fail("storage '" + ref.text + "' has no zip entry '" + printable(name) + "'");
  const uint64_t elem = dtype_size(ref.dtype);
  uint64_t expected;
  if (__builtin_mul_overflow(static_cast<uint64_t>(ref.integer), elem, &expected) ||
      expected > kMaxEntryBytes)
    fail("storage '" + ref.text + "' of " + std::to_string(ref.integer) + " elements is too large");
  Buffer bytes = map_entry(index, name, expected);  // a bigger entry is refused before anything is read
  if (bytes.size != expected)
    fail("storage '" + ref.text + "' has " + std::to_string(bytes.size) + " bytes, expected " +
         std::to_string(ref.integer) + " x " + std::to_string(elem));
  return storages_.emplace(ref.text, std::move(bytes)).first->second;
}

void TorchZipFile::add_tensor(const std::string& name, const pickle::Value& t) {
  const std::string where = "tensor '" + printable(name) + "'";
  const pickle::Value& ref = *t.storage;
  const Buffer& store = storage(ref);
  const int64_t storage_numel = ref.integer;
  const size_t elem = dtype_size(t.dtype);
  const size_t rank = t.size.size();

  TensorRef out;
  out.name = name;
  out.dtype = t.dtype;
  out.shape = t.size;
  // numel and the largest element index touched, overflow-checked.
  int64_t numel = 1, last = t.integer;
  bool overflow = false;
  for (size_t i = 0; i < rank; ++i) {
    int64_t span;
    overflow |= __builtin_mul_overflow(numel, t.size[i], &numel);
    if (t.size[i] > 0) {
      overflow |= __builtin_mul_overflow(t.size[i] - 1, t.stride[i], &span);
      overflow |= __builtin_add_overflow(last, span, &last);
    }
  }
  auto layout = [&] {
    std::string s = "offset " + std::to_string(t.integer) + ", size " + out.shape_string() + ", stride [";
    for (size_t i = 0; i < rank; ++i) s += (i ? ", " : "") + std::to_string(t.stride[i]);
    return s + "]";
  };
  if (overflow) fail(where + " (" + layout() + ") is too large");
  if (numel == 0) {
    out.data = kEmpty;
    tensors_.push_back(std::move(out));
    return;
  }
  if (last >= storage_numel)
    fail(where + " (" + layout() + ") reaches element " + std::to_string(last) + " beyond its storage of " +
         std::to_string(storage_numel) + " elements");
  // A view with more elements than its storage repeats elements (zero or overlapping strides, as expand()
  // makes): refused, so that a contiguous copy is never larger than the storage it is gathered from.
  if (numel > storage_numel)
    fail(where + " (" + layout() + ") has " + std::to_string(numel) + " elements, more than its storage of " +
         std::to_string(storage_numel) + " (overlapping strides are not supported)");
  out.nbytes = static_cast<size_t>(numel) * elem;

  bool contiguous = true;  // C order; strides of size-1 dimensions do not matter
  int64_t expected = 1;
  for (size_t i = rank; i-- > 0;) {
    if (t.size[i] != 1 && t.stride[i] != expected) contiguous = false;
    expected *= t.size[i];
  }
  const std::byte* base = store.data;
  if (contiguous) {
    out.data = base + static_cast<size_t>(t.integer) * elem;
    out.mapped = store.mapped;
    storage_of_[name] = ref.text;
    ++unreleased_[ref.text];
  } else {  // gather into a contiguous copy
    Buffer copy;
    copy.size = out.nbytes;
    copy.owned = std::make_unique_for_overwrite<std::byte[]>(copy.size);
    std::vector<int64_t> index(rank, 0);
    for (int64_t n = 0; n < numel; ++n) {
      int64_t src = t.integer;
      for (size_t i = 0; i < rank; ++i) src += index[i] * t.stride[i];
      std::memcpy(copy.owned.get() + static_cast<size_t>(n) * elem, base + static_cast<size_t>(src) * elem,
                  elem);
      for (size_t i = rank; i-- > 0;) {  // odometer increment
        if (++index[i] < t.size[i]) break;
        index[i] = 0;
      }
    }
    out.data = copy.owned.get();
    copies_.push_back(std::move(copy));
  }
  tensors_.push_back(std::move(out));
}

void TorchZipFile::load() {
  open_archive();

  // Find the single <root>/data.pkl.
  zip_int64_t entries = zip_get_num_entries(zip_, 0);
  if (entries < 0 || entries > kMaxEntries) fail("zip archive has too many entries");
  zip_int64_t pickle_index = -1;
  for (zip_int64_t i = 0; i < entries; ++i) {
    const char* raw = zip_get_name(zip_, static_cast<zip_uint64_t>(i), 0);
    if (!raw) fail(std::string("unreadable zip entry name: ") + zip_strerror(zip_));
    std::string_view name(raw);
    size_t slash = name.find('/');
    if (slash == 0 || slash == std::string_view::npos || name.substr(slash) != "/data.pkl") continue;
    if (pickle_index >= 0)
      fail("zip archive holds more than one data.pkl ('" + root_ + "/data.pkl', '" + printable(name) + "')");
    pickle_index = i;
    root_ = std::string(name.substr(0, slash));
  }
  if (pickle_index < 0) fail("no <root>/data.pkl in the zip archive (not a torch.save file)");

  if (zip_int64_t bo = zip_name_locate(zip_, (root_ + "/byteorder").c_str(), 0); bo >= 0) {
    Buffer order = read_entry(bo, root_ + "/byteorder", 16);
    std::string_view text(reinterpret_cast<const char*>(order.data), order.size);
    if (text != "little") fail("byteorder '" + printable(text) + "' is not supported (only little-endian)");
  }

  Buffer program = read_entry(pickle_index, root_ + "/data.pkl", kMaxPickleBytes);
  pickle::Result result =
      pickle::unpickle(std::span<const std::byte>(program.data, program.size), path_.string());
  const pickle::Value& root = result.root();
  if (root.kind != pickle::Kind::dict)
    fail(std::string("data.pkl holds a ") + pickle::kind_name(root.kind) + ", expected a dict of tensors");

  std::set<std::string> seen;
  for (size_t i = 0; i + 1 < root.items.size(); i += 2) {
    const pickle::Value& key = *root.items[i];
    const pickle::Value& value = *root.items[i + 1];
    if (key.kind != pickle::Kind::string)
      fail(std::string("state dict has a key of type ") + pickle::kind_name(key.kind));
    if (!seen.insert(key.text).second) fail("state dict has duplicate key '" + printable(key.text) + "'");
    if (value.kind != pickle::Kind::tensor)
      fail("state dict entry '" + printable(key.text) + "' is a " + pickle::kind_name(value.kind) +
           ", not a tensor" + (value.kind == pickle::Kind::dict ? " (expected a bare state dict)" : ""));
    add_tensor(key.text, value);
  }
  check_mapped_crcs();
  zip_discard(zip_);  // every byte is in owned buffers or the mapping now
  zip_ = nullptr;
}

}  // namespace

std::unique_ptr<TensorFile> open_torch_zip(const std::filesystem::path& path) {
  auto file = std::make_unique<TorchZipFile>(path);
  file->load();
  return file;
}

}  // namespace perceiver
