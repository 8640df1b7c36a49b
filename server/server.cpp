#include "server.h"

#include <httplib.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <map>
#include <nlohmann/json.hpp>
#include <regex>

#include "batcher.h"
#include "metrics.h"
#include "protocol.h"

namespace perceiver::server {
namespace {

using nlohmann::json;
using clock_type = std::chrono::steady_clock;

const char* const kServerName = "perceiver.cpp";
const char* const kModelVersion = "1";

// One served model: its weights, one context per worker, its batcher.
struct Served {
  std::string name;
  std::unique_ptr<Model> model;
  std::vector<std::unique_ptr<Context>> contexts;
  std::unique_ptr<Batcher> batcher;
  int pixel_height = -1, pixel_width = -1;  // the only admitted size when known, else -1
};

void send_json(httplib::Response& res, int status, const json& body) {
  res.status = status;
  res.set_content(body.dump(-1, ' ', false, json::error_handler_t::replace), "application/json");
}

void send_error(httplib::Response& res, int status, const std::string& message) {
  send_json(res, status, json{{"error", message}});
}

int status_of(const Error& e) {
  switch (e.kind()) {
    case ErrorKind::bad_input:
    case ErrorKind::usage:
      return 400;
    default:
      return 500;
  }
}

// Time a request entered routing, per HTTP thread (httplib runs routing and the logger on one thread).
thread_local clock_type::time_point request_start;
thread_local bool request_started = false;

}  // namespace

std::pair<std::string, std::string> parse_model_spec(const std::string& spec) {
  std::string name, location = spec;
  const size_t eq = spec.find('=');
  if (eq != std::string::npos && spec.substr(0, eq).find('/') == std::string::npos) {
    name = spec.substr(0, eq);
    location = spec.substr(eq + 1);
  } else {
    std::string trimmed = spec;
    while (trimmed.size() > 1 && trimmed.back() == '/') trimmed.pop_back();
    const size_t slash = trimmed.rfind('/');
    name = slash == std::string::npos ? trimmed : trimmed.substr(slash + 1);
  }
  if (location.empty()) throw Error(ErrorKind::usage, "--model " + spec + ": no directory or hub id");
  if (name.empty() || name.size() > 128 || !std::all_of(name.begin(), name.end(), [](unsigned char ch) {
        return std::isalnum(ch) || ch == '-' || ch == '_' || ch == '.';
      }))
    throw Error(ErrorKind::usage,
                "--model " + spec + ": model name '" + name + "' must be letters, digits, '-', '_' or '.'");
  return {name, location};
}

struct Server::Impl {
  ServerOptions options;
  std::vector<std::unique_ptr<Served>> models;
  std::map<std::string, Served*> by_name;
  Metrics metrics;
  httplib::Server http;
  int bound_port = -1;
  int listen_socket = -1;  // the listening socket (POSIX fd)

  Impl(ServerOptions opts, std::vector<ModelEntry> entries) : options(std::move(opts)) {
    for (ModelEntry& entry : entries) {
      auto served = std::make_unique<Served>();
      served->name = entry.name;
      served->model = std::move(entry.model);
      const ModelInfo& info = served->model->info();
      if (info.fixed_image_height > 0) {
        served->pixel_height = info.fixed_image_height;
        served->pixel_width = info.fixed_image_width;
      } else if (info.has_preprocessor && info.image_height > 0) {
        served->pixel_height = info.image_height;
        served->pixel_width = info.image_width;
      }
      std::vector<BatchRunner> runners;
      for (int i = 0; i < std::max(1, options.instances); ++i) {
        served->contexts.push_back(served->model->create_context());
        Context* context = served->contexts.back().get();
        runners.push_back([context](const float* pixels, int batch, int height, int width, float* logits) {
          context->logits(pixels, batch, height, width, logits);
        });
      }
      BatcherOptions batcher_options;
      batcher_options.model_name = served->name;
      batcher_options.num_labels = info.num_labels;
      batcher_options.max_batch = options.max_batch;
      batcher_options.max_delay = options.max_queue_delay;
      batcher_options.max_queue = options.max_queue;
      served->batcher = std::make_unique<Batcher>(batcher_options, std::move(runners), &metrics);
      by_name[served->name] = served.get();
      models.push_back(std::move(served));
    }
    routes();
  }

  ~Impl() {
    for (auto& m : models) m->batcher->stop();
  }

