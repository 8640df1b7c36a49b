// perceiver serve: an Open Inference Protocol v2 (KServe V2 / Triton HTTP/REST) server with dynamic batching.
// The server itself lives in server/ (routes, protocol, batcher, metrics); this file is its command line.
#include <pthread.h>
#include <signal.h>

#include <chrono>
#include <cstdio>
#include <set>
#include <thread>

#include "../server/server.h"
#include "common.h"

namespace perceiver::cli {
namespace {

struct ServeArgs {
  std::vector<std::string> models;
  std::vector<std::string> random_models;  // hidden: full-size random conv models (load benchmarks)
  std::string host = "127.0.0.1";
  int port = 8000;
  int threads = 0;
  std::string precision = "fp32";
  int max_batch = 8;
  double max_queue_delay_ms = 5;
  int max_queue = 256;
  int max_body_mb = 64;
  int request_timeout_s = 60;
  int instances = 1;
};

std::string signal_name(int sig) { return sig == SIGTERM ? "SIGTERM" : sig == SIGINT ? "SIGINT" : "signal"; }

void run_serve(const ServeArgs& args) {
  if (args.models.empty() && args.random_models.empty())
    throw Error(ErrorKind::usage, "serve: give at least one --model [NAME=]DIR_OR_HUB_ID");

  // SIGTERM/SIGINT are taken by a waiting thread (below), so they must be blocked in every thread: block them
  // before any thread (OpenMP's, the HTTP pool's) is created.
  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGTERM);
  sigaddset(&stop_signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);

  ModelOptions options;
  options.precision = parse_precision(args.precision);
  options.threads = args.threads;
  std::vector<server::ModelEntry> entries;
  std::set<std::string> names;
  auto add = [&](const std::string& name, const std::string& source, std::unique_ptr<Model> model,
                 std::chrono::steady_clock::time_point t0) {
    const ModelInfo& info = model->info();
    const double ms =
        std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
    std::fprintf(stderr, "perceiver serve: loaded model '%s' from %s (%s, %d labels, %s%s) in %.0f ms\n",
                 name.c_str(), source.c_str(), info.architecture.c_str(), info.num_labels,
                 precision_name(info.precision), info.has_preprocessor ? ", takes images" : ", pixels only",
                 ms);
    entries.push_back({name, std::move(model)});
  };
  auto claim = [&](const std::string& name, const std::string& spec) {
    if (!names.insert(name).second)
      throw Error(ErrorKind::usage, "--model " + spec + ": a model named '" + name + "' is already served");
  };
  for (const std::string& spec : args.models) {
    auto [name, location] = server::parse_model_spec(spec);
    claim(name, spec);
    const auto t0 = std::chrono::steady_clock::now();
    add(name, location, Model::load(location, options), t0);
  }
  for (const std::string& name : args.random_models) {
    claim(name, name);
    ModelOptions random_options = options;
    random_options.preprocess_defaults = true;
    const auto t0 = std::chrono::steady_clock::now();
    add(name, "random weights (deepmind/vision-perceiver-conv shapes)",
        Model::create_random(vision_perceiver_conv_config_json(), 1, random_options), t0);
  }

  server::ServerOptions server_options;
  server_options.host = args.host;
  server_options.port = args.port;
  server_options.max_batch = args.max_batch;
  server_options.max_queue_delay = std::chrono::microseconds(int64_t(args.max_queue_delay_ms * 1000.0));
  server_options.max_queue = args.max_queue;
  server_options.max_body_bytes = int64_t(args.max_body_mb) << 20;
  server_options.request_timeout_s = args.request_timeout_s;
  server_options.instances = args.instances;
  std::string model_list;
  for (const auto& e : entries) model_list += (model_list.empty() ? "" : ", ") + e.name;

  server::Server server(server_options, std::move(entries));
  const int port = server.bind();
  std::thread signal_waiter([&] {
    int sig = 0;
    sigwait(&stop_signals, &sig);
    std::fprintf(stderr, "perceiver serve: %s: no new connections; answering the requests already received\n",
                 signal_name(sig).c_str());
    server.stop();
  });
  const std::string host = args.host.find(':') != std::string::npos ? "[" + args.host + "]" : args.host;
  std::fprintf(stderr,
               "perceiver serve: ready at http://%s:%d (models: %s; max batch %d, queue delay %.3g ms, "
               "%d instance(s) per model)\n",
               host.c_str(), port, model_list.c_str(), args.max_batch, args.max_queue_delay_ms,
               args.instances);
  std::fflush(stderr);
  server.run();
  signal_waiter.join();
  std::fprintf(stderr, "perceiver serve: stopped\n");
}

}  // namespace

void register_serve(CLI::App& app) {
  auto args = std::make_shared<ServeArgs>();
  CLI::App* cmd = app.add_subcommand(
      "serve",
      "Serve models over HTTP: Open Inference Protocol v2 (KServe V2 / Triton), POST /models/NAME with an "
      "image, /metrics (no authentication: see docs/serving.md)");
  cmd->add_option("-m,--model", args->models,
                  "[NAME=]DIR_OR_HUB_ID, repeatable; NAME defaults to the last part of the path or repo id");
  cmd->add_option("--random-model", args->random_models,
                  "NAME of a full-size random-weight conv model (load benchmarks)")
      ->group("");
  // --host/--port: the last one given wins (a container's entry point sets them, its arguments may again).
  cmd->add_option("--host", args->host, "Address to listen on (default 127.0.0.1: this machine only)")
      ->multi_option_policy(CLI::MultiOptionPolicy::TakeLast);
  cmd->add_option("--port", args->port, "Port (default 8000; 0: any free port, printed)")
      ->check(CLI::Range(0, 65535))
      ->multi_option_policy(CLI::MultiOptionPolicy::TakeLast);
  cmd->add_option("-t,--threads", args->threads, "Threads per forward pass (default: all cores)")
      ->check(CLI::Range(0, 1024));
  cmd->add_option("--precision", args->precision, "fp32, bf16 or int8")
      ->check(CLI::IsMember({"fp32", "bf16", "int8"}));
  cmd->add_option("--max-batch", args->max_batch, "Most images in one forward pass (default 8)")
      ->check(CLI::Range(1, 4096));
  cmd->add_option("--max-queue-delay-ms", args->max_queue_delay_ms,
                  "How long the oldest request waits for more to batch with (default 5)")
      ->check(CLI::Range(0.0, 10000.0));
  cmd->add_option("--max-queue", args->max_queue, "Requests waiting per model; more get 503 (default 256)")
      ->check(CLI::Range(1, 1000000));
  cmd->add_option("--max-body-mb", args->max_body_mb,
                  "Largest request body in MB; larger get 413 (default 64)")
      ->check(CLI::Range(1, 4096));
  cmd->add_option("--request-timeout-s", args->request_timeout_s,
                  "Seconds a request may take (reading it, waiting, running) (default 60)")
      ->check(CLI::Range(1, 86400));
  cmd->add_option("--instances", args->instances, "Workers (each with its own context) per model (default 1)")
      ->check(CLI::Range(1, 256));
  cmd->callback([args] { run_serve(*args); });
}

}  // namespace perceiver::cli
