// Output files appear whole or not at all: write to a temporary file in the same folder, then rename.
#pragma once

#include <filesystem>
#include <string_view>

namespace perceiver {

// Writes `bytes` to `path` via "<path>.tmp-XXXXXX" + fsync + rename. Throws Error(ErrorKind::io) on failure,
// leaving nothing behind.
void write_file_atomic(const std::filesystem::path& path, std::string_view bytes);

}  // namespace perceiver
