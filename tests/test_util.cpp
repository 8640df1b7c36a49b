#include "test_util.h"

#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdio>
#include <cstdlib>

#include "kernels/fast_kernels.h"
#include "perceiver/error.h"

namespace perceiver::test {

std::filesystem::path shared_dir() {
  if (const char* env = std::getenv("PERCEIVER_SHARED_DIR"); env && *env) return env;
  return PERCEIVER_SHARED_DIR_DEFAULT;
}
std::filesystem::path vectors_dir() { return shared_dir() / "vectors"; }

bool cpu_skips_are_failures() { return fast::env_flag("PERCEIVER_TESTS_REQUIRE_CPU"); }

void expect_refused_on_this_cpu(const std::function<void()>& run, const std::string& message) {
  try {
    run();
    ADD_FAILURE() << "ran, where this CPU should be refused with: " << message;
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::usage);
    EXPECT_NE(std::string(e.what()).find(message), std::string::npos) << e.what();
  }
}
std::filesystem::path source_dir() { return PERCEIVER_SOURCE_DIR; }
std::filesystem::path cli_path() { return PERCEIVER_CLI_PATH; }

namespace {
struct TempRoot {
  std::filesystem::path path;
  ~TempRoot() {
    std::error_code ec;
    if (!path.empty()) std::filesystem::remove_all(path, ec);
  }
};
TempRoot& temp_root() {
  static TempRoot root;
  if (root.path.empty()) {
    std::string pattern = (std::filesystem::temp_directory_path() / "perceiver-test-XXXXXX").string();
    if (!mkdtemp(pattern.data())) std::abort();
    root.path = pattern;
  }
  return root;
}
}  // namespace

std::filesystem::path temp_dir(const std::string& tag) {
  static int counter = 0;
  auto dir = temp_root().path / (tag + "-" + std::to_string(counter++));
  std::filesystem::create_directories(dir);
  return dir;
}

::testing::AssertionResult AllCloseScaled(const std::vector<float>& got, const std::vector<float>& want,
                                          double rel_tol) {
  if (got.size() != want.size())
    return ::testing::AssertionFailure() << "size " << got.size() << " != expected " << want.size();
  double max_want = 0, max_err = 0;
  size_t worst = 0;
  for (size_t i = 0; i < want.size(); ++i) {
    max_want = std::max(max_want, std::fabs(double(want[i])));
    double err = std::fabs(double(got[i]) - double(want[i]));
    if (!(err <= max_err)) {  // also catches NaN
      max_err = std::isnan(err) ? INFINITY : err;
      worst = i;
    }
  }
  double tol = rel_tol * std::max(1.0, max_want);
  if (max_err <= tol) return ::testing::AssertionSuccess() << "max err " << max_err << " <= " << tol;
  return ::testing::AssertionFailure() << "max err " << max_err << " > tol " << tol << " at index " << worst
                                       << " (got " << got[worst] << ", want " << want[worst] << ")";
}

std::string shell_quote(const std::filesystem::path& path) {
  std::string s = "'";
  s.append(path.string()).push_back('\'');
  return s;
}

int run_command(const std::string& command, std::string* output) {
  std::string full = command + " 2>&1";
  FILE* pipe = popen(full.c_str(), "r");
  if (!pipe) return -1;
  std::array<char, 4096> buffer;
  std::string text;
  size_t n;
  while ((n = fread(buffer.data(), 1, buffer.size(), pipe)) > 0) text.append(buffer.data(), n);
  int status = pclose(pipe);
  if (output) *output = text;
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

}  // namespace perceiver::test