  Served* find(const std::string& name, httplib::Response& res) {
    auto it = by_name.find(name);
    if (it == by_name.end()) {
      send_error(res, 404, "unknown model '" + name + "'");
      return nullptr;
    }
    return it->second;
  }

  // The model a request path names (for metrics labels): only known names, so clients cannot grow the label
  // set.
  std::string model_of_path(const std::string& path) const {
    for (const char* prefix : {"/v2/models/", "/models/"}) {
      const std::string p = prefix;
      if (path.rfind(p, 0) == 0) {
        const std::string rest = path.substr(p.size());
        const std::string name = rest.substr(0, rest.find('/'));
        if (by_name.count(name)) return name;
      }
    }
    return "";
  }

  json tensor_metadata(const std::string& name, const std::string& datatype,
                       std::vector<int64_t> shape) const {
    return json{{"name", name}, {"datatype", datatype}, {"shape", shape}};
  }

  json model_metadata(const Served& m) const {
    const ModelInfo& info = m.model->info();
    json inputs = json::array();
    inputs.push_back(tensor_metadata("pixel_values", "FP32", {-1, 3, m.pixel_height, m.pixel_width}));
    if (info.has_preprocessor) inputs.push_back(tensor_metadata("image", "BYTES", {-1}));
    json outputs = json::array({tensor_metadata("logits", "FP32", {-1, info.num_labels})});
    return json{
        {"name", m.name},
        {"versions", {kModelVersion}},
        {"platform", "perceiver"},
        {"inputs", inputs},
        {"outputs", outputs},
        {"parameters", {{"architecture", info.architecture}, {"precision", precision_name(info.precision)}}}};
  }

  // Triton's model configuration (the model_configuration extension): dims exclude the batch dimension.
  json model_config(const Served& m) const {
    const ModelInfo& info = m.model->info();
    json input = json::array();
    input.push_back({{"name", "pixel_values"},
                     {"data_type", "TYPE_FP32"},
                     {"format", "FORMAT_NCHW"},
                     {"dims", {3, m.pixel_height, m.pixel_width}}});
    if (info.has_preprocessor)
      input.push_back({{"name", "image"},
                       {"data_type", "TYPE_STRING"},
                       {"dims", {1}},
                       {"reshape", {{"shape", json::array()}}}});
    json output =
        json::array({{{"name", "logits"}, {"data_type", "TYPE_FP32"}, {"dims", {info.num_labels}}}});
    return json{
        {"name", m.name},
        {"platform", "perceiver"},
        {"backend", "perceiver"},
        {"max_batch_size", options.max_batch},
        {"input", input},
        {"output", output},
        {"dynamic_batching",
         {{"preferred_batch_size", {options.max_batch}},
          {"max_queue_delay_microseconds", options.max_queue_delay.count()},
          {"default_queue_policy", {{"max_queue_size", options.max_queue}}}}},
        {"instance_group", json::array({{{"count", std::max(1, options.instances)}, {"kind", "KIND_CPU"}}})}};
  }

  // Decodes and preprocesses encoded image files into a job (on the HTTP thread, off the inference thread).
  void add_images(const Served& m, const std::vector<std::string>& files, bool base64,
                  const std::string& what, BatchJob& job) const {
    if (!m.model->info().has_preprocessor)
      throw HttpError(400, what + ": model '" + m.name +
                               "' has no preprocessor_config.json, so it takes pixel_values only");
    std::vector<Image> images;
    images.reserve(files.size());
    for (size_t i = 0; i < files.size(); ++i) {
      const std::string name = what + "[" + std::to_string(i) + "]";
      std::string decoded;
      const std::string& bytes = base64 ? (decoded = decode_base64(files[i], name)) : files[i];
      try {
        images.push_back(decode_image(bytes.data(), bytes.size(), name));
      } catch (const Error& e) {
        throw HttpError(400, e.what());
      }
    }
    int height = 0, width = 0;
    for (size_t i = 0; i < images.size(); ++i) {
      int h = 0, w = 0;
      m.model->preprocessed_size(images[i], &h, &w);
      if (i == 0) {
        height = h;
        width = w;
      } else if (h != height || w != width) {
        throw HttpError(400, what + ": images preprocess to different sizes (" + std::to_string(height) +
                                 "x" + std::to_string(width) + " and " + std::to_string(h) + "x" +
                                 std::to_string(w) + "); send them in separate requests");
      }
    }
    job.images = int(images.size());
    job.height = height;
    job.width = width;
    const size_t per_image = size_t(3) * size_t(height) * size_t(width);
    job.pixels.resize(per_image * images.size());
    for (size_t i = 0; i < images.size(); ++i)
      m.model->preprocess(images[i], job.pixels.data() + i * per_image);
  }

