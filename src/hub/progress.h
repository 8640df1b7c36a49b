// Download progress bar for the hub client: one stderr line redrawn with '\r'.
#pragma once

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <string>

namespace perceiver::hub {

// "1.06 MB", "532 B", "3.20 GB" (decimal units, like most download tools).
std::string format_bytes(uint64_t bytes);

// One progress line without the leading '\r', e.g.
// "model.safetensors  12.0 MB / 48.0 MB   25%  3.20 MB/s  ETA 0:11". `bytes_per_second` <= 0 means unknown.
std::string format_progress(const std::string& label, uint64_t done, uint64_t total, double bytes_per_second);

class ProgressBar {
 public:
  // Draws nothing unless `enabled`. `start` is what was already on disk (a resumed download): it counts as
  // done but not towards the rate.
  ProgressBar(std::string label, uint64_t total, uint64_t start, bool enabled, std::FILE* out = stderr);
  ~ProgressBar();
  ProgressBar(const ProgressBar&) = delete;
  ProgressBar& operator=(const ProgressBar&) = delete;

  void restart(uint64_t start);  // the server ignored a resume request: counting starts again from `start`
  void update(uint64_t done);    // redraws at most ~10 times per second
  void finish();                 // final redraw and newline (once; also done by the destructor)

 private:
  void draw(uint64_t done);

  std::string label_;
  uint64_t total_;
  uint64_t start_;
  uint64_t last_done_ = 0;
  uint64_t drawn_done_ = 0;
  bool enabled_;
  bool drawn_ = false;
  bool finished_ = false;
  std::FILE* out_;
  std::chrono::steady_clock::time_point started_;
  std::chrono::steady_clock::time_point last_draw_;
  size_t last_width_ = 0;
};

}  // namespace perceiver::hub
