#include "hub/progress.h"

#include <cinttypes>
#include <cmath>
#include <utility>

namespace perceiver::hub {

std::string format_bytes(uint64_t bytes) {
  static const char* const kUnits[] = {"B", "kB", "MB", "GB", "TB"};
  if (bytes < 1000) return std::to_string(bytes) + " B";
  double value = static_cast<double>(bytes);
  int unit = 0;
  while (value >= 1000.0 && unit < 4) {
    value /= 1000.0;
    ++unit;
  }
  char text[32];
  std::snprintf(text, sizeof text,
                value < 10    ? "%.2f %s"
                : value < 100 ? "%.1f %s"
                              : "%.0f %s",
                value, kUnits[unit]);
  return text;
}

std::string format_progress(const std::string& label, uint64_t done, uint64_t total,
                            double bytes_per_second) {
  std::string line = label + "  " + format_bytes(done);
  if (total > 0) {
    line += " / " + format_bytes(total);
    char percent[16];
    std::snprintf(percent, sizeof percent, "  %3d%%",
                  static_cast<int>(done >= total ? 100 : done * 100 / total));
    line += percent;
  }
  if (bytes_per_second > 0) {
    line += "  " + format_bytes(static_cast<uint64_t>(bytes_per_second)) + "/s";
    if (total > done) {
      double eta = std::ceil(static_cast<double>(total - done) / bytes_per_second);
      uint64_t seconds = eta > 359999 ? 359999 : static_cast<uint64_t>(eta);
      char text[32];
      if (seconds >= 3600)
        std::snprintf(text, sizeof text, "  ETA %" PRIu64 ":%02" PRIu64 ":%02" PRIu64, seconds / 3600,
                      seconds / 60 % 60, seconds % 60);
      else
        std::snprintf(text, sizeof text, "  ETA %" PRIu64 ":%02" PRIu64, seconds / 60, seconds % 60);
      line += text;
    }
  }
  return line;
}

ProgressBar::ProgressBar(std::string label, uint64_t total, uint64_t start, bool enabled, std::FILE* out)
    : label_(std::move(label)),
      total_(total),
      start_(start),
      last_done_(start),
      enabled_(enabled),
      out_(out),
      started_(std::chrono::steady_clock::now()),
      last_draw_(started_) {}

ProgressBar::~ProgressBar() { finish(); }

void ProgressBar::restart(uint64_t start) {
  start_ = start;
  last_done_ = start;
  started_ = std::chrono::steady_clock::now();
}

void ProgressBar::update(uint64_t done) {
  last_done_ = done;
  if (!enabled_ || finished_) return;
  auto now = std::chrono::steady_clock::now();
  if (drawn_ && now - last_draw_ < std::chrono::milliseconds(100)) return;
  last_draw_ = now;
  draw(done);
}

void ProgressBar::finish() {
  if (!enabled_ || finished_) return;
  finished_ = true;
  if (!drawn_ || drawn_done_ != last_done_) draw(last_done_);
  std::fputc('\n', out_);
  std::fflush(out_);
}

void ProgressBar::draw(uint64_t done) {
  double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - started_).count();
  double rate = seconds > 0.05 && done > start_ ? static_cast<double>(done - start_) / seconds : 0.0;
  std::string line = format_progress(label_, done, total_, rate);
  size_t width = line.size();
  if (width < last_width_) line.append(last_width_ - width, ' ');  // erase the tail of a longer line
  last_width_ = width;
  std::fprintf(out_, "\r%s", line.c_str());
  std::fflush(out_);
  drawn_ = true;
  drawn_done_ = done;
}

}  // namespace perceiver::hub
