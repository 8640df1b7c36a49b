#include "train/head.h"

#include <cstring>

namespace perceiver::train {

template <class T>
ClassifierHead<T>::ClassifierHead(const LayerShape& shape, int num_labels)
    : num_labels_(num_labels),
      query_(make_param<T>(kDecoderPrefix + "output_position_encodings.position_embeddings", {1, shape.q_dim},
                           Param<T>::embedding)),
      layer_(shape, kDecoderPrefix + "decoding_cross_attention."),
      final_w_(
          make_param<T>(kDecoderPrefix + "final_layer.weight", {num_labels, shape.q_dim}, Param<T>::weight)),
      final_b_(make_param<T>(kDecoderPrefix + "final_layer.bias", {num_labels}, Param<T>::bias)) {}

template <class T>
ClassifierHead<T>::ClassifierHead(const PerceiverConfig& config, int num_labels)
    : ClassifierHead(config.decoder_cross, num_labels) {}

template <class T>
std::vector<Param<T>*> ClassifierHead<T>::params() {
  std::vector<Param<T>*> p = {&query_};
  for (Param<T>* q : layer_.params()) p.push_back(q);
  p.push_back(&final_w_);
  p.push_back(&final_b_);
  return p;
}

template <class T>
void ClassifierHead<T>::zero_grad() {
  for (Param<T>* p : params()) std::fill(p->grad.begin(), p->grad.end(), T(0));
}

template <class T>
void ClassifierHead<T>::init_hf(Rng& rng, double std) {
  for (auto& v : query_.value) v = static_cast<T>(std * rng.normal());
  layer_.init_hf(rng, std);
  for (auto& v : final_w_.value) v = static_cast<T>(std * rng.normal());
  std::fill(final_b_.value.begin(), final_b_.value.end(), T(0));
}

template <class T>
void ClassifierHead<T>::forward(const T* latents, int batch, int nk, T* logits, T* features,
                                Cache* cache) const {
  Cache local;
  Cache& c = cache ? *cache : local;
  const int D = q_dim();
  c.query.resize(size_t(batch) * D);
  for (int b = 0; b < batch; ++b) std::memcpy(&c.query[size_t(b) * D], query_.value.data(), sizeof(T) * D);
  c.features.resize(size_t(batch) * D);
  layer_.forward(c.query.data(), latents, batch, 1, nk, c.features.data(), &c.layer);
  if (features) std::memcpy(features, c.features.data(), sizeof(T) * c.features.size());
  if (logits)
    linear_forward(c.features.data(), final_w_.value.data(), final_b_.value.data(), batch, num_labels_, D,
                   logits);
}

template <class T>
void ClassifierHead<T>::backward(const Cache& c, const T* dlogits, T* dlatents) {
  const int D = q_dim(), batch = c.layer.batch;
  std::vector<T> dfeatures(size_t(batch) * D, T(0)), dquery(size_t(batch) * D, T(0));
  linear_backward(c.features.data(), final_w_.value.data(), dlogits, batch, num_labels_, D, dfeatures.data(),
                  final_w_.grad.data(), final_b_.grad.data());
  layer_.backward(c.layer, dfeatures.data(), dquery.data(), dlatents);
  for (int d = 0; d < D; ++d) {  // the query is shared by every image of the batch
    T acc = 0;
    for (int b = 0; b < batch; ++b) acc += dquery[size_t(b) * D + d];
    query_.grad[d] += acc;
  }
}

template class ClassifierHead<float>;
template class ClassifierHead<double>;

}  // namespace perceiver::train
