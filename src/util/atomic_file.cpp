// write_file_atomic: mkstemp next to the target, write, fsync, rename; the temporary never survives a
// failure.
#include "util/atomic_file.h"

#include <fcntl.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <fstream>
#include <string>
#include <system_error>

#include "perceiver/error.h"

namespace perceiver {
namespace {

// Permission bits for a new file: the existing target's, else 0666 minus the process umask.
mode_t target_mode(const std::string& path) {
  struct stat st;
  if (::stat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode)) return st.st_mode & 07777;
  mode_t umask_bits = 022;
  std::ifstream status("/proc/self/status");  // reading the umask without changing it (Linux >= 4.7)
  for (std::string line; std::getline(status, line);) {
    if (line.rfind("Umask:", 0) == 0) {
      try {
        umask_bits = static_cast<mode_t>(std::stoul(line.substr(6), nullptr, 8));
      } catch (const std::exception&) {
      }
      break;
    }
  }
  return 0666 & ~umask_bits;
}

}  // namespace

void write_file_atomic(const std::filesystem::path& path, std::string_view bytes) {
  const std::string target = path.string();
  std::string temp = target + ".tmp-XXXXXX";
  int fd = ::mkostemp(temp.data(), O_CLOEXEC);
  if (fd < 0) {
    std::string dir = path.has_parent_path() ? path.parent_path().string() : std::string(".");
    throw Error(ErrorKind::io, target + ": cannot create a temporary file in '" + dir +
                                   "': " + std::generic_category().message(errno));
  }

  auto fail = [&](const std::string& step, int err) {
    if (fd >= 0) ::close(fd);
    ::unlink(temp.c_str());
    throw Error(ErrorKind::io, target + ": " + step + " failed: " + std::generic_category().message(err));
  };

  size_t done = 0;
  while (done < bytes.size()) {
    ssize_t n = ::write(fd, bytes.data() + done, bytes.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) fail("write", n < 0 ? errno : EIO);
    done += static_cast<size_t>(n);
  }
  if (::fchmod(fd, target_mode(target)) != 0) fail("chmod", errno);
  if (::fsync(fd) != 0) fail("fsync", errno);
  int rc = ::close(fd);
  fd = -1;
  if (rc != 0) fail("close", errno);
  if (::rename(temp.c_str(), target.c_str()) != 0) fail("rename", errno);

  // Make the rename itself durable (best effort: some file systems refuse fsync on directories).
  std::string dir = path.has_parent_path() ? path.parent_path().string() : std::string(".");
  int dir_fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dir_fd >= 0) {
    ::fsync(dir_fd);
    ::close(dir_fd);
  }
}

}  // namespace perceiver
