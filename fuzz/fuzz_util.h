// Helpers shared by the libFuzzer targets.
#pragma once

#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <filesystem>
#include <string>

#include "perceiver/error.h"

namespace perceiver::fuzz {

// The path-based readers (mmap, libzip, read(2)) need a real file: one per process, rewritten per input and
// removed at exit.
struct ScratchFile {
  std::filesystem::path path;
  ~ScratchFile() {
    std::error_code ec;
    std::filesystem::remove(path, ec);
  }
};

inline const std::filesystem::path& scratch_file(const char* tag) {
  static const ScratchFile file{[&] {
    std::filesystem::path dir = std::filesystem::exists("/dev/shm") ? "/dev/shm" : "/tmp";
    return dir / ("perceiver-fuzz-" + std::string(tag) + "-" + std::to_string(::getpid()));
  }()};
  return file.path;
}

inline const std::filesystem::path& write_scratch(const char* tag, const uint8_t* data, size_t size) {
  const auto& path = scratch_file(tag);
  FILE* f = std::fopen(path.c_str(), "wb");
  if (!f) std::abort();
  if (size && std::fwrite(data, 1, size, f) != size) std::abort();
  std::fclose(f);
  return path;
}

// Runs `body`; perceiver::Error is the expected way to refuse an input. Anything else escaping is a finding.
template <typename F>
void expect_only_errors(F&& body) {
  try {
    body();
  } catch (const perceiver::Error& e) {
    if (e.kind() == ErrorKind::internal) {
      std::fprintf(stderr, "internal error: %s\n", e.what());
      std::abort();
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "unexpected exception: %s\n", e.what());
    std::abort();
  }
}

}  // namespace perceiver::fuzz
