// perceiver bench: forward-pass latency, throughput, GFLOP/s, peak memory and load time.
//   perceiver bench                          full-size random-weight conv model built in memory
//   perceiver bench --model DIR --json       a model directory (or hub repo id), one JSON object on stdout
#include <omp.h>
#include <sys/resource.h>
#include <time.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "common.h"

namespace perceiver::cli {
namespace {

struct BenchArgs {
  std::string model;  // empty: random full-size conv model in memory
  std::string weights;
  std::string revision = "main";
  std::string precision = "fp32";
  std::string backend = "auto";
  int threads = 0;
  bool no_mmap = false;
  int batch = 1;
  int iters = 10;
  int warmup = 2;
  int size = 224;
  bool json = false;
  bool quiet = false;
};

// Peak resident set size in MB: VmHWM from /proc/self/status, else getrusage's ru_maxrss.
double peak_rss_mb() {
  std::ifstream status("/proc/self/status");
  std::string line;
  while (std::getline(status, line))
    if (line.rfind("VmHWM:", 0) == 0) return std::stod(line.substr(6)) / 1024.0;
  rusage ru{};
  getrusage(RUSAGE_SELF, &ru);
  return ru.ru_maxrss / 1024.0;
}

// The CPU's name as the kernel reports it ("model name" in /proc/cpuinfo), or "unknown".
std::string cpu_name() {
  std::ifstream cpuinfo("/proc/cpuinfo");
  std::string line;
  while (std::getline(cpuinfo, line))
    if (line.rfind("model name", 0) == 0 && line.find(':') != std::string::npos) {
      const size_t value = line.find_first_not_of(" \t", line.find(':') + 1);
      return value == std::string::npos ? "unknown" : line.substr(value);
    }
  return "unknown";
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

void run_bench(const BenchArgs& args) {
  ModelOptions options;
  options.weights_file = args.weights;
  options.precision = parse_precision(args.precision);
  options.threads = args.threads;
  options.backend = args.backend;
  options.mmap_weights = !args.no_mmap;

  std::string model_name;
  std::unique_ptr<Model> model;
  using clock = std::chrono::steady_clock;
  double load_ms = 0;
  if (args.model.empty()) {
    model_name = "random deepmind/vision-perceiver-conv (in memory)";
    const auto t0 = clock::now();
    model = Model::create_random(vision_perceiver_conv_config_json(), 1, options);
    load_ms = std::chrono::duration<double, std::milli>(clock::now() - t0).count();
  } else {
    options.revision = args.revision;
    options.hub_progress = !(args.quiet || args.json);
    // Hub ids are resolved (downloaded once) before the timed load.
    const std::filesystem::path dir = resolve_model_dir(args.model, options);
    model_name = dir.string();
    const auto t0 = clock::now();
    model = Model::load(dir, options);
    load_ms = std::chrono::duration<double, std::milli>(clock::now() - t0).count();
  }
  const double rss_after_load = peak_rss_mb();

  const auto& info = model->info();
  int height = args.size, width = args.size;
  if (info.fixed_image_height) {
    height = info.fixed_image_height;
    width = info.fixed_image_width;
  }
  model->check_input_size(height, width);
  const int B = args.batch;
  std::vector<float> pixels(size_t(B) * 3 * height * width), logits(size_t(B) * info.num_labels);
  uint32_t state = 12345;
  for (auto& p : pixels) {  // deterministic values in about [-2, 2], like normalised images
    state = state * 1664525u + 1013904223u;
    p = static_cast<float>(state >> 8) * (4.0f / 16777216.0f) - 2.0f;
  }

  for (int i = 0; i < args.warmup; ++i) model->classify(pixels.data(), B, height, width, logits.data());
  // Wall time per batch, and the process's CPU time (all threads): on a busy machine the wall time suffers
  // from other processes, while CPU time / threads shows what the forward pass itself costs.
  auto cpu_ms = [] {
    timespec ts{};
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec * 1e-6;
  };
  // Page faults and preemptions (all threads) during the timed iterations: causes of variance.
  rusage before{}, after{};
  getrusage(RUSAGE_SELF, &before);
  std::vector<double> ms, cpu;
  for (int i = 0; i < args.iters; ++i) {
    const double c0 = cpu_ms();
    const auto t0 = clock::now();
    model->classify(pixels.data(), B, height, width, logits.data());
    ms.push_back(std::chrono::duration<double, std::milli>(clock::now() - t0).count());
    cpu.push_back(cpu_ms() - c0);
  }
  getrusage(RUSAGE_SELF, &after);
  const double med = median(ms), mn = *std::min_element(ms.begin(), ms.end());
  const double flops = model->flops_per_image(height, width);
  const int threads = args.threads > 0 ? args.threads : omp_get_num_procs();
  const double images_per_s = B / (med / 1000.0);
  const double gflops = flops * B / (med / 1000.0) / 1e9;
  const double rss = peak_rss_mb();
  // This CPU's limit for the precision's GEMM instruction, measured after the timed runs (a quarter second).
  const CpuPeak peak = measure_cpu_peak(info.precision, threads);
  const double fraction = peak.gflops_per_s > 0 ? gflops / peak.gflops_per_s : 0.0;

  if (args.json) {
    nlohmann::json j;
    j["model"] = model_name;
    j["architecture"] = info.architecture;
    j["backend"] = info.backend;
    j["cpu"] = cpu_name();
    j["precision"] = args.precision;
    j["weights_in_place"] = info.weights_in_place;
    j["threads"] = threads;
    j["batch"] = B;
    j["height"] = height;
    j["width"] = width;
    j["warmup"] = args.warmup;
    j["iters"] = args.iters;
    j["load_ms"] = load_ms;
    j["min_ms"] = mn;
    j["median_ms"] = med;
    j["median_ms_per_image"] = med / B;
    j["images_per_s"] = images_per_s;
    j["gflop_per_image"] = flops / 1e9;
    j["gflops_per_s"] = gflops;
    j["peak_gflops_per_s"] = peak.gflops_per_s;
    j["peak_instruction"] = peak.instruction;
    j["fraction_of_peak"] = fraction;
    j["peak_rss_mb"] = rss;
    j["peak_rss_after_load_mb"] = rss_after_load;
    j["times_ms"] = ms;
    j["median_cpu_ms"] = median(cpu);
    j["minor_faults_timed"] = after.ru_minflt - before.ru_minflt;
    j["involuntary_switches_timed"] = after.ru_nivcsw - before.ru_nivcsw;
    std::cout << j.dump() << "\n";
    return;
  }
  std::printf("model:      %s\n", model_name.c_str());
  std::printf("backend:    %s, %s, %d thread%s\n", info.backend.c_str(), args.precision.c_str(), threads,
              threads == 1 ? "" : "s");
  std::printf("cpu:        %s\n", cpu_name().c_str());
  std::printf("input:      batch %d x 3 x %d x %d, %.1f GFLOP per image\n", B, height, width, flops / 1e9);
  std::printf("load:       %.1f ms\n", load_ms);
  std::printf("latency:    min %.1f ms, median %.1f ms per batch (%d iterations after %d warm-up)\n", mn, med,
              args.iters, args.warmup);
  std::printf("cpu time:   median %.1f ms per batch over all threads\n", median(cpu));
  std::printf("throughput: %.3f images/s, %.1f ms per image, %.1f GFLOP/s\n", images_per_s, med / B, gflops);
  if (peak.gflops_per_s > 0)
    std::printf("cpu peak:   %.1f GFLOP/s (%s, %d thread%s): %.1f%% of it\n", peak.gflops_per_s,
                peak.instruction.c_str(), threads, threads == 1 ? "" : "s", 100 * fraction);
  std::printf("peak RSS:   %.1f MB (%.1f MB after loading)\n", rss, rss_after_load);
}

}  // namespace

void register_bench(CLI::App& app) {
  auto args = std::make_shared<BenchArgs>();
  CLI::App* cmd = app.add_subcommand(
      "bench",
      "Time the forward pass: latency, images/s, GFLOP/s, peak RSS, load time.\n"
      "Without --model: a full-size random-weight conv model (deepmind/vision-perceiver-conv shapes).");
  cmd->add_option("-m,--model", args->model,
                  "Model directory or hub repo id (default: random conv model in memory)");
  cmd->add_option("--weights", args->weights,
                  "Weights file to use (default: model.safetensors, else pytorch_model.bin)");
  cmd->add_option("--revision", args->revision, "Hub revision (default: main)");
  cmd->add_option("--precision", args->precision, "fp32, bf16 or int8")
      ->check(CLI::IsMember({"fp32", "bf16", "int8"}));
  cmd->add_option("--backend", args->backend, "auto, fast or reference")
      ->check(CLI::IsMember({"auto", "fast", "reference"}));
  cmd->add_option("-t,--threads", args->threads, "Threads (default: all cores)")->check(CLI::Range(0, 1024));
  cmd->add_flag("--no-mmap", args->no_mmap, "Copy the weights into memory rather than read them in place");
  cmd->add_option("-b,--batch", args->batch, "Images per forward pass (default 1)")
      ->check(CLI::Range(1, 4096));
  cmd->add_option("-n,--iters", args->iters, "Timed iterations (default 10)")->check(CLI::Range(1, 100000));
  cmd->add_option("--warmup", args->warmup, "Untimed warm-up iterations (default 2)")
      ->check(CLI::Range(0, 100000));
  cmd->add_option("--size", args->size, "Square input side in pixels (default 224)")
      ->check(CLI::Range(5, 8192));
  cmd->add_flag("--json", args->json, "Print one JSON object instead of text");
  cmd->add_flag("-q,--quiet", args->quiet, "No download progress");
  cmd->callback([args]() { run_bench(*args); });
}

}  // namespace perceiver::cli
