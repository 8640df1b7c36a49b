// Training a classification head on frozen encoder features: AdamW on softmax cross-entropy.
// Deterministic: one seed drives the initialisation and the shuffles (train::Rng), and every kernel sums in a
// fixed order whatever the thread count, so the same inputs and options give bit-identical weights.
#pragma once

#include <cstdint>
#include <functional>
#include <vector>

#include "train/dataset.h"
#include "train/head.h"

namespace perceiver::train {

struct TrainOptions {
  int epochs = 10;
  double lr = 1e-3;      // peak learning rate
  double warmup = 0.05;  // fraction of all steps with linear warm-up; then cosine decay to 0
  int batch_size = 64;
  double weight_decay =
      1e-2;  // decoupled (AdamW), on weight matrices and the query, not on biases / LayerNorm
  double beta1 = 0.9, beta2 = 0.999, adam_eps = 1e-8;
  double init_std = 0.02;  // config.json's initializer_range
  bool init = true;        // HF-initialise the head first (else keep its current weights)
  uint64_t seed = 0;
  bool progress = false;  // a progress bar per epoch on stderr
  std::function<void(const EpochStats&)> on_epoch;
};

struct EvalStats {
  double loss = 0, accuracy = 0;
  std::vector<float> logits;  // [idx.size(), num_labels]
};

// labels[i]: the class of feature row i. train / val: row indices (val may be empty).
std::vector<EpochStats> train_head(ClassifierHead<float>& head, const FeatureStore& features,
                                   const std::vector<int>& labels, const std::vector<int64_t>& train,
                                   const std::vector<int64_t>& val, const TrainOptions& options);

// Logits, mean loss and accuracy of the rows `idx` (labels may be empty: loss/accuracy stay 0).
EvalStats evaluate_head(const ClassifierHead<float>& head, const FeatureStore& features,
                        const std::vector<int>& labels, const std::vector<int64_t>& idx,
                        int batch_size = 256);

}  // namespace perceiver::train
