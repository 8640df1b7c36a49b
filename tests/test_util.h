// Helpers shared by the test executables: where the golden vectors are, and the parity check.
#pragma once

#include <gtest/gtest.h>

#include <filesystem>
#include <functional>
#include <string>
#include <vector>

namespace perceiver::test {

// ../shared next to the project root, or $PERCEIVER_SHARED_DIR.
std::filesystem::path shared_dir();
std::filesystem::path vectors_dir();  // shared_dir() / "vectors"
std::filesystem::path source_dir();   // the project root
std::filesystem::path cli_path();     // build/bin/perceiver

// Fresh empty temporary directory, removed when the test process exits.
std::filesystem::path temp_dir(const std::string& tag);

// The project's parity bar: max|got - want| <= rel_tol * max(1, max|want|).
::testing::AssertionResult AllCloseScaled(const std::vector<float>& got, const std::vector<float>& want,
                                          double rel_tol);

// A path in single quotes for a shell command line.
std::string shell_quote(const std::filesystem::path& path);

// Runs a shell command, returns its exit status; stdout+stderr captured into *output when non-null.
int run_command(const std::string& command, std::string* output = nullptr);

// Whether $PERCEIVER_TESTS_REQUIRE_CPU is set (CI sets it): its machines have AVX-512 VNNI, so a check that
// this CPU cannot run is a failure there, not a skip that would hide a broken dispatch.
bool cpu_skips_are_failures();

// For a precision this CPU lacks: run() throws a usage Error whose message contains `message`.
void expect_refused_on_this_cpu(const std::function<void()>& run, const std::string& message);

}  // namespace perceiver::test

// For a check that needs a CPU feature (AVX-512, VNNI) this machine lacks: skips the test, or fails it where
// cpu_skips_are_failures(). Returns from the test function (or SetUp) either way.
#define PERCEIVER_SKIP_FOR_CPU(why)                             \
  do {                                                          \
    if (::perceiver::test::cpu_skips_are_failures()) {          \
      GTEST_FAIL() << "this CPU cannot run the check: " << why; \
    } else {                                                    \
      GTEST_SKIP() << why;                                      \
    }                                                           \
  } while (0)
