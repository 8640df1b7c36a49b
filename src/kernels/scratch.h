// A 64-byte aligned byte buffer that only ever grows: sized the first time a shape is seen, so that later
// calls of the same shape allocate nothing.
#pragma once

#include <cstddef>
#include <memory>
#include <new>

namespace perceiver {

class Scratch {
 public:
  void reserve(size_t bytes) {
    if (bytes <= size_) return;
    buf_.reset(static_cast<std::byte*>(::operator new[](bytes, std::align_val_t(64))));
    size_ = bytes;
  }
  template <class T>
  T* as() const {
    return reinterpret_cast<T*>(buf_.get());
  }
  size_t size() const { return size_; }

 private:
  struct Free {
    void operator()(std::byte* p) const { ::operator delete[](p, std::align_val_t(64)); }
  };
  std::unique_ptr<std::byte[], Free> buf_;
  size_t size_ = 0;
};

}  // namespace perceiver
