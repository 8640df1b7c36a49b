// perceiver.cpp: a one-line progress bar on stderr, redrawn with '\r' at most ~10 times a second. When the
// stream is not a terminal (a log file, CI), only the final line is written. Used by the CLI and by the
// library's long-running calls (train_classifier_head).
#pragma once

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <string>

namespace perceiver {

class Progress {
 public:
  // Draws nothing unless `enabled`.
  Progress(std::string label, int64_t total, bool enabled, std::FILE* out = stderr);
  ~Progress();
  Progress(const Progress&) = delete;
  Progress& operator=(const Progress&) = delete;

  // done items out of total; `note` is appended (e.g. "loss 0.4123 acc 87.5%").
  void update(int64_t done, const std::string& note = "");
  void finish(const std::string& note = "");  // final redraw + newline (once)
  double seconds() const;

 private:
  void draw(int64_t done, const std::string& note);
  std::string label_;
  int64_t total_;
  bool enabled_, interactive_ = false, finished_ = false;
  std::FILE* out_;
  std::chrono::steady_clock::time_point start_, last_draw_;
  int64_t last_done_ = 0;
  size_t last_width_ = 0;
};

// "1:05", "0:07": seconds as m:ss (h:mm:ss past an hour).
std::string format_duration(double seconds);

}  // namespace perceiver
