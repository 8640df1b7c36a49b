// perceiver train-head: a fresh classification decoder trained on frozen encoder latents; writes a new
// Hugging Face model directory.
#include <cstdio>
#include <iostream>
#include <nlohmann/json.hpp>

#include "common.h"
#include "model/config.h"
#include "train/dataset.h"
#include "train/export.h"
#include "train/trainer.h"

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
  if (args.epochs < 1) throw Error(ErrorKind::usage, "train-head: --epochs must be at least 1");
  if (args.batch_size < 1) throw Error(ErrorKind::usage, "train-head: --batch-size must be at least 1");
  if (!(args.lr > 0)) throw Error(ErrorKind::usage, "train-head: --lr must be positive");
  if (!(args.val_split >= 0 && args.val_split < 1))
    throw Error(ErrorKind::usage, "train-head: --val-split must be in [0, 1)");
  const bool progress = !args.model.quiet;

  train::LabelledFiles data = train::scan_labelled_data(args.data);
  if (data.classes.size() < 2)
    throw Error(ErrorKind::bad_input,
                args.data + ": need at least two classes, found " + std::to_string(data.classes.size()));
  const std::filesystem::path dir = args.model.resolve_dir();
  std::error_code ec;
  if (std::filesystem::equivalent(dir, args.out, ec))
    throw Error(ErrorKind::usage, args.out + ": the output must not be the source model directory");
  const PreprocessorConfig prep = model_preprocessor(dir, args.preprocess_defaults);
  const PerceiverConfig config = load_config(dir / "config.json");
  auto model = Model::load(dir, args.model.options());
  if (progress)
    std::fprintf(stderr, "%zu images in %zu classes; encoder: %s, %d latents x %d\n", data.files.size(),
                 data.classes.size(), model->info().architecture.c_str(), model->info().num_latents,
                 model->info().d_latents);

  train::FeatureStore features = train::encode_latents(
      *model, prep, int64_t(data.files.size()), train::file_source(data.files), args.encode_batch, progress,
      "encoding", uint64_t(args.max_memory_mb * 1048576.0), args.cache_dir);
  model.reset();

  std::vector<int64_t> train_idx, val_idx;
  train::split_train_val(data.labels, int(data.classes.size()), args.val_split, args.seed, &train_idx,
                         &val_idx);

  train::TrainOptions o;
  o.epochs = args.epochs;
  o.lr = args.lr;
  o.batch_size = args.batch_size;
  o.weight_decay = args.weight_decay;
  o.warmup = args.warmup;
  o.seed = args.seed;
  o.init_std = train::config_initializer_range(dir);
  o.progress = progress;
  train::ClassifierHead<float> head(config, int(data.classes.size()));
  auto history = train::train_head(head, features, data.labels, train_idx, val_idx, o);

  train::write_model_dir(dir, args.model.weights, args.out, head, data.classes, prep);

  const train::EpochStats& last = history.back();
  if (args.json) {
    nlohmann::json j;
    j["out"] = args.out;
    j["classes"] = data.classes;
    j["train_images"] = train_idx.size();
    j["val_images"] = val_idx.size();
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
    std::printf("train: %zu images, loss %.4f, accuracy %.2f%%\n", train_idx.size(), last.train_loss,
                100 * last.train_accuracy);
    if (last.has_val)
      std::printf("val:   %zu images, loss %.4f, accuracy %.2f%%\n", val_idx.size(), last.val_loss,
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
