// `perceiver serve`: the Open Inference Protocol v2 REST endpoints (KServe V2 / Triton HTTP), the Hugging
// Face Inference API's raw image endpoint and Prometheus metrics over HTTP (cpp-httplib), each model behind
// its own dynamic batcher. Uses only the public library API (include/perceiver/).
#pragma once

#include <chrono>
#include <memory>
#include <string>
#include <vector>

#include "perceiver/perceiver.h"

namespace perceiver::server {

struct ServerOptions {
  std::string host = "127.0.0.1";
  int port = 8000;  // 0: any free port (Server::port() tells which)
  int max_batch = 8;
  std::chrono::microseconds max_queue_delay{5000};
  int max_queue = 256;
  int64_t max_body_bytes = int64_t(64) << 20;
  int request_timeout_s = 60;
  int instances = 1;     // workers (contexts) per model
  int http_threads = 0;  // <= 0: enough for max_queue waiting requests
};

struct ModelEntry {
  std::string name;
  std::unique_ptr<Model> model;
};

class Server {
 public:
  Server(ServerOptions options, std::vector<ModelEntry> models);
  ~Server();
  Server(const Server&) = delete;
  Server& operator=(const Server&) = delete;

  // Binds host:port; throws Error(usage) when it cannot. Returns the port bound.
  int bind();
  // Serves until stop(); then answers the requests already accepted and returns.
  void run();
  // Stops accepting (callable from any thread, e.g. a signal-waiting one).
  void stop();
  int port() const;

  struct Impl;

 private:
  std::unique_ptr<Impl> impl_;
};

// "NAME=DIR_OR_HUB_ID" -> {NAME, DIR}; "DIR" -> {last path component of DIR (or the repo id), DIR}.
std::pair<std::string, std::string> parse_model_spec(const std::string& spec);

}  // namespace perceiver::server
