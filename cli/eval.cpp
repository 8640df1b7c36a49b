// perceiver eval: top-1 / top-5 and per-class accuracy of a model on a labelled image set.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <iostream>
#include <nlohmann/json.hpp>

#include "common.h"
#include "perceiver/progress.h"
#include "perceiver/train.h"

namespace perceiver::cli {
namespace {

struct EvalArgs {
  ModelArgs model;
  std::string data;
  int batch_size = 32;
  bool json = false, preprocess_defaults = false;
};

void run_eval(const EvalArgs& args) {
  train::LabelledFiles data = train::scan_labelled_data(args.data);
  auto model = args.model.load(args.preprocess_defaults);
  const ModelInfo& info = model->info();
  const std::vector<int> class_to_label = train::match_classes(data.classes, info.labels);
  const int C = info.num_labels;
  const int64_t n = int64_t(data.files.size());

  std::vector<float> logits(size_t(n) * C);
  Progress bar("evaluating", n, !args.model.quiet);
  model->create_context()->run_images(
      n, file_source(data.files), args.batch_size, Context::ImageBatch::logits_output,
      [&](const Context::ImageBatch& b) {
        std::copy_n(b.logits, size_t(b.count) * C, &logits[size_t(b.first) * C]);
        bar.update(b.first + b.count);
      },
      [&](int64_t i) { return data.files[size_t(i)].string(); });
  const double rate = n / std::max(1e-9, bar.seconds());
  bar.finish(n > 0 ? std::to_string(std::lround(rate)) + " images/s" : "");

  const size_t K = data.classes.size();
  std::vector<int64_t> class_total(K, 0), class_top1(K, 0);
  int64_t top1 = 0, top5 = 0;
  std::vector<int> order(C);
  for (int64_t i = 0; i < n; ++i) {
    const float* row = &logits[size_t(i) * C];
    const int want = class_to_label[data.labels[i]];
    // Rank of the true label: labels with a higher logit (ties: lower index first, as classify orders them).
    int rank = 0;
    for (int c = 0; c < C; ++c) rank += row[c] > row[want] || (row[c] == row[want] && c < want);
    ++class_total[data.labels[i]];
    if (rank == 0) {
      ++top1;
      ++class_top1[data.labels[i]];
    }
    top5 += rank < 5;
  }
  const double acc1 = n ? double(top1) / n : 0, acc5 = n ? double(top5) / n : 0;
  if (args.json) {
    nlohmann::json j;
    j["images"] = n;
    j["top1_accuracy"] = acc1;
    j["top5_accuracy"] = acc5;
    j["images_per_second"] = rate;
    j["per_class"] = nlohmann::json::array();
    for (size_t k = 0; k < K; ++k)
      j["per_class"].push_back({{"class", data.classes[k]},
                                {"label", info.labels[class_to_label[k]]},
                                {"images", class_total[k]},
                                {"accuracy", class_total[k] ? double(class_top1[k]) / class_total[k] : 0.0}});
    std::cout << j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) << "\n";
    return;
  }
  std::printf("images: %lld\ntop-1 accuracy: %.2f%%\ntop-5 accuracy: %.2f%%\nimages/s: %.1f\nper class:\n",
              (long long)n, 100 * acc1, 100 * acc5, rate);
  for (size_t k = 0; k < K; ++k)
    std::printf("  %7.2f%%  %6lld  %s\n", class_total[k] ? 100.0 * class_top1[k] / class_total[k] : 0.0,
                (long long)class_total[k], info.labels[class_to_label[k]].c_str());
}

}  // namespace

void register_eval(CLI::App& app) {
  auto args = std::make_shared<EvalArgs>();
  CLI::App* cmd = app.add_subcommand("eval", "Top-1 / top-5 / per-class accuracy on a labelled image folder");
  args->model.add_to(cmd);
  cmd->add_option("--data", args->data,
                  "Labelled images: one sub-folder per class (names matched against id2label), or a CSV of "
                  "file,label lines")
      ->required();
  cmd->add_option("-b,--batch-size", args->batch_size, "Images per forward pass (default 32)");
  cmd->add_flag("--json", args->json, "Print one JSON object with all the figures");
  cmd->add_flag("--preprocess-defaults", args->preprocess_defaults,
                "Without preprocessor_config.json, use PerceiverImageProcessor's defaults");
  cmd->callback([args]() { run_eval(*args); });
}

}  // namespace perceiver::cli
