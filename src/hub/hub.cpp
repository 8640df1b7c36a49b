// Hub downloads into the huggingface_hub cache layout, under <cache>/models--<org>--<name>/:
//   blobs/<etag>              file contents, named by ETag (git blob sha1, or sha256 for LFS files)
//   snapshots/<commit>/<file> relative symlinks ../../blobs/<etag>
//   refs/<revision>           the commit a branch or tag pointed to when last asked
//   .no_exist/<commit>/<file> empty marker: the file is not in that commit
// and <cache>/.locks/models--<org>--<name>/<etag>.lock, flock()ed while a blob is written.
#include "hub/hub.h"

#include <fcntl.h>
#include <openssl/evp.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cctype>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <optional>
#include <sstream>
#include <utility>
#include <vector>

#include "hub/http.h"
#include "hub/progress.h"
#include "perceiver/error.h"

namespace perceiver {
namespace {

namespace fs = std::filesystem;

constexpr const char* kUserAgent = "perceiver.cpp/0.1";
constexpr const char* kDefaultEndpoint = "https://huggingface.co";
constexpr uint64_t kProgressMinBytes = 1 << 20;

// --- small helpers -----------------------------------------------------------------------------------------

std::string env(const char* name) {
  const char* value = std::getenv(name);
  return value ? value : "";
}

std::string trim(std::string text) {
  size_t begin = 0, end = text.size();
  while (begin < end && std::isspace(static_cast<unsigned char>(text[begin]))) ++begin;
  while (end > begin && std::isspace(static_cast<unsigned char>(text[end - 1]))) --end;
  return text.substr(begin, end - begin);
}

// One line, printable, bounded: server-provided text goes into error messages.
std::string one_line(const std::string& text, size_t max = 200) {
  std::string out;
  for (char c : text) {
    if (out.size() >= max) {
      out += "...";
      break;
    }
    out += (c == '\n' || c == '\r' || c == '\t') ? ' ' : (static_cast<unsigned char>(c) < 0x20 ? '?' : c);
  }
  return trim(out);
}

bool env_truthy(const char* name) {
  std::string value = trim(env(name));
  for (char& c : value) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  return value == "1" || value == "ON" || value == "YES" || value == "TRUE";
}

fs::path expand_user(const std::string& path) {
  if (path == "~" || path.rfind("~/", 0) == 0) {
    std::string home = env("HOME");
    if (!home.empty()) return fs::path(home) / path.substr(path.size() > 1 ? 2 : 1);
  }
  return path;
}

fs::path hf_home() {
  if (std::string home = env("HF_HOME"); !home.empty()) return expand_user(home);
  std::string xdg = env("XDG_CACHE_HOME");
  return expand_user(xdg.empty() ? "~/.cache" : xdg) / "huggingface";
}

std::string read_token() {
  for (const char* name : {"HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"})
    if (std::string token = trim(env(name)); !token.empty()) return token;
  std::string token_path = env("HF_TOKEN_PATH");
  fs::path path = token_path.empty() ? hf_home() / "token" : expand_user(token_path);
  std::ifstream in(path);
  if (!in) return "";
  std::stringstream text;
  text << in.rdbuf();
  return trim(text.str());
}

std::string endpoint() {
  std::string value = trim(env("HF_ENDPOINT"));
  while (!value.empty() && value.back() == '/') value.pop_back();
  return value.empty() ? kDefaultEndpoint : value;
}

long stall_timeout_seconds() {
  std::string value = trim(env("PERCEIVER_HUB_TIMEOUT"));
  char* end = nullptr;
  long seconds = value.empty() ? 0 : std::strtol(value.c_str(), &end, 10);
  return seconds > 0 && end && *end == '\0' ? seconds : 30;
}

bool is_hex(const std::string& text, size_t length) {
  return text.size() == length && std::all_of(text.begin(), text.end(), [](char c) {
           return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f');
         });
}
bool is_commit_hash(const std::string& text) { return is_hex(text, 40); }

// A name used as one path component in the cache (ETags): no separators, no dot files, no "..".
bool is_safe_name(const std::string& name) {
  return !name.empty() && name[0] != '.' && name.size() <= 255 &&
         std::all_of(name.begin(), name.end(), [](char c) {
           return std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '_' || c == '.';
         });
}

// Revisions become paths under refs/ (a branch may hold slashes): refuse anything that could escape.
bool is_safe_revision(const std::string& revision) {
  if (revision.empty() || revision.size() > 255 || revision.front() == '/' || revision.back() == '/')
    return false;
  std::stringstream parts(revision);
  for (std::string part; std::getline(parts, part, '/');)
    if (part.empty() || part == "." || part == ".." || part.find('\0') != std::string::npos) return false;
  return true;
}

std::string normalize_etag(std::string etag) {
  etag = trim(etag);
  if (etag.rfind("W/", 0) == 0) etag.erase(0, 2);
  if (etag.size() >= 2 && etag.front() == '"' && etag.back() == '"') etag = etag.substr(1, etag.size() - 2);
  return etag;
}

std::optional<uint64_t> parse_size(const std::string& text) {
  if (text.empty() || !std::all_of(text.begin(), text.end(), [](char c) { return c >= '0' && c <= '9'; }))
    return std::nullopt;
  return std::strtoull(text.c_str(), nullptr, 10);
}

std::string read_small_file(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return "";
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

std::string errno_text(int error) { return std::strerror(error); }

// --- file-system pieces ------------------------------------------------------------------------------------

class UniqueFd {
 public:
  explicit UniqueFd(int fd = -1) : fd_(fd) {}
  ~UniqueFd() {
    if (fd_ >= 0) ::close(fd_);
  }
  UniqueFd(const UniqueFd&) = delete;
  UniqueFd& operator=(const UniqueFd&) = delete;
  int get() const { return fd_; }

 private:
  int fd_;
};

// Exclusive flock() on a lock file, held for the object's lifetime (also interoperates with the Python
// `filelock` package that huggingface_hub uses on the same path).
class FileLock {
 public:
  FileLock(const fs::path& path, const std::string& waiting_note) {
    fd_ = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (fd_ < 0)
      throw Error(ErrorKind::io, path.string() + ": cannot create lock file: " + errno_text(errno));
    if (::flock(fd_, LOCK_EX | LOCK_NB) == 0) return;
    if (errno != EWOULDBLOCK) fail(path);
    if (!waiting_note.empty()) std::fprintf(stderr, "%s\n", waiting_note.c_str());
    while (::flock(fd_, LOCK_EX) != 0)
      if (errno != EINTR) fail(path);
  }
  ~FileLock() { ::close(fd_); }  // releases the lock
  FileLock(const FileLock&) = delete;
  FileLock& operator=(const FileLock&) = delete;

 private:
  [[noreturn]] void fail(const fs::path& path) {
    int error = errno;
    ::close(fd_);
    throw Error(ErrorKind::io, path.string() + ": cannot lock: " + errno_text(error));
  }
  int fd_ = -1;
};

uint64_t file_size(int fd) {
  struct stat info {};
  return ::fstat(fd, &info) == 0 ? static_cast<uint64_t>(info.st_size) : 0;
}

// Lower-case hex sha256 of everything in `fd`, or "" on a read error.
std::string sha256_of(int fd) {
  EVP_MD_CTX* context = EVP_MD_CTX_new();
  if (!context) return "";
  std::string result;
  if (EVP_DigestInit_ex(context, EVP_sha256(), nullptr) == 1) {
    std::vector<unsigned char> buffer(1 << 20);
    off_t offset = 0;
    bool ok = true;
    for (;;) {
      ssize_t got = ::pread(fd, buffer.data(), buffer.size(), offset);
      if (got < 0 && errno == EINTR) continue;
      if (got < 0) ok = false;
      if (got <= 0) break;
      EVP_DigestUpdate(context, buffer.data(), static_cast<size_t>(got));
      offset += got;
    }
    unsigned char digest[EVP_MAX_MD_SIZE];
    unsigned int length = 0;
    if (ok && EVP_DigestFinal_ex(context, digest, &length) == 1) {
      static const char kHex[] = "0123456789abcdef";
      for (unsigned int i = 0; i < length; ++i) {
        result += kHex[digest[i] >> 4];
        result += kHex[digest[i] & 15];
      }
    }
  }
  EVP_MD_CTX_free(context);
  return result;
}

std::string unique_suffix() {
  static std::atomic<unsigned> counter{0};
  return ".tmp-" + std::to_string(::getpid()) + "-" + std::to_string(counter++);
}

// Writes `text` to `path` through a temporary file and rename(), creating parent folders.
void write_small_file(const fs::path& path, const std::string& text) {
  fs::create_directories(path.parent_path());
  fs::path temporary = path;
  temporary += unique_suffix();
  {
    std::ofstream out(temporary, std::ios::binary | std::ios::trunc);
    out << text;
    out.close();
    if (!out) {
      std::error_code ignored;
      fs::remove(temporary, ignored);
      throw Error(ErrorKind::io, path.string() + ": cannot write");
    }
  }
  fs::rename(temporary, path);
}

// snapshots/<commit>/<file> -> ../../blobs/<etag>, replacing whatever was there, atomically.
void link_snapshot(const fs::path& blob, const fs::path& pointer) {
  fs::create_directories(pointer.parent_path());
  fs::path target = blob.lexically_relative(pointer.parent_path());
  fs::path temporary = pointer;
  temporary += unique_suffix();
  fs::create_symlink(target, temporary);
  std::error_code error;
  fs::rename(temporary, pointer, error);
  if (error) {
    fs::remove(temporary, error);
    throw Error(ErrorKind::io, pointer.string() + ": cannot create the snapshot link");
  }
}

// --- download of one blob ----------------------------------------------------------------------------------

// Writes the body of a 200/206 answer into the .incomplete file, restarting when a resume request was
// ignored.
class BlobSink : public hub::BodySink {
 public:
  BlobSink(int fd, uint64_t resume_from, hub::ProgressBar& progress)
      : fd_(fd), resume_from_(resume_from), offset_(resume_from), progress_(progress) {}

  bool begin(const hub::HttpResponse& response) override {
    if (response.status == 206) {
      // "bytes <first>-<last>/<size>": the data must continue exactly where the file ends.
      std::string range = response.header("content-range");
      unsigned long long first = 0;
      if (std::sscanf(range.c_str(), "bytes %llu-", &first) != 1 || first != resume_from_) {
        protocol_error_ =
            "the server answered a resume request with the wrong range (" + one_line(range) + ")";
        return false;
      }
      return true;
    }
    if (resume_from_ > 0) {  // 200: the whole file again
      if (::ftruncate(fd_, 0) != 0) {
        io_errno_ = errno;
        return false;
      }
      resume_from_ = offset_ = 0;
      progress_.restart(0);
    }
    return true;
  }

  bool write(const char* data, size_t size) override {
    while (size > 0) {
      ssize_t done = ::pwrite(fd_, data, size, static_cast<off_t>(offset_));
      if (done < 0 && errno == EINTR) continue;
      if (done <= 0) {
        io_errno_ = done < 0 ? errno : EIO;
        return false;
      }
      data += done;
      size -= static_cast<size_t>(done);
      offset_ += static_cast<uint64_t>(done);
    }
    progress_.update(offset_);
    return true;
  }

  int io_errno() const { return io_errno_; }
  const std::string& protocol_error() const { return protocol_error_; }

 private:
  int fd_;
  uint64_t resume_from_;
  uint64_t offset_;
  hub::ProgressBar& progress_;
  int io_errno_ = 0;
  std::string protocol_error_;
};

// --- resolution of one repository --------------------------------------------------------------------------

enum class State { present, absent, unknown };  // absent: known not to be in the commit; unknown: not cached

struct Lookup {
  State state = State::unknown;
  fs::path path;
};

struct FileMetadata {
  std::string commit;
  std::string etag;
  std::optional<uint64_t> size;
  std::string location;  // where to GET it (a CDN URL for LFS files)
  bool lfs = false;      // etag is the sha256 of the contents
};

class Resolver {
 public:
  Resolver(const std::string& repo_id, const HubOptions& options)
      : repo_(repo_id),
        revision_(options.revision.empty() ? "main" : options.revision),
        quiet_(options.quiet),
        endpoint_(endpoint()),
        cache_(hub_cache_dir()),
        storage_(cache_ / ("models--" + folder_name(repo_id))),
        locks_(cache_ / ".locks" / ("models--" + folder_name(repo_id))),
        http_(hub::HttpSettings{kUserAgent, read_token(), hub::url_origin(endpoint_), 10,
                                stall_timeout_seconds()}) {
    if (env_truthy("HF_HUB_OFFLINE")) go_offline("HF_HUB_OFFLINE=1", /*by_choice=*/true);
  }

  fs::path run() {
    Lookup config = fetch("config.json");
    if (config.state == State::unknown) throw not_cached("config.json");
    if (config.state == State::absent)
      throw Error(ErrorKind::model, repo_ + ": config.json is not in the repository at revision '" +
                                        revision_ + "' (is it a Perceiver IO model?)");
    fetch("preprocessor_config.json");  // optional: absent or unknown both mean "use the defaults"
    Lookup weights = fetch("model.safetensors");
    if (weights.state != State::present) {
      Lookup bin = fetch("pytorch_model.bin");
      if (bin.state == State::present) {
        weights = bin;
      } else if (weights.state == State::unknown || bin.state == State::unknown) {
        throw not_cached(weights.state == State::unknown ? "model.safetensors" : "pytorch_model.bin");
      } else {
        throw Error(ErrorKind::model, repo_ + ": neither model.safetensors nor pytorch_model.bin is in the " +
                                          "repository at revision '" + revision_ + "'");
      }
    }
    if (offline_ && !quiet_) {
      if (offline_by_choice_)
        std::fprintf(stderr, "note: using cached files for %s (offline)\n", repo_.c_str());
      else
        std::fprintf(stderr, "note: %s; using cached files for %s\n", offline_reason_.c_str(), repo_.c_str());
    }
    return config.path.parent_path();
  }

 private:
  static std::string folder_name(const std::string& repo_id) {
    std::string name = repo_id;
    for (size_t at = name.find('/'); at != std::string::npos; at = name.find('/', at + 2))
      name.replace(at, 1, "--");
    return name;
  }

  std::string revision_for_requests() const { return pinned_.empty() ? revision_ : pinned_; }

  std::string url(const std::string& revision, const std::string& file) const {
    return endpoint_ + "/" + repo_ + "/resolve/" + hub::url_encode(revision) + "/" + file;
  }

  void go_offline(const std::string& reason, bool by_choice) {
    offline_ = true;
    offline_by_choice_ = by_choice;
    offline_reason_ = reason;
  }

  Error not_cached(const std::string& file) const {
    return Error(ErrorKind::network, repo_ + ": " + file + " is not in the cache and " + offline_reason_);
  }

  // What the cache knows about `file` in `commit`.
  Lookup lookup(const std::string& commit, const std::string& file) const {
    fs::path pointer = storage_ / "snapshots" / commit / file;
    std::error_code error;
    if (fs::is_regular_file(pointer, error)) return {State::present, pointer};  // follows the symlink
    if (fs::exists(storage_ / ".no_exist" / commit / file, error)) return {State::absent, {}};
    return {State::unknown, {}};
  }

  // The cache alone: the pinned commit, else the revision if it is a commit, else what refs/<revision> says.
  Lookup lookup_cached(const std::string& file) {
    std::string commit = pinned_;
    if (commit.empty()) commit = is_commit_hash(revision_) ? revision_ : trim(read_small_file(ref_path()));
    if (!is_commit_hash(commit)) return {};
    Lookup found = lookup(commit, file);
    if (found.state != State::unknown && pinned_.empty()) pinned_ = commit;
    return found;
  }

  fs::path ref_path() const { return storage_ / "refs" / revision_; }

  // All files come from the commit that the first answer named, even if the branch moves meanwhile.
  void pin(const std::string& commit, const std::string& file) {
    if (!pinned_.empty()) {
      if (commit != pinned_)
        throw Error(ErrorKind::network, repo_ + "/" + file + ": the hub answered with commit " + commit +
                                            " instead of " + pinned_);
      return;
    }
    pinned_ = commit;
    if (revision_ != commit && trim(read_small_file(ref_path())) != commit)
      write_small_file(ref_path(), commit);
  }

  Lookup fetch(const std::string& file) {
    std::string revision = revision_for_requests();
    if (is_commit_hash(revision)) {  // an immutable revision: the cache answers if it can
      Lookup found = lookup(revision, file);
      if (found.state != State::unknown) return found;
    }
    if (offline_) return lookup_cached(file);

    hub::HttpResponse head = http_.head(url(revision, file));
    if (!head.transport_ok) {
      go_offline(endpoint_ + " is unreachable (" + one_line(head.transport_error) + ")", /*by_choice=*/false);
      return lookup_cached(file);
    }
    if (head.status >= 400) return on_http_error(file, head);
    if (head.status >= 300 && !head.is_redirect())
      throw Error(ErrorKind::network, repo_ + "/" + file + ": HTTP " + std::to_string(head.status) +
                                          " without a Location from " + head.url);

    FileMetadata meta;
    meta.commit = head.header("x-repo-commit");
    if (!is_commit_hash(meta.commit))
      throw Error(ErrorKind::network, repo_ + "/" + file + ": " + endpoint_ +
                                          " answered without a valid X-Repo-Commit header (is HF_ENDPOINT a "
                                          "Hugging Face hub?)");
    std::string linked_etag = head.header("x-linked-etag");
    meta.etag = normalize_etag(linked_etag.empty() ? head.header("etag") : linked_etag);
    if (!is_safe_name(meta.etag))
      throw Error(ErrorKind::network, repo_ + "/" + file + ": " + endpoint_ +
                                          " answered without a usable ETag header ('" +
                                          one_line(meta.etag, 80) + "')");
    std::string linked_size = head.header("x-linked-size");
    meta.size = parse_size(linked_size.empty() ? head.header("content-length") : linked_size);
    meta.location = head.is_redirect() ? head.redirect_url : head.url;
    meta.lfs = !linked_etag.empty() && is_hex(meta.etag, 64);
    pin(meta.commit, file);
    return {State::present, download(file, meta)};
  }

  Lookup on_http_error(const std::string& file, const hub::HttpResponse& head) {
    std::string code = head.header("x-error-code");
    std::string commit = head.header("x-repo-commit");
    if (head.status == 404 && code == "EntryNotFound") {
      if (is_commit_hash(commit)) {
        fs::path marker = storage_ / ".no_exist" / commit / file;  // best effort: the cache may be read-only
        std::error_code ignored;
        fs::create_directories(marker.parent_path(), ignored);
        std::ofstream touch(marker, std::ios::app);
        pin(commit, file);
      }
      return {State::absent, {}};
    }
    if (code == "RevisionNotFound")
      throw Error(ErrorKind::network, repo_ + ": revision '" + revision_ + "' not found on " + endpoint_);

    std::string detail = one_line(head.header("x-error-message"));
    std::string message;
    if (code == "GatedRepo") {
      message =
          repo_ + "/" + file + ": access to this gated repository is restricted; " +
          (http_.settings().token.empty() ? "set HF_TOKEN to a token of an account that was granted access"
                                          : "the account of HF_TOKEN has not been granted access");
    } else if (code == "RepoNotFound" || (head.status == 404 && code.empty())) {
      message = repo_ + ": repository not found on " + endpoint_ +
                (http_.settings().token.empty() ? " (if it is private or gated, set HF_TOKEN)" : "");
    } else if (head.status == 401) {
      message = repo_ + "/" + file + ": authentication required" +
                (http_.settings().token.empty() ? " (set HF_TOKEN)" : "; HF_TOKEN was rejected");
    } else if (head.status == 403) {
      message = repo_ + "/" + file + ": forbidden" +
                (http_.settings().token.empty() ? " (set HF_TOKEN)" : "; HF_TOKEN has no access to it");
    } else {
      message = repo_ + "/" + file + ": HTTP " + std::to_string(head.status) + " from " + head.url +
                (detail.empty() ? "" : ": " + detail);
    }
    // Like huggingface_hub: the hub being down, or a token having expired, does not stop a cached model.
    Lookup cached = lookup_cached(file);
    if (cached.state != State::unknown) {
      if (!quiet_) std::fprintf(stderr, "note: %s; using the cached copy\n", message.c_str());
      return cached;
    }
    throw Error(ErrorKind::network, message);
  }

  fs::path download(const std::string& file, const FileMetadata& meta) {
    fs::path pointer = storage_ / "snapshots" / meta.commit / file;
    fs::path blob = storage_ / "blobs" / meta.etag;
    std::error_code error;
    if (fs::is_regular_file(pointer, error)) return pointer;
    fs::create_directories(blob.parent_path());
    fs::create_directories(locks_);
    FileLock lock(locks_ / (meta.etag + ".lock"),
                  quiet_ ? "" : "note: waiting for another process that downloads " + repo_ + "/" + file);
    if (!fs::is_regular_file(blob, error)) download_blob(file, meta, blob);
    link_snapshot(blob, pointer);
    return pointer;
  }

  void download_blob(const std::string& file, const FileMetadata& meta, const fs::path& blob) {
    const std::string where = repo_ + "/" + file + ": ";
    fs::path incomplete = blob;
    incomplete += ".incomplete";
    UniqueFd fd(::open(incomplete.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644));
    if (fd.get() < 0)
      throw Error(ErrorKind::io, where + "cannot create " + incomplete.string() + ": " + errno_text(errno));
    auto discard = [&] {
      std::error_code ignored;
      fs::remove(incomplete, ignored);
    };
    const uint64_t total = meta.size.value_or(0);
    bool show_progress = !quiet_ && ::isatty(STDERR_FILENO) && total > kProgressMinBytes &&
                         !env_truthy("HF_HUB_DISABLE_PROGRESS_BARS");

    for (int attempt = 0;; ++attempt) {
      uint64_t have = file_size(fd.get());
      if (meta.size && have > total) {  // longer than the file: not a prefix of it
        if (::ftruncate(fd.get(), 0) != 0) throw Error(ErrorKind::io, where + errno_text(errno));
        have = 0;
      }
      hub::ProgressBar progress(file, total, have, show_progress);
      BlobSink sink(fd.get(), have, progress);
      hub::HttpResponse response = http_.get(meta.location, have, sink);
      progress.finish();
      uint64_t now = file_size(fd.get());

      if (sink.io_errno() != 0)
        throw Error(ErrorKind::io,
                    where + "cannot write " + incomplete.string() + ": " + errno_text(sink.io_errno()));
      if (!sink.protocol_error().empty()) {
        discard();
        throw Error(ErrorKind::network, where + sink.protocol_error());
      }
      if (!response.transport_ok) {
        std::string done = meta.size ? format_fraction(now, total) : hub::format_bytes(now);
        throw Error(ErrorKind::network,
                    where + (now > 0 ? "download interrupted after " + done + " (" +
                                           one_line(response.transport_error) + "); run again to resume"
                                     : "download failed: " + one_line(response.transport_error)));
      }
      if (response.status == 416 && attempt == 0) {  // nothing left to send, or a stale partial file
        if (meta.size && now == total) break;
        if (::ftruncate(fd.get(), 0) != 0) throw Error(ErrorKind::io, where + errno_text(errno));
        continue;
      }
      if (response.status == 401 || response.status == 403)
        throw Error(ErrorKind::network, where + "HTTP " + std::to_string(response.status) + " from " +
                                            hub::url_origin(response.url) +
                                            (http_.settings().token.empty() ? " (set HF_TOKEN)" : ""));
      if (response.status != 200 && response.status != 206)
        throw Error(ErrorKind::network,
                    where + "HTTP " + std::to_string(response.status) + " from " + response.url);
      break;
    }

    uint64_t now = file_size(fd.get());
    if (meta.size && now < total)
      throw Error(ErrorKind::network, where + "download ended early after " + format_fraction(now, total) +
                                          "; run again to resume");
    if (meta.size && now > total) {
      discard();
      throw Error(ErrorKind::network, where + "corrupted download: " + std::to_string(now) +
                                          " bytes instead of " + std::to_string(total) +
                                          "; removed it, run again");
    }
    if (meta.lfs) {
      std::string digest = sha256_of(fd.get());
      if (digest != meta.etag) {
        discard();
        throw Error(ErrorKind::network, where + "corrupted download: sha256 " +
                                            (digest.empty() ? "unreadable" : digest) + " instead of " +
                                            meta.etag + "; removed it, run again");
      }
    }
    if (::fdatasync(fd.get()) != 0) throw Error(ErrorKind::io, where + "cannot sync " + incomplete.string());
    std::error_code error;
    fs::rename(incomplete, blob, error);
    if (error)
      throw Error(ErrorKind::io, where + "cannot rename " + incomplete.string() + ": " + error.message());
  }

  static std::string format_fraction(uint64_t done, uint64_t total) {
    return std::to_string(done) + " of " + std::to_string(total) + " bytes";
  }

  std::string repo_;
  std::string revision_;
  bool quiet_;
  std::string endpoint_;
  fs::path cache_;
  fs::path storage_;
  fs::path locks_;
  hub::HttpClient http_;
  std::string pinned_;  // the commit every file is taken from, once known
  bool offline_ = false;
  bool offline_by_choice_ = false;
  std::string offline_reason_;
};

bool is_repo_part(const std::string& part) {
  auto word = [](char c) { return std::isalnum(static_cast<unsigned char>(c)) || c == '_'; };
  if (part.empty() || !word(part.front()) || !word(part.back())) return false;
  return std::all_of(part.begin(), part.end(), [&](char c) { return word(c) || c == '-' || c == '.'; });
}

bool is_valid_repo_id(const std::string& id) {
  if (id.empty() || id.size() > 96) return false;
  if (id.find("--") != std::string::npos || id.find("..") != std::string::npos) return false;
  if (id.size() >= 4 && id.compare(id.size() - 4, 4, ".git") == 0) return false;
  size_t slash = id.find('/');
  if (slash == std::string::npos) return is_repo_part(id);
  return is_repo_part(id.substr(0, slash)) && is_repo_part(id.substr(slash + 1));
}

}  // namespace

std::filesystem::path hub_cache_dir() {
  for (const char* name : {"HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"})
    if (std::string value = env(name); !value.empty()) return expand_user(value);
  return hf_home() / "hub";
}

bool is_hub_repo_id(const std::string& model) {
  std::error_code error;
  if (model.empty() || fs::exists(model, error)) return false;
  return is_valid_repo_id(model);
}

std::filesystem::path resolve_hub_model(const std::string& repo_id, const HubOptions& options) {
  if (!is_valid_repo_id(repo_id))
    throw Error(ErrorKind::usage, repo_id + ": not a Hugging Face repo id (expected 'org/name' or 'name')");
  std::string revision = options.revision.empty() ? "main" : options.revision;
  if (!is_safe_revision(revision))
    throw Error(ErrorKind::usage, repo_id + ": invalid revision '" + one_line(revision, 80) + "'");
  try {
    return Resolver(repo_id, options).run();
  } catch (const fs::filesystem_error& error) {
    throw Error(ErrorKind::io,
                repo_id + ": cache " + one_line(error.path1().string()) + ": " + error.code().message());
  }
}

}  // namespace perceiver
