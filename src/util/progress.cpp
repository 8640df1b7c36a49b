#include "perceiver/progress.h"

#include <unistd.h>

#include <algorithm>
#include <cmath>

namespace perceiver {

std::string format_duration(double seconds) {
  const long s = std::lround(std::max(0.0, seconds));
  char buf[32];
  if (s >= 3600)
    std::snprintf(buf, sizeof buf, "%ld:%02ld:%02ld", s / 3600, (s / 60) % 60, s % 60);
  else
    std::snprintf(buf, sizeof buf, "%ld:%02ld", s / 60, s % 60);
  return buf;
}

Progress::Progress(std::string label, int64_t total, bool enabled, std::FILE* out)
    : label_(std::move(label)), total_(std::max<int64_t>(total, 1)), enabled_(enabled), out_(out) {
  start_ = last_draw_ = std::chrono::steady_clock::now();
  interactive_ = enabled_ && ::isatty(::fileno(out_));
  if (interactive_) draw(0, "");
}

Progress::~Progress() { finish(); }

double Progress::seconds() const {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
}

void Progress::update(int64_t done, const std::string& note) {
  last_done_ = done;
  if (!interactive_ || finished_) return;
  const auto now = std::chrono::steady_clock::now();
  if (done < total_ && now - last_draw_ < std::chrono::milliseconds(100)) return;
  last_draw_ = now;
  draw(done, note);
}

void Progress::finish(const std::string& note) {
  if (finished_) return;
  finished_ = true;
  if (!enabled_) return;
  draw(last_done_, note);
  std::fputc('\n', out_);
  std::fflush(out_);
}

void Progress::draw(int64_t done, const std::string& note) {
  constexpr int kWidth = 24;
  const double frac = std::clamp(double(done) / double(total_), 0.0, 1.0);
  const int filled = static_cast<int>(frac * kWidth);
  std::string bar(kWidth, ' ');
  for (int i = 0; i < filled; ++i) bar[i] = '=';
  if (filled < kWidth && done > 0) bar[filled] = '>';
  const double t = seconds();
  const double rate = t > 0 ? done / t : 0;
  std::string eta = rate > 0 && done < total_ ? " ETA " + format_duration((total_ - done) / rate) : "";
  char buf[512];
  std::snprintf(buf, sizeof buf, "%s [%s] %lld/%lld %s%s%s%s", label_.c_str(), bar.c_str(), (long long)done,
                (long long)total_, format_duration(t).c_str(), eta.c_str(), note.empty() ? "" : "  ",
                note.c_str());
  std::string line = buf;
  const size_t width = line.size();
  if (width < last_width_) line.append(last_width_ - width, ' ');
  last_width_ = width;
  std::fprintf(out_, "\r%s", line.c_str());
  std::fflush(out_);
}

}  // namespace perceiver
