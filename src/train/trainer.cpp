#include "train/trainer.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>

#include "perceiver/error.h"
#include "train/ops.h"
#include "perceiver/progress.h"

namespace perceiver::train {
namespace {

// Copies the feature rows of idx[first, first + n) into one contiguous batch.
void gather(const FeatureStore& features, const std::vector<int64_t>& idx, size_t first, int n,
            std::vector<float>* out) {
  const size_t row = size_t(features.row_floats());
  out->resize(size_t(n) * row);
  for (int i = 0; i < n; ++i)
    std::memcpy(out->data() + size_t(i) * row, features.row(idx[first + i]), row * sizeof(float));
}

int argmax(const float* v, int n) { return static_cast<int>(std::max_element(v, v + n) - v); }

class AdamW {
 public:
  AdamW(const std::vector<Param<float>*>& params, const TrainOptions& o) : params_(params), o_(o) {
    for (Param<float>* p : params_) {
      m_.emplace_back(p->size(), 0.0f);
      v_.emplace_back(p->size(), 0.0f);
    }
  }

  // PyTorch's AdamW step (decoupled weight decay, bias-corrected moments).
  void step(double lr) {
    ++t_;
    const double c1 = 1.0 - std::pow(o_.beta1, t_), c2 = 1.0 - std::pow(o_.beta2, t_);
    for (size_t i = 0; i < params_.size(); ++i) {
      Param<float>& p = *params_[i];
      const bool decay = p.kind == Param<float>::weight || p.kind == Param<float>::embedding;
      const double wd = decay ? o_.weight_decay : 0.0;
      float* m = m_[i].data();
      float* v = v_[i].data();
      for (size_t j = 0; j < p.size(); ++j) {
        const double g = p.grad[j];
        double w = p.value[j];
        w -= lr * wd * w;
        m[j] = static_cast<float>(o_.beta1 * m[j] + (1 - o_.beta1) * g);
        v[j] = static_cast<float>(o_.beta2 * v[j] + (1 - o_.beta2) * g * g);
        w -= lr * (m[j] / c1) / (std::sqrt(v[j] / c2) + o_.adam_eps);
        p.value[j] = static_cast<float>(w);
      }
    }
  }

