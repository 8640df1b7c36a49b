// Hub client against tests/hub_server.py: cache layout, offline use, resume, integrity, errors, tokens.
#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "hub/hub.h"
#include "hub/progress.h"
#include "perceiver/error.h"
#include "test_util.h"

extern char** environ;

namespace perceiver {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

const char* const kConvTiny = "test-org/conv-tiny";
const char* const kPreprocessorJson = R"({"do_normalize": true, "size": 32, "crop_size": 32})";

std::string read_file(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

void write_file(const fs::path& path, const std::string& text) {
  fs::create_directories(path.parent_path());
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << text;
}

// Runs `call`, expecting perceiver::Error of `kind`; returns its message ("" and a test failure otherwise).
std::string error_of(const std::function<void()>& call, ErrorKind kind) {
  try {
    call();
  } catch (const Error& error) {
    EXPECT_EQ(static_cast<int>(error.kind()), static_cast<int>(kind)) << error.what();
    EXPECT_EQ(std::string(error.what()).find('\n'), std::string::npos) << "one line: " << error.what();
    return error.what();
  }
  ADD_FAILURE() << "no perceiver::Error thrown";
  return "";
}

class HubTest : public ::testing::Test {
 protected:
  void SetUp() override {
    work_ = test::temp_dir("hub");
    repos_ = work_ / "repos";
    fs::path source = test::vectors_dir() / "conv-tiny";
    ASSERT_TRUE(fs::exists(source / "model.safetensors")) << source;
    auto add = [&](const std::string& repo, std::vector<std::string> files) {
      fs::create_directories(repos_ / repo);
      for (const std::string& file : files) fs::copy_file(source / file, repos_ / repo / file);
    };
    add(kConvTiny, {"config.json", "model.safetensors", "pytorch_model.bin"});
    write_file(repos_ / kConvTiny / "preprocessor_config.json", kPreprocessorJson);
    add("test-org/bin-only", {"config.json", "pytorch_model.bin"});
    add("test-org/private", {"config.json", "model.safetensors"});
    add("test-org/no-config", {"model.safetensors"});
    add("solo-model", {"config.json", "model.safetensors"});

    home_ = work_ / "hf-home";
    setenv("HF_HOME", home_.c_str(), 1);
    for (const char* name :
         {"HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_TOKEN_PATH",
          "HF_HUB_OFFLINE", "PERCEIVER_HUB_TIMEOUT", "XDG_CACHE_HOME", "HF_HUB_DISABLE_PROGRESS_BARS",
          "http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"})
      unsetenv(name);
    start_server();
  }

  void TearDown() override { stop_server(); }

  void start_server() {
    fs::path port_file = work_ / "port";
    fs::remove(port_file);
    std::string script = (test::source_dir() / "tests" / "hub_server.py").string();
    std::vector<std::string> args = {
        "python3", script,     "--root",      repos_.string(),    "--control",  control_file(),
        "--log",   log_file(), "--port-file", port_file.string(), "--cdn-host", "localhost"};
    std::vector<char*> argv;
    for (std::string& arg : args) argv.push_back(arg.data());
    argv.push_back(nullptr);
    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    posix_spawn_file_actions_addopen(&actions, STDOUT_FILENO, "/dev/null", O_WRONLY, 0);
    int spawned = posix_spawnp(&server_pid_, "python3", &actions, nullptr, argv.data(), environ);
    posix_spawn_file_actions_destroy(&actions);
    ASSERT_EQ(spawned, 0) << "cannot start python3 (needed on PATH for the hub tests)";
    for (int i = 0; i < 500 && !fs::exists(port_file); ++i) {
      int status = 0;
      ASSERT_EQ(waitpid(server_pid_, &status, WNOHANG), 0) << "hub_server.py exited early";
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    ASSERT_TRUE(fs::exists(port_file)) << "hub_server.py did not start";
    port_ = std::stoi(read_file(port_file));
    endpoint_ = "http://127.0.0.1:" + std::to_string(port_);
    setenv("HF_ENDPOINT", (endpoint_ + "/").c_str(), 1);  // a trailing slash is tolerated
  }

  void stop_server() {
    if (server_pid_ <= 0) return;
    kill(server_pid_, SIGTERM);
    int status = 0;
    waitpid(server_pid_, &status, 0);
    server_pid_ = -1;
  }

  std::string control_file() const { return (work_ / "control.json").string(); }
  std::string log_file() const { return (work_ / "requests.log").string(); }
  void control(const json& settings) { write_file(control_file(), settings.dump()); }

  std::vector<json> requests() const {
    std::vector<json> entries;
    std::ifstream in(log_file());
    for (std::string line; std::getline(in, line);)
      if (!line.empty()) entries.push_back(json::parse(line));
    return entries;
  }
  std::vector<json> cdn_requests() const {
    std::vector<json> entries;
    for (const json& entry : requests())
      if (entry["path"].get<std::string>().rfind("/cdn/", 0) == 0) entries.push_back(entry);
    return entries;
  }

  fs::path cache() const { return home_ / "hub"; }
  fs::path repo_cache(const std::string& folder) const { return cache() / folder; }
  fs::path source(const std::string& repo, const std::string& file) const { return repos_ / repo / file; }

  static std::vector<fs::path> incomplete_files(const fs::path& folder) {
    std::vector<fs::path> found;
    if (!fs::exists(folder / "blobs")) return found;
    for (const auto& entry : fs::directory_iterator(folder / "blobs"))
      if (entry.path().extension() == ".incomplete") found.push_back(entry.path());
    return found;
  }

  fs::path resolve(const std::string& repo, const std::string& revision = "main", bool quiet = true) {
    HubOptions options;
    options.revision = revision;
    options.quiet = quiet;
    return resolve_hub_model(repo, options);
  }

  fs::path work_, repos_, home_;
  pid_t server_pid_ = -1;
  int port_ = 0;
  std::string endpoint_;
};

TEST(HubRepoId, RecognisesRepoIdsAndPaths) {
  EXPECT_TRUE(is_hub_repo_id("deepmind/vision-perceiver-conv"));
  EXPECT_TRUE(is_hub_repo_id("gpt2"));
  EXPECT_TRUE(is_hub_repo_id("org_1/model.v2-tiny"));
  EXPECT_FALSE(is_hub_repo_id(""));
  EXPECT_FALSE(is_hub_repo_id("a/b/c"));
  EXPECT_FALSE(is_hub_repo_id("/abs/path"));
  EXPECT_FALSE(is_hub_repo_id("./model"));
  EXPECT_FALSE(is_hub_repo_id("org/-name"));
  EXPECT_FALSE(is_hub_repo_id("org/name."));
  EXPECT_FALSE(is_hub_repo_id("org/na--me"));
  EXPECT_FALSE(is_hub_repo_id("org/na..me"));
  EXPECT_FALSE(is_hub_repo_id("org/name.git"));
  EXPECT_FALSE(is_hub_repo_id("org/na me"));
  EXPECT_FALSE(is_hub_repo_id("org/" + std::string(100, 'a')));
  fs::path dir = test::temp_dir("repo-id");
  fs::create_directories(dir / "org" / "name");
  fs::path old = fs::current_path();
  fs::current_path(dir);
  EXPECT_FALSE(is_hub_repo_id("org/name"));  // an existing folder wins
  EXPECT_TRUE(is_hub_repo_id("org/other"));
  fs::current_path(old);
}

TEST(HubCacheDir, FollowsHuggingfaceHubPrecedence) {
  for (const char* name : {"HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_HOME", "XDG_CACHE_HOME"})
    unsetenv(name);
  const char* home = std::getenv("HOME");
  std::string saved_home = home ? home : "";
  setenv("HOME", "/home/someone", 1);
  EXPECT_EQ(hub_cache_dir(), fs::path("/home/someone/.cache/huggingface/hub"));
  setenv("XDG_CACHE_HOME", "/xdg", 1);
  EXPECT_EQ(hub_cache_dir(), fs::path("/xdg/huggingface/hub"));
  setenv("HF_HOME", "~/hf", 1);
  EXPECT_EQ(hub_cache_dir(), fs::path("/home/someone/hf/hub"));
  setenv("HF_HUB_CACHE", "/elsewhere/cache", 1);
  EXPECT_EQ(hub_cache_dir(), fs::path("/elsewhere/cache"));
  for (const char* name : {"HF_HUB_CACHE", "HF_HOME", "XDG_CACHE_HOME"}) unsetenv(name);
  if (home)
    setenv("HOME", saved_home.c_str(), 1);
  else
    unsetenv("HOME");
}

TEST(HubProgress, FormatsSizesRatesAndEta) {
  EXPECT_EQ(hub::format_bytes(532), "532 B");
  EXPECT_EQ(hub::format_bytes(1057096), "1.06 MB");
  EXPECT_EQ(hub::format_bytes(48'000'000), "48.0 MB");
  EXPECT_EQ(hub::format_bytes(3'200'000'000), "3.20 GB");
  EXPECT_EQ(hub::format_progress("model.safetensors", 12'000'000, 48'000'000, 3'000'000),
            "model.safetensors  12.0 MB / 48.0 MB   25%  3.00 MB/s  ETA 0:12");
  EXPECT_EQ(hub::format_progress("x", 5, 10, 0), "x  5 B / 10 B   50%");
  EXPECT_EQ(hub::format_progress("x", 0, 7200'000'000, 1'000'000),
            "x  0 B / 7.20 GB    0%  1.00 MB/s  ETA 2:00:00");
}

TEST_F(HubTest, FirstDownloadFillsTheCacheLikeHuggingfaceHub) {
  fs::path snapshot = resolve(kConvTiny);
  fs::path repo = repo_cache("models--test-org--conv-tiny");
  std::string commit = read_file(repo / "refs" / "main");
  ASSERT_EQ(commit.size(), 40u) << commit;
  EXPECT_EQ(snapshot, repo / "snapshots" / commit);
  for (const char* file : {"config.json", "preprocessor_config.json", "model.safetensors"}) {
    fs::path pointer = snapshot / file;
    ASSERT_TRUE(fs::is_symlink(pointer)) << pointer;
    fs::path target = fs::read_symlink(pointer);
    EXPECT_TRUE(target.is_relative()) << target;
    EXPECT_EQ(target.parent_path(), fs::path("../../blobs")) << target;
    EXPECT_TRUE(fs::is_regular_file(repo / "blobs" / target.filename()));
    EXPECT_EQ(read_file(pointer), read_file(source(kConvTiny, file))) << file;
  }
  EXPECT_FALSE(fs::exists(snapshot / "pytorch_model.bin"))
      << "only fetched when model.safetensors is missing";
  EXPECT_TRUE(incomplete_files(repo).empty());
  // LFS blobs are named by their sha256, the CDN address the hub redirected to.
  auto cdn = cdn_requests();
  ASSERT_EQ(cdn.size(), 1u);
  std::string sha = cdn[0]["path"].get<std::string>().substr(5);
  EXPECT_EQ(fs::read_symlink(snapshot / "model.safetensors").filename(), fs::path(sha));
  for (const json& entry : requests()) {
    EXPECT_EQ(entry["user_agent"], "perceiver.cpp/0.1");
    EXPECT_EQ(entry["path"].get<std::string>().rfind("//", 0), std::string::npos) << entry.dump();
  }
}

TEST_F(HubTest, SecondCallNeedsOneRequestAndSurvivesAStoppedServer) {
  fs::path first = resolve(kConvTiny);
  size_t before = requests().size();
  EXPECT_EQ(resolve(kConvTiny), first);
  EXPECT_EQ(requests().size(), before + 1) << "one HEAD for the branch, the commit's files are then cached";

  stop_server();  // connection refused from now on
  testing::internal::CaptureStderr();
  EXPECT_EQ(resolve(kConvTiny, "main", /*quiet=*/false), first);
  std::string notes = testing::internal::GetCapturedStderr();
  EXPECT_NE(notes.find("using cached files for test-org/conv-tiny"), std::string::npos) << notes;
  EXPECT_NE(notes.find("unreachable"), std::string::npos) << notes;
}

TEST_F(HubTest, OfflineModeNeverTouchesTheNetwork) {
  fs::path first = resolve(kConvTiny);
  size_t before = requests().size();
  for (const char* value : {"1", "true", "YES", "on"}) {
    setenv("HF_HUB_OFFLINE", value, 1);
    testing::internal::CaptureStderr();
    EXPECT_EQ(resolve(kConvTiny, "main", /*quiet=*/false), first) << value;
    std::string notes = testing::internal::GetCapturedStderr();
    EXPECT_NE(notes.find("using cached files for test-org/conv-tiny (offline)"), std::string::npos) << notes;
  }
  testing::internal::CaptureStderr();
  resolve(kConvTiny);
  EXPECT_EQ(testing::internal::GetCapturedStderr(), "") << "quiet prints nothing";
  EXPECT_EQ(requests().size(), before);
}

TEST_F(HubTest, OfflineWithoutCacheNamesRepoAndFile) {
  setenv("HF_HUB_OFFLINE", "1", 1);
  std::string message = error_of([&] { resolve(kConvTiny); }, ErrorKind::network);
  EXPECT_EQ(message, "test-org/conv-tiny: config.json is not in the cache and HF_HUB_OFFLINE=1");
  EXPECT_TRUE(requests().empty());
}

TEST_F(HubTest, UnreachableHubWithoutCacheIsANetworkError) {
  stop_server();
  std::string message = error_of([&] { resolve(kConvTiny); }, ErrorKind::network);
  EXPECT_NE(message.find("test-org/conv-tiny: config.json is not in the cache"), std::string::npos)
      << message;
  EXPECT_NE(message.find("127.0.0.1"), std::string::npos) << message;
}

TEST_F(HubTest, StalledHubFallsBackToTheCache) {
  fs::path first = resolve(kConvTiny);
  setenv("PERCEIVER_HUB_TIMEOUT", "1", 1);
  control({{"hang_s", 4}});
  auto start = std::chrono::steady_clock::now();
  EXPECT_EQ(resolve(kConvTiny), first);
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(3));
}

TEST_F(HubTest, HubErrorsFallBackToTheCacheOnlyWhenCached) {
  control({{"status", {{"test-org/conv-tiny/config.json", 503}}}});
  std::string message = error_of([&] { resolve(kConvTiny); }, ErrorKind::network);
  EXPECT_NE(message.find("test-org/conv-tiny/config.json: HTTP 503"), std::string::npos) << message;
  control(json::object());
  fs::path first = resolve(kConvTiny);
  control({{"status", {{"test-org/conv-tiny/config.json", 503}}}});
  EXPECT_EQ(resolve(kConvTiny), first);
}

TEST_F(HubTest, InterruptedDownloadResumesWithARangeRequest) {
  control({{"cut_after", 300000}});
  std::string message = error_of([&] { resolve(kConvTiny); }, ErrorKind::network);
  EXPECT_NE(message.find("test-org/conv-tiny/model.safetensors: download interrupted"), std::string::npos)
      << message;
  fs::path repo = repo_cache("models--test-org--conv-tiny");
  auto partial = incomplete_files(repo);
  ASSERT_EQ(partial.size(), 1u);
  EXPECT_EQ(fs::file_size(partial[0]), 300000u);

  control(json::object());
  fs::path snapshot = resolve(kConvTiny);
  EXPECT_EQ(read_file(snapshot / "model.safetensors"), read_file(source(kConvTiny, "model.safetensors")));
  EXPECT_TRUE(incomplete_files(repo).empty());
  auto cdn = cdn_requests();
  ASSERT_EQ(cdn.size(), 2u);
  EXPECT_TRUE(cdn[0]["range"].is_null());
  EXPECT_EQ(cdn[1]["range"], "bytes=300000-");
  EXPECT_EQ(cdn[1]["status"], 206);
}

TEST_F(HubTest, ResumeIgnoredByTheServerStartsOver) {
  control({{"cut_after", 300000}});
  error_of([&] { resolve(kConvTiny); }, ErrorKind::network);
  control({{"ignore_range", true}});
  fs::path snapshot = resolve(kConvTiny);
  EXPECT_EQ(read_file(snapshot / "model.safetensors"), read_file(source(kConvTiny, "model.safetensors")));
  auto cdn = cdn_requests();
  ASSERT_EQ(cdn.size(), 2u);
  EXPECT_EQ(cdn[1]["range"], "bytes=300000-");
  EXPECT_EQ(cdn[1]["status"], 200);
}

TEST_F(HubTest, CompletePartialFileIsCheckedAndKeptOn416) {
  control({{"cut_after", 1000}});
  error_of([&] { resolve(kConvTiny); }, ErrorKind::network);
  fs::path repo = repo_cache("models--test-org--conv-tiny");
  auto partial = incomplete_files(repo);
  ASSERT_EQ(partial.size(), 1u);
  write_file(partial[0], read_file(source(kConvTiny, "model.safetensors")));  // as if killed before rename
  control(json::object());
  fs::path snapshot = resolve(kConvTiny);
  EXPECT_EQ(read_file(snapshot / "model.safetensors"), read_file(source(kConvTiny, "model.safetensors")));
  auto cdn = cdn_requests();
  ASSERT_EQ(cdn.size(), 2u);
  EXPECT_EQ(cdn[1]["status"], 416);
}

TEST_F(HubTest, CorruptedDownloadIsRejectedAndRemoved) {
  control({{"corrupt", json::array({"test-org/conv-tiny/model.safetensors"})}});
  std::string message = error_of([&] { resolve(kConvTiny); }, ErrorKind::network);
  EXPECT_NE(message.find("test-org/conv-tiny/model.safetensors: corrupted download"), std::string::npos)
      << message;
  fs::path repo = repo_cache("models--test-org--conv-tiny");
  std::string sha = cdn_requests().at(0)["path"].get<std::string>().substr(5);
  EXPECT_FALSE(fs::exists(repo / "blobs" / sha));
  EXPECT_TRUE(incomplete_files(repo).empty());
  EXPECT_FALSE(fs::exists(repo / "snapshots" / read_file(repo / "refs" / "main") / "model.safetensors"));

  control(json::object());
  fs::path snapshot = resolve(kConvTiny);
  EXPECT_EQ(read_file(snapshot / "model.safetensors"), read_file(source(kConvTiny, "model.safetensors")));
}

TEST_F(HubTest, PartialFileLongerThanTheBlobIsDiscarded) {
  control({{"cut_after", 1000}});
  error_of([&] { resolve(kConvTiny); }, ErrorKind::network);
  auto partial = incomplete_files(repo_cache("models--test-org--conv-tiny"));
  ASSERT_EQ(partial.size(), 1u);
  write_file(partial[0], std::string(2'000'000, 'x'));
  control(json::object());
  fs::path snapshot = resolve(kConvTiny);
  EXPECT_EQ(read_file(snapshot / "model.safetensors"), read_file(source(kConvTiny, "model.safetensors")));
}

TEST_F(HubTest, BinOnlyRepoFallsBackToPytorchModelBin) {
  fs::path snapshot = resolve("test-org/bin-only");
  EXPECT_EQ(read_file(snapshot / "pytorch_model.bin"),
            read_file(source("test-org/bin-only", "pytorch_model.bin")));
  EXPECT_FALSE(fs::exists(snapshot / "model.safetensors"));
  EXPECT_FALSE(fs::exists(snapshot / "preprocessor_config.json"));
  fs::path no_exist = repo_cache("models--test-org--bin-only") / ".no_exist" / snapshot.filename();
  EXPECT_TRUE(fs::exists(no_exist / "model.safetensors"));
  EXPECT_TRUE(fs::exists(no_exist / "preprocessor_config.json"));
  setenv("HF_HUB_OFFLINE", "1", 1);
  EXPECT_EQ(resolve("test-org/bin-only"), snapshot);
}

TEST_F(HubTest, MissingRepoRevisionOrConfigAreClearErrors) {
  std::string message = error_of([&] { resolve("test-org/nope"); }, ErrorKind::network);
  EXPECT_EQ(message.rfind("test-org/nope: repository not found on " + endpoint_, 0), 0u) << message;
  EXPECT_NE(message.find("HF_TOKEN"), std::string::npos) << message;
  message = error_of([&] { resolve(kConvTiny, "v9"); }, ErrorKind::network);
  EXPECT_EQ(message, "test-org/conv-tiny: revision 'v9' not found on " + endpoint_);
  message = error_of([&] { resolve("test-org/no-config"); }, ErrorKind::model);
  EXPECT_EQ(message.rfind("test-org/no-config: config.json is not in the repository", 0), 0u) << message;
  error_of([&] { resolve("not a repo"); }, ErrorKind::usage);
  error_of([&] { resolve(kConvTiny, "../../etc"); }, ErrorKind::usage);
}

TEST_F(HubTest, RevisionIsUrlEncodedAndRecordedUnderRefs) {
  fs::path snapshot = resolve(kConvTiny, "refs/pr/1");
  fs::path repo = repo_cache("models--test-org--conv-tiny");
  EXPECT_EQ(read_file(repo / "refs" / "refs" / "pr" / "1"), snapshot.filename().string());
  EXPECT_FALSE(fs::exists(repo / "refs" / "main"));
  EXPECT_EQ(requests().at(0)["path"], "/test-org/conv-tiny/resolve/refs%2Fpr%2F1/config.json");

  // A commit hash as revision: no ref written; once cached, no request at all.
  std::string commit = snapshot.filename().string();
  EXPECT_EQ(resolve(kConvTiny, commit), snapshot);
  EXPECT_FALSE(fs::exists(repo / "refs" / commit));
  size_t before = requests().size();
  EXPECT_EQ(resolve(kConvTiny, commit), snapshot);
  EXPECT_EQ(requests().size(), before);
}

TEST_F(HubTest, RepoWithoutOrganisation) {
  fs::path snapshot = resolve("solo-model");
  EXPECT_EQ(snapshot.parent_path().parent_path(), repo_cache("models--solo-model"));
  EXPECT_TRUE(fs::is_regular_file(snapshot / "model.safetensors"));
}

TEST_F(HubTest, RenamedRepoIsFollowedOnTheSameHost) {
  control({{"renamed", {{"old-org/conv-tiny", kConvTiny}}}});
  fs::path snapshot = resolve("old-org/conv-tiny");
  EXPECT_EQ(snapshot.parent_path().parent_path(), repo_cache("models--old-org--conv-tiny"));
  EXPECT_EQ(read_file(snapshot / "config.json"), read_file(source(kConvTiny, "config.json")));
}

TEST_F(HubTest, PrivateRepoNeedsTheTokenWhichNeverReachesTheCdn) {
  control({{"private", {{"test-org/private", "secret-token"}}}});
  std::string message = error_of([&] { resolve("test-org/private"); }, ErrorKind::network);
  EXPECT_EQ(message.rfind("test-org/private/config.json: ", 0), 0u) << message;
  EXPECT_NE(message.find("set HF_TOKEN"), std::string::npos) << message;
  setenv("HF_TOKEN", "wrong-token", 1);
  error_of([&] { resolve("test-org/private"); }, ErrorKind::network);

  setenv("HF_TOKEN", "secret-token", 1);
  fs::path snapshot = resolve("test-org/private");
  EXPECT_EQ(read_file(snapshot / "model.safetensors"),
            read_file(source("test-org/private", "model.safetensors")));
  size_t hub_requests = 0, cdn = 0;
  for (const json& entry : requests()) {
    bool to_cdn = entry["path"].get<std::string>().rfind("/cdn/", 0) == 0;
    if (to_cdn) {
      ++cdn;
      EXPECT_TRUE(entry["authorization"].is_null()) << "token leaked to the CDN host: " << entry.dump();
      EXPECT_EQ(entry["host"], "localhost:" + std::to_string(port_));
    } else if (entry["authorization"] == "Bearer secret-token") {
      ++hub_requests;
    }
  }
  EXPECT_EQ(cdn, 1u);
  EXPECT_GE(hub_requests, 3u);
}

TEST_F(HubTest, TokenFileInHfHomeIsUsed) {
  control({{"private", {{"test-org/private", "file-token"}}}});
  write_file(home_ / "token", "file-token\n");
  EXPECT_NO_THROW(resolve("test-org/private"));
  fs::remove_all(cache());
  write_file(work_ / "elsewhere-token", "nope");
  setenv("HF_TOKEN_PATH", (work_ / "elsewhere-token").c_str(), 1);
  error_of([&] { resolve("test-org/private"); }, ErrorKind::network);
}

TEST_F(HubTest, HuggingfaceHubCacheIsReadAsIs) {
  // The layout huggingface_hub writes, made by hand: refs, relative snapshot links, blobs.
  setenv("HF_HUB_CACHE", (work_ / "py-cache").c_str(), 1);
  setenv("HF_HUB_OFFLINE", "1", 1);
  fs::path repo = work_ / "py-cache" / "models--deepmind--vision-perceiver-conv";
  std::string commit(40, 'a');
  write_file(repo / "refs" / "main", commit);
  fs::create_directories(repo / "blobs");
  fs::copy_file(source(kConvTiny, "config.json"), repo / "blobs" / "1111");
  fs::copy_file(source(kConvTiny, "model.safetensors"), repo / "blobs" / std::string(64, 'b'));
  fs::create_directories(repo / "snapshots" / commit);
  fs::create_symlink("../../blobs/1111", repo / "snapshots" / commit / "config.json");
  fs::create_symlink("../../blobs/" + std::string(64, 'b'),
                     repo / "snapshots" / commit / "model.safetensors");
  EXPECT_EQ(resolve("deepmind/vision-perceiver-conv"), repo / "snapshots" / commit);
  fs::remove(repo / "snapshots" / commit / "model.safetensors");
  std::string message = error_of([&] { resolve("deepmind/vision-perceiver-conv"); }, ErrorKind::network);
  EXPECT_EQ(message,
            "deepmind/vision-perceiver-conv: model.safetensors is not in the cache and HF_HUB_OFFLINE=1");
}

TEST_F(HubTest, ConcurrentDownloadsOfOneBlobTakeTurns) {
  control({{"chunk_delay_s", 0.01}});
  fs::path results[2];
  std::string errors[2];
  std::vector<std::thread> threads;
  for (int i = 0; i < 2; ++i)
    threads.emplace_back([&, i] {
      try {
        results[i] = resolve(kConvTiny);
      } catch (const std::exception& error) {
        errors[i] = error.what();
      }
    });
  for (auto& thread : threads) thread.join();
  EXPECT_EQ(errors[0], "");
  EXPECT_EQ(errors[1], "");
  EXPECT_EQ(results[0], results[1]);
  EXPECT_EQ(read_file(results[0] / "model.safetensors"), read_file(source(kConvTiny, "model.safetensors")));
  EXPECT_EQ(cdn_requests().size(), 1u) << "the second download waited for the first one's blob";
}

}  // namespace
}  // namespace perceiver
