// perceiver train-head: a fresh classification decoder trained on frozen encoder latents; writes a new
// Hugging Face model directory.
#include <cstdio>
#include <iostream>
#include <nlohmann/json.hpp>

#include "common.h"
#include "perceiver/train.h"

namespace perceiver::cli {
namespace {

struct TrainHeadArgs {
  ModelArgs model;
  std::string data, out, cache_dir;
  int epochs = 10, batch_size = 64, encode_batch = 32;
  double lr = 1e-3, val_split = 0.1, weight_decay = 1e-2, warmup = 0.05;
  uint64_t seed = 0;
  double max_memory_mb = 4096;
  bool json = false, preprocess_defaults = false;
};

void run_train_head(const TrainHeadArgs& args) {
  train::TrainHeadOptions o;
  o.epochs = args.epochs;
  o.lr = args.lr;
  o.batch_size = args.batch_size;
  o.val_split = args.val_split;
  o.weight_decay = args.weight_decay;
  o.warmup = args.warmup;
  o.seed = args.seed;
  o.encode_batch = args.encode_batch;
  o.max_memory_bytes = uint64_t(args.max_memory_mb * 1048576.0);
  o.cache_dir = args.cache_dir;
  o.progress = !args.model.quiet;
  train::check_options(o);  // before the (slower) data scan and model load

  const train::LabelledFiles data = train::scan_labelled_data(args.data);
  if (data.classes.size() < 2)
    throw Error(ErrorKind::bad_input,
                args.data + ": need at least two classes, found " + std::to_string(data.classes.size()));
  auto model = args.model.load(args.preprocess_defaults);
  const train::TrainHeadResult result = train::train_classifier_head(*model, data, args.out, o);
  const auto& history = result.epochs;
  const size_t train_images = size_t(result.train_images), val_images = size_t(result.val_images);

  const train::EpochStats& last = history.back();
  if (args.json) {
    nlohmann::json j;
    j["out"] = args.out;
    j["classes"] = data.classes;
    j["train_images"] = train_images;
    j["val_images"] = val_images;
    j["epochs"] = nlohmann::json::array();
    for (const auto& s : history) {
      nlohmann::json e = {{"epoch", s.epoch},
                          {"train_loss", s.train_loss},
                          {"train_accuracy", s.train_accuracy},
                          {"seconds", s.seconds}};
      if (s.has_val) {
        e["val_loss"] = s.val_loss;
        e["val_accuracy"] = s.val_accuracy;
      }
      j["epochs"].push_back(e);
    }
    std::cout << j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) << "\n";
  } else {
    std::printf("train: %zu images, loss %.4f, accuracy %.2f%%\n", train_images, last.train_loss,
                100 * last.train_accuracy);
    if (last.has_val)
      std::printf("val:   %zu images, loss %.4f, accuracy %.2f%%\n", val_images, last.val_loss,
                  100 * last.val_accuracy);
    std::printf("wrote %s\n", args.out.c_str());
  }
}

}  // namespace

void register_train_head(CLI::App& app) {
  auto args = std::make_shared<TrainHeadArgs>();
  CLI::App* cmd = app.add_subcommand(
      "train-head",
      "Replace the classification decoder with a fresh one and train it on labelled images (encoder frozen)");
  args->model.add_to(cmd);
  cmd->add_option("--data", args->data,
                  "Labelled images: a folder with one sub-folder per class, or a CSV of file,label lines")
      ->required();
  cmd->add_option("-o,--out", args->out, "New model directory to write (Hugging Face format)")->required();
  cmd->add_option("--epochs", args->epochs, "Passes over the training images (default 10)");
  cmd->add_option("--lr", args->lr, "Peak AdamW learning rate; warm-up then cosine decay (default 1e-3)");
  cmd->add_option("-b,--batch-size", args->batch_size, "Images per optimiser step (default 64)");
  cmd->add_option("--val-split", args->val_split,
                  "Fraction of each class held out for validation (default 0.1)");
  cmd->add_option("--seed", args->seed, "Seed of the initialisation, split and shuffles (default 0)");
  cmd->add_option("--weight-decay", args->weight_decay, "AdamW decoupled weight decay (default 0.01)");
  cmd->add_option("--warmup", args->warmup,
                  "Fraction of the steps spent warming up the learning rate (default 0.05)");
  cmd->add_option("--encode-batch", args->encode_batch, "Images per encoder forward pass (default 32)");
  cmd->add_option("--max-memory-mb", args->max_memory_mb,
                  "Keep encoder latents in memory up to this size, else in a temporary file (default 4096)");
  cmd->add_option("--cache-dir", args->cache_dir,
                  "Folder for the latent cache file (default: the temp folder)");
  cmd->add_flag("--json", args->json, "Print a JSON summary (per-epoch losses and accuracies) on stdout");
  cmd->add_flag("--preprocess-defaults", args->preprocess_defaults,
                "Without preprocessor_config.json, use PerceiverImageProcessor's defaults");
  cmd->callback([args]() { run_train_head(*args); });
}

}  // namespace perceiver::cli