 private:
  std::vector<Param<float>*> params_;
  const TrainOptions& o_;
  std::vector<std::vector<float>> m_, v_;
  int64_t t_ = 0;
};

}  // namespace

EvalStats evaluate_head(const ClassifierHead<float>& head, const FeatureStore& features,
                        const std::vector<int>& labels, const std::vector<int64_t>& idx, int batch_size) {
  EvalStats out;
  const int C = head.num_labels();
  const int nk = static_cast<int>(features.row_floats() / head.kv_dim());
  out.logits.resize(idx.size() * C);
  std::vector<float> batch;
  double loss = 0;
  int64_t correct = 0;
  batch_size = std::max(1, batch_size);
  std::vector<int> batch_labels;
  for (size_t first = 0; first < idx.size(); first += batch_size) {
    const int n = static_cast<int>(std::min<size_t>(batch_size, idx.size() - first));
    gather(features, idx, first, n, &batch);
    float* logits = &out.logits[first * C];
    head.forward(batch.data(), n, nk, logits, nullptr, nullptr);
    if (labels.empty()) continue;
    batch_labels.resize(n);
    for (int i = 0; i < n; ++i) {
      batch_labels[i] = labels[idx[first + i]];
      correct += argmax(logits + size_t(i) * C, C) == batch_labels[i];
    }
    loss += double(ref::softmax_cross_entropy<float>(logits, batch_labels.data(), n, C, nullptr)) * n;
  }
  if (!labels.empty() && !idx.empty()) {
    out.loss = loss / double(idx.size());
    out.accuracy = double(correct) / double(idx.size());
  }
  return out;
}

std::vector<EpochStats> train_head(ClassifierHead<float>& head, const FeatureStore& features,
                                   const std::vector<int>& labels, const std::vector<int64_t>& train,
                                   const std::vector<int64_t>& val, const TrainOptions& o) {
  if (train.empty()) throw Error(ErrorKind::bad_input, "train-head: no training images");
  if (o.epochs < 1 || o.batch_size < 1 || !(o.lr > 0))
    throw Error(ErrorKind::usage, "train-head: epochs, batch size and learning rate must be positive");
  if (features.row_floats() % head.kv_dim() != 0)
    throw Error(ErrorKind::internal, "train-head: feature rows are not a whole number of latents");
  const int C = head.num_labels();
  const int nk = static_cast<int>(features.row_floats() / head.kv_dim());
  for (int64_t i : train)
    if (labels[i] < 0 || labels[i] >= C) throw Error(ErrorKind::internal, "train-head: label out of range");

  Rng rng(o.seed);
  if (o.init) head.init_hf(rng, o.init_std);
  auto params = head.params();
  AdamW adam(params, o);

  const int64_t steps_per_epoch = (int64_t(train.size()) + o.batch_size - 1) / o.batch_size;
  const int64_t total_steps = steps_per_epoch * o.epochs;
  const int64_t warmup_steps = std::max<int64_t>(1, std::llround(o.warmup * double(total_steps)));
  auto lr_at = [&](int64_t step) {  // step is 0-based
    if (step < warmup_steps) return o.lr * double(step + 1) / double(warmup_steps);
    const double t = double(step - warmup_steps) / double(std::max<int64_t>(1, total_steps - warmup_steps));
    return o.lr * 0.5 * (1.0 + std::cos(3.14159265358979323846 * t));
  };

  std::vector<int64_t> order = train;
  std::vector<float> batch, logits, dlogits;
  std::vector<int> batch_labels;
  ClassifierHead<float>::Cache cache;
  std::vector<EpochStats> history;
  int64_t step = 0;
  for (int epoch = 1; epoch <= o.epochs; ++epoch) {
    shuffle(order.begin(), order.size(), rng);
    char label[64];
    std::snprintf(label, sizeof label, "epoch %d/%d", epoch, o.epochs);
    Progress bar(label, int64_t(order.size()), o.progress);
    double loss_sum = 0;
    int64_t correct = 0, seen = 0;
    for (size_t first = 0; first < order.size(); first += o.batch_size, ++step) {
      const int n = static_cast<int>(std::min<size_t>(o.batch_size, order.size() - first));
      gather(features, order, first, n, &batch);
      batch_labels.resize(n);
      for (int i = 0; i < n; ++i) batch_labels[i] = labels[order[first + i]];
      logits.resize(size_t(n) * C);
      dlogits.assign(size_t(n) * C, 0.0f);
      head.forward(batch.data(), n, nk, logits.data(), nullptr, &cache);
      const float loss =
          ref::softmax_cross_entropy<float>(logits.data(), batch_labels.data(), n, C, dlogits.data());
      if (!std::isfinite(loss))
        throw Error(ErrorKind::internal, "train-head: the loss diverged (try a smaller --lr)");
      for (int i = 0; i < n; ++i) correct += argmax(&logits[size_t(i) * C], C) == batch_labels[i];
      loss_sum += double(loss) * n;
      seen += n;
      head.zero_grad();
      head.backward(cache, dlogits.data(), nullptr);
      adam.step(lr_at(step));
      char note[96];
      std::snprintf(note, sizeof note, "loss %.4f  acc %.2f%%", loss_sum / seen, 100.0 * correct / seen);
      bar.update(seen, note);
    }
    EpochStats s;
    s.epoch = epoch;
    s.epochs = o.epochs;
    s.train_loss = loss_sum / double(seen);
    s.train_accuracy = double(correct) / double(seen);
    if (!val.empty()) {
      EvalStats v = evaluate_head(head, features, labels, val);
      s.has_val = true;
      s.val_loss = v.loss;
      s.val_accuracy = v.accuracy;
    }
    s.seconds = bar.seconds();
    char note[160];
    if (s.has_val)
      std::snprintf(note, sizeof note, "loss %.4f  acc %.2f%%  val loss %.4f  val acc %.2f%%", s.train_loss,
                    100 * s.train_accuracy, s.val_loss, 100 * s.val_accuracy);
    else
      std::snprintf(note, sizeof note, "loss %.4f  acc %.2f%%", s.train_loss, 100 * s.train_accuracy);
    bar.finish(note);
    history.push_back(s);
    if (o.on_epoch) o.on_epoch(s);
  }
  return history;
}

}  // namespace perceiver::train
