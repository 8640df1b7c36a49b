// The classification decoder of HF's PerceiverForImageClassification* models as a trainable unit:
//   query  = output_position_encodings.position_embeddings [1, D]   (one trainable query)
//   h      = PerceiverLayer(query, latents)                          (decoding_cross_attention, 1 head)
//   logits = final_layer(h)                                          [num_labels]
#pragma once

#include <string>
#include <vector>

#include "model/config.h"
#include "train/layer.h"

namespace perceiver::train {

inline const std::string kDecoderPrefix = "perceiver.decoder.decoder.";

template <class T>
class ClassifierHead {
 public:
  // The decoder of `config` (its decoder_cross shape), with a final layer for `num_labels` classes.
  ClassifierHead(const PerceiverConfig& config, int num_labels);
  // A decoder of explicit shape (tests): kv_dim = latent width, q_dim = query width.
  ClassifierHead(const LayerShape& shape, int num_labels);
  ClassifierHead(const ClassifierHead&) = delete;
  ClassifierHead& operator=(const ClassifierHead&) = delete;

  int num_labels() const { return num_labels_; }
  int q_dim() const { return layer_.shape().q_dim; }
  int kv_dim() const { return layer_.shape().kv_dim; }
  PerceiverLayer<T>& layer() { return layer_; }

  // query, the cross-attention layer's parameters, final_layer weight and bias (fixed order).
  std::vector<Param<T>*> params();
  void zero_grad();
  // HF's _init_weights with std = initializer_range, drawing in params() order.
  void init_hf(Rng& rng, double std);

  struct Cache {
    std::vector<T> query, features;  // [B, q_dim] broadcast query; decoder output before final_layer
    typename PerceiverLayer<T>::Cache layer;
  };
  // latents: [batch, nk, kv_dim] (kept by pointer until backward). logits: [batch, num_labels] (may be null);
  // features: [batch, q_dim] decoder output before the final layer (may be null).
  void forward(const T* latents, int batch, int nk, T* logits, T* features, Cache* cache) const;
  // dlogits: [batch, num_labels]. Adds into every parameter's grad; dlatents [batch, nk, kv_dim] when not
  // null.
  void backward(const Cache& cache, const T* dlogits, T* dlatents);

 private:
  int num_labels_;
  Param<T> query_;
  PerceiverLayer<T> layer_;
  Param<T> final_w_, final_b_;
};

extern template class ClassifierHead<float>;
extern template class ClassifierHead<double>;

}  // namespace perceiver::train