  // Queues `job` and waits for its logits; throws HttpError on a full queue, a timeout or a failed pass.
  void run_job(Served& m, const std::shared_ptr<BatchJob>& job) {
    if (job->images < 1) throw HttpError(400, "the request holds no images");
    job->logits.resize(size_t(job->images) * size_t(m.model->info().num_labels));
    std::future<void> done = job->done.get_future();
    if (!m.batcher->submit(job))
      throw HttpError(503, "model '" + m.name + "': the queue is full (" + std::to_string(options.max_queue) +
                               " requests waiting); retry later");
    if (done.wait_for(std::chrono::seconds(options.request_timeout_s)) != std::future_status::ready) {
      job->abandoned = true;
      throw HttpError(504, "model '" + m.name + "': no result within --request-timeout-s " +
                               std::to_string(options.request_timeout_s) + " s");
    }
    if (!job->error.empty()) throw HttpError(500, "model '" + m.name + "': " + job->error);
  }

  void infer(Served& m, const httplib::Request& req, httplib::Response& res) {
    std::optional<size_t> header_length;
    if (req.has_header("Inference-Header-Content-Length")) {
      const std::string value = req.get_header_value("Inference-Header-Content-Length");
      char* end = nullptr;
      const unsigned long long n = std::strtoull(value.c_str(), &end, 10);
      if (value.empty() || *end != '\0' || value[0] == '-')
        throw HttpError(400, "Inference-Header-Content-Length '" + value + "' is not a byte count");
      header_length = size_t(n);
    }
    InferRequest request = parse_infer_request(req.body, header_length);
    if (request.inputs.size() != 1)
      throw HttpError(400, "the request has " + std::to_string(request.inputs.size()) +
                               " inputs; give exactly one: 'pixel_values' (FP32) or 'image' (BYTES)");
    const InputTensor& input = request.inputs[0];
    const ModelInfo& info = m.model->info();
    auto job = std::make_shared<BatchJob>();
    const std::string what = "inputs[0] '" + input.name + "'";
    if (input.name == "pixel_values") {
      if (input.datatype != "FP32")
        throw HttpError(400, what + ": datatype must be FP32, not " + input.datatype);
      if (input.shape.size() != 4 || input.shape[1] != 3)
        throw HttpError(400, what + ": shape must be [batch, 3, height, width]");
      if (input.shape[0] < 1) throw HttpError(400, what + ": the batch is empty");
      if (input.shape[2] < 1 || input.shape[3] < 1 || input.shape[2] > 65536 || input.shape[3] > 65536)
        throw HttpError(400, what + ": bad height or width");
      try {
        m.model->check_input_size(int(input.shape[2]), int(input.shape[3]));
      } catch (const Error& e) {
        throw HttpError(400, what + ": " + e.what());
      }
      for (float v : input.floats)
        if (!std::isfinite(v)) throw HttpError(400, what + ": holds NaN or infinite values");
      job->images = int(input.shape[0]);
      job->height = int(input.shape[2]);
      job->width = int(input.shape[3]);
      job->pixels = std::move(request.inputs[0].floats);
    } else if (input.name == "image") {
      if (input.datatype != "BYTES")
        throw HttpError(
            400, what + ": datatype must be BYTES (encoded JPEG/PNG/WebP files), not " + input.datatype);
      if (!(input.shape.size() == 1 || (input.shape.size() == 2 && input.shape[1] == 1)))
        throw HttpError(400, what + ": shape must be [batch] or [batch, 1]");
      // JSON carries each file as base64; binary data carries the file's bytes as they are.
      const bool base64 = !input.binary;
      add_images(m, input.bytes, base64, what, *job);
    } else {
      throw HttpError(400, what + ": unknown input; model '" + m.name + "' takes 'pixel_values'" +
                               (info.has_preprocessor ? " or 'image'" : ""));
    }

    std::vector<RequestedOutput> wanted = request.outputs;
    if (wanted.empty()) wanted.push_back(RequestedOutput{"logits", request.binary_data_output, 0});
    for (size_t i = 0; i < wanted.size(); ++i)
      if (wanted[i].name != "logits")
        throw HttpError(400, "outputs[" + std::to_string(i) + "]: unknown output '" + wanted[i].name +
                                 "' (the model has 'logits')");

    run_job(m, job);

    const int num_labels = info.num_labels;
    std::vector<OutputTensor> outputs;
    for (const RequestedOutput& w : wanted) {
      OutputTensor out;
      out.name = "logits";
      out.binary = w.binary;
      if (w.classification > 0) {
        const int k = std::min(w.classification, num_labels);
        out.datatype = "BYTES";
        out.shape = {job->images, k};
        for (int b = 0; b < job->images; ++b) {
          auto strings =
              classification_strings(job->logits.data() + size_t(b) * num_labels, num_labels, info.labels, k);
          out.bytes.insert(out.bytes.end(), strings.begin(), strings.end());
        }
      } else {
        out.datatype = "FP32";
        out.shape = {job->images, num_labels};
        out.floats = job->logits;
      }
      outputs.push_back(std::move(out));
    }
    EncodedResponse encoded = encode_infer_response(m.name, request.id, outputs);
    if (encoded.header_length)
      res.set_header("Inference-Header-Content-Length", std::to_string(*encoded.header_length));
    res.status = 200;
    res.set_content(std::move(encoded.body), encoded.content_type.c_str());
  }

