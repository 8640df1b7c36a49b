// train_classifier_head (include/perceiver/train.h): encode, split, train, export.
#include "model/perceiver_model.h"
#include "perceiver/train.h"
#include "train/dataset.h"
#include "train/export.h"
#include "train/head.h"
#include "train/trainer.h"

namespace perceiver::train {

void check_options(const TrainHeadOptions& options) {
  if (options.epochs < 1) throw Error(ErrorKind::usage, "train-head: --epochs must be at least 1");
  if (options.batch_size < 1) throw Error(ErrorKind::usage, "train-head: --batch-size must be at least 1");
  if (!(options.lr > 0)) throw Error(ErrorKind::usage, "train-head: --lr must be positive");
  if (!(options.val_split >= 0 && options.val_split < 1))
    throw Error(ErrorKind::usage, "train-head: --val-split must be in [0, 1)");
}

TrainHeadResult train_classifier_head(const Model& model, const LabelledFiles& data,
                                      const std::filesystem::path& out_dir, const TrainHeadOptions& options) {
  check_options(options);
  if (data.classes.size() < 2)
    throw Error(ErrorKind::bad_input, "training data: need at least two classes, found " +
                                          std::to_string(data.classes.size()));
  const auto* perceiver_model = dynamic_cast<const PerceiverModel*>(&model);
  const ModelInfo& info = model.info();
  if (!perceiver_model || info.model_dir.empty())
    throw Error(ErrorKind::usage, "train-head: the encoder must be a model loaded from a directory");
  std::error_code ec;
  if (std::filesystem::equivalent(info.model_dir, out_dir, ec))
    throw Error(ErrorKind::usage, out_dir.string() + ": the output must not be the source model directory");
  const PreprocessorConfig& prep = perceiver_model->image_processor();
  if (options.progress)
    std::fprintf(stderr, "%zu images in %zu classes; encoder: %s, %d latents x %d\n", data.files.size(),
                 data.classes.size(), info.architecture.c_str(), info.num_latents, info.d_latents);

  FeatureStore features = encode_latents(model, int64_t(data.files.size()), file_source(data.files),
                                         options.encode_batch, options.progress, "encoding",
                                         options.max_memory_bytes, options.cache_dir);
  std::vector<int64_t> train_idx, val_idx;
  split_train_val(data.labels, int(data.classes.size()), options.val_split, options.seed, &train_idx, &val_idx);

  TrainOptions o;
  o.epochs = options.epochs;
  o.lr = options.lr;
  o.batch_size = options.batch_size;
  o.weight_decay = options.weight_decay;
  o.warmup = options.warmup;
  o.seed = options.seed;
  o.init_std = config_initializer_range(info.model_dir);
  o.progress = options.progress;
  ClassifierHead<float> head(perceiver_model->config(), int(data.classes.size()));
  TrainHeadResult result;
  result.epochs = train_head(head, features, data.labels, train_idx, val_idx, o);
  result.train_images = int64_t(train_idx.size());
  result.val_images = int64_t(val_idx.size());
  write_model_dir(info.model_dir, info.weights_file, out_dir, head, data.classes, prep);
  return result;
}

}  // namespace perceiver::train
