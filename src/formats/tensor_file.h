// Weight files as published on the Hugging Face hub: model.safetensors and pytorch_model.bin.
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace perceiver {

enum class DType { f32, f16, bf16, i64 };

const char* dtype_name(DType dtype);  // "F32", "F16", "BF16", "I64" (safetensors spelling)
size_t dtype_size(DType dtype);

// One tensor of a weight file: C-contiguous, little-endian bytes owned by the TensorFile. `data` is never
// null (empty tensors point at a static dummy) and is aligned to dtype_size(dtype).
struct TensorRef {
  std::string name;
  DType dtype = DType::f32;
  std::vector<int64_t> shape;
  const std::byte* data = nullptr;
  size_t nbytes = 0;
  // data points into a read-only memory mapping of the file: its pages come from the page cache, and a
  // reader may drop them (madvise MADV_DONTNEED) once done, to be mapped again if touched.
  bool mapped = false;

  int64_t numel() const;
  std::string shape_string() const;  // e.g. "[64, 3, 7, 7]"
};

// A parsed weight file. Tensors stay valid as long as the TensorFile lives, or until released.
class TensorFile {
 public:
  virtual ~TensorFile() = default;
  const std::filesystem::path& path() const { return path_; }
  const std::vector<TensorRef>& tensors() const { return tensors_; }
  const TensorRef* find(std::string_view name) const;  // nullptr when absent
  // The caller will not read this tensor's bytes again (they have been copied, packed): a file that holds
  // them in memory may free them once no other tensor of this file shares them. `data` is dangling after.
  virtual void release(const TensorRef&) {}

 protected:
  std::filesystem::path path_;
  std::vector<TensorRef> tensors_;
};

// model.safetensors: memory-mapped, zero-copy. Throws perceiver::Error(ErrorKind::model, "<file>: ...").
std::unique_ptr<TensorFile> open_safetensors(const std::filesystem::path& path);
// pytorch_model.bin (torch.save zip + pickle), read by a restricted unpickler that never executes anything.
// Stored, aligned storages are memory-mapped (CRC-checked); others are read into memory.
std::unique_ptr<TensorFile> open_torch_zip(const std::filesystem::path& path);
// Either of the above, chosen by the file's magic bytes.
std::unique_ptr<TensorFile> open_weights(const std::filesystem::path& path);

// Page hints for bytes in a read-only memory mapping of a weight file (TensorRef::mapped). Best effort.
// Maps in the pages of [data, data + nbytes) in one system call (MADV_POPULATE_READ, Linux 5.14+), before a
// pass over them: one page fault per 4 KB page costs more than the pass itself.
void populate_mapped(const std::byte* data, size_t nbytes);
// Gives back the whole pages inside [data, data + nbytes) (MADV_DONTNEED): touched again, they are read back
// from the page cache. Keeps the file's pages and what was made of them out of the resident set together.
void drop_mapped(const std::byte* data, size_t nbytes);

// Converts any floating tensor to fp32 (F16/BF16 widened exactly). Throws for I64.
std::vector<float> tensor_to_f32(const TensorRef& tensor, const std::filesystem::path& file);

// Exact widening of IEEE binary16 and bfloat16 bit patterns.
float half_to_float(uint16_t bits);
float bfloat16_to_float(uint16_t bits);

// Untrusted text (tensor names, pickle globals) made safe for a one-line message: non-printable bytes become
// \xNN and anything past max_chars is cut with "...".
std::string printable(std::string_view text, size_t max_chars = 200);

}  // namespace perceiver