  void classify_raw(Served& m, const httplib::Request& req, httplib::Response& res) {
    int k = 5;
    if (req.has_param("top_k")) {
      const std::string value = req.get_param_value("top_k");
      char* end = nullptr;
      const long n = std::strtol(value.c_str(), &end, 10);
      if (value.empty() || *end != '\0' || n < 1 || n > 1000000)
        throw HttpError(400, "top_k '" + value + "' must be a positive integer");
      k = int(n);
    }
    if (req.body.empty()) throw HttpError(400, "the body is empty; send an encoded JPEG, PNG or WebP file");
    auto job = std::make_shared<BatchJob>();
    add_images(m, {req.body}, false, "body", *job);
    run_job(m, job);
    json answer = json::array();
    for (const Prediction& p : top_k(job->logits.data(), m.model->info().labels, k))
      answer.push_back({{"label", p.label}, {"score", p.probability}});
    send_json(res, 200, answer);
  }

  // Runs a handler; HttpError and perceiver::Error become {"error": ...} answers.
  template <typename F>
  static void guarded(httplib::Response& res, F&& body) {
    try {
      body();
    } catch (const HttpError& e) {
      send_error(res, e.status(), e.what());
    } catch (const Error& e) {
      send_error(res, status_of(e), e.what());
    } catch (const std::bad_alloc&) {
      send_error(res, 507, "out of memory for this request");
    } catch (const std::exception& e) {
      send_error(res, 500, e.what());
    }
  }

