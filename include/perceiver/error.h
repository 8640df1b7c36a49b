// perceiver.cpp: error type shared by the library and its tools.
#pragma once

#include <stdexcept>
#include <string>

namespace perceiver {

// What went wrong; the CLI maps each kind to a documented exit code.
enum class ErrorKind {
  usage = 2,      // bad command line or options
  bad_input = 3,  // an input file (image, .npy, pixels) is missing, corrupt or unsupported
  model = 4,      // model directory, config.json or weights are missing, corrupt or inconsistent
  network = 5,    // hub download failed (HTTP error, no connection, offline and not cached)
  io = 6,         // writing an output file failed
  internal = 70,  // a bug: an invariant did not hold
};

// Every failure is reported as one line: "<file>: <what is wrong>".
class Error : public std::runtime_error {
 public:
  Error(ErrorKind kind, const std::string& message) : std::runtime_error(message), kind_(kind) {}
  ErrorKind kind() const { return kind_; }
  int exit_code() const { return static_cast<int>(kind_); }

 private:
  ErrorKind kind_;
};

}  // namespace perceiver