  void routes() {
    const std::string model = R"(/v2/models/([A-Za-z0-9._-]+)(?:/versions/([^/]+))?)";
    auto with_model = [this](auto handler) {
      return [this, handler](const httplib::Request& req, httplib::Response& res) {
        guarded(res, [&] {
          if (req.matches.size() > 2 && req.matches[2].matched && req.matches[2].str() != kModelVersion)
            throw HttpError(404, "model '" + req.matches[1].str() + "' has no version '" +
                                     req.matches[2].str() + "' (only '" + kModelVersion + "')");
          if (Served* m = find(req.matches[1], res)) handler(*m, req, res);
        });
      };
    };
    http.Get("/v2/health/live", [](const httplib::Request&, httplib::Response& res) {
      send_json(res, 200, json{{"live", true}});
    });
    http.Get("/v2/health/ready", [](const httplib::Request&, httplib::Response& res) {
      send_json(res, 200, json{{"ready", true}});
    });
    http.Get("/v2", [](const httplib::Request&, httplib::Response& res) {
      send_json(res, 200,
                json{{"name", kServerName},
                     {"version", PERCEIVER_VERSION},
                     {"extensions", {"binary_tensor_data", "classification", "model_configuration"}}});
    });
    http.Get(model, with_model([this](Served& m, const httplib::Request&, httplib::Response& res) {
               send_json(res, 200, model_metadata(m));
             }));
    http.Get(model + "/ready", with_model([](Served& m, const httplib::Request&, httplib::Response& res) {
               send_json(res, 200, json{{"name", m.name}, {"ready", true}});
             }));
    http.Get(model + "/config",
             with_model([this](Served& m, const httplib::Request&, httplib::Response& res) {
               send_json(res, 200, model_config(m));
             }));
    http.Post(model + "/infer", with_model([this](Served& m, const httplib::Request& req,
                                                  httplib::Response& res) { infer(m, req, res); }));
    http.Post(R"(/models/([A-Za-z0-9._-]+))", [this](const httplib::Request& req, httplib::Response& res) {
      guarded(res, [&] {
        if (Served* m = find(req.matches[1], res)) classify_raw(*m, req, res);
      });
    });
    http.Get("/metrics", [this](const httplib::Request&, httplib::Response& res) {
      res.status = 200;
      res.set_content(metrics.render(), "text/plain; version=0.0.4");
    });

    // Every error answer is JSON: routes that matched nothing, bodies over the limit, bad HTTP.
    http.set_error_handler([this](const httplib::Request& req, httplib::Response& res) {
      if (!res.body.empty()) return;
      if (res.status == 404)
        send_error(res, 404, "no route " + req.method + " " + req.path);
      else if (res.status == 413 &&
               req.get_header_value("Content-Type").rfind("application/x-www-form-urlencoded", 0) == 0)
        send_error(
            res, 413,
            "a body of Content-Type application/x-www-form-urlencoded (curl -d's default) is limited to "
            "8 KB; send the image as Content-Type: image/jpeg (or application/octet-stream)");
      else if (res.status == 413)
        send_error(
            res, 413,
            "the body exceeds --max-body-mb (" + std::to_string(options.max_body_bytes >> 20) + " MB)");
      else
        send_error(res, res.status, "HTTP error " + std::to_string(res.status));
    });
    http.set_pre_routing_handler([](const httplib::Request&, httplib::Response&) {
      request_start = clock_type::now();
      request_started = true;
      return httplib::Server::HandlerResponse::Unhandled;
    });
    http.set_logger([this](const httplib::Request& req, const httplib::Response& res) {
      double seconds = 0;
      if (request_started) seconds = std::chrono::duration<double>(clock_type::now() - request_start).count();
      request_started = false;
      metrics.request_done(model_of_path(req.path), res.status, seconds);
    });

    const int threads =
        options.http_threads > 0 ? options.http_threads : std::clamp(options.max_queue + 16, 32, 1024);
    http.new_task_queue = [threads] { return new httplib::ThreadPool(size_t(threads)); };
    // SO_REUSEADDR (a restart may bind while old connections linger) but not httplib's default SO_REUSEPORT,
    // which would let a second server bind the same port silently. The socket is kept to widen its backlog.
    http.set_socket_options([this](int sock) {
      int yes = 1;
      setsockopt(sock, SOL_SOCKET, SO_REUSEADDR, &yes, sizeof yes);
      listen_socket = sock;
    });
    http.set_payload_max_length(size_t(options.max_body_bytes));
    http.set_read_timeout(std::max(1, options.request_timeout_s), 0);
    http.set_write_timeout(std::max(1, options.request_timeout_s), 0);
  }
};

Server::Server(ServerOptions options, std::vector<ModelEntry> models)
    : impl_(std::make_unique<Impl>(std::move(options), std::move(models))) {}

Server::~Server() = default;

int Server::bind() {
  const std::string& host = impl_->options.host;
  const int port = impl_->options.port;
  const int bound =
      port == 0 ? impl_->http.bind_to_any_port(host) : (impl_->http.bind_to_port(host, port) ? port : -1);
  if (bound <= 0)
    throw Error(ErrorKind::usage, "cannot listen on " + host + ":" + std::to_string(port) +
                                      " (address in use, or not an address of this machine)");
  // httplib listens with a backlog of 5: a burst of clients connecting at once would see SYNs dropped and
  // retried a second later. listen() again on the bound socket widens the backlog.
  if (impl_->listen_socket >= 0) ::listen(impl_->listen_socket, SOMAXCONN);
  impl_->bound_port = bound;
  return bound;
}

void Server::run() {
  impl_->http.listen_after_bind();
  // Every accepted request has been answered (the HTTP pool drained); the queues are empty.
  for (auto& m : impl_->models) m->batcher->stop();
}

void Server::stop() { impl_->http.stop(); }

int Server::port() const { return impl_->bound_port; }

}  // namespace perceiver::server
