// The pieces around training: the trainable decoder reproduces HF's decoder on real checkpoints, the
// safetensors writer, the exported model directory, labelled-data scanning and the train/val split.
#include <fstream>
#include <nlohmann/json.hpp>

#include "formats/npy.h"
#include "formats/safetensors_writer.h"
#include "formats/tensor_file.h"
#include "model/config.h"
#include "perceiver/perceiver.h"
#include "test_util.h"
#include "train/dataset.h"
#include "train/export.h"
#include "train/head.h"
#include "train/trainer.h"

namespace perceiver::train {
namespace {

// The decoder tensors of a checkpoint into a ClassifierHead.
void load_head(const std::filesystem::path& weights, ClassifierHead<float>& head) {
  auto file = open_weights(weights);
  for (Param<float>* p : head.params()) {
    const TensorRef* t = file->find(p->name);
    ASSERT_NE(t, nullptr) << p->name;
    ASSERT_EQ(t->shape, p->shape) << p->name;
    p->value = tensor_to_f32(*t, weights);
  }
}

TEST(TrainExport, HeadForwardMatchesHuggingFaceDecoder) {
  for (std::string variant : {"conv-tiny", "fourier-tiny", "learned-tiny"}) {
    SCOPED_TRACE(variant);
    const auto dir = test::vectors_dir() / variant;
    const PerceiverConfig config = load_config(dir / "config.json");
    ClassifierHead<float> head(config, config.num_labels());
    load_head(dir / "model.safetensors", head);
    NpyArray latents =
        read_npy(dir / ("latents_after_self_attn_b" + std::to_string(config.num_blocks - 1) + "_l" +
                        std::to_string(config.num_self_attends_per_block - 1) + ".npy"));
    const int B = int(latents.shape[0]), L = int(latents.shape[1]);
    std::vector<float> z = latents.to_f32(), logits(size_t(B) * config.num_labels()),
                       features(size_t(B) * head.q_dim());
    head.forward(z.data(), B, L, logits.data(), features.data(), nullptr);
    EXPECT_TRUE(test::AllCloseScaled(logits, read_npy(dir / "logits.npy").to_f32(), 1e-4));
    EXPECT_TRUE(test::AllCloseScaled(features, read_npy(dir / "decoder_cross_attn_out.npy").to_f32(), 1e-4));
  }
}

TEST(TrainExport, SafetensorsWriterRoundTrip) {
  std::vector<float> a = {1, 2, 3, 4, 5, 6};
  std::vector<uint16_t> h = {0x3c00, 0x4000, 0x4200};  // f16 1, 2, 3
  int64_t scalar = 7;
  std::vector<SafetensorsEntry> entries = {{"b.half", DType::f16, {3}, h.data(), 6},
                                           {"a.float", DType::f32, {2, 3}, a.data(), 24},
                                           {"c.count", DType::i64, {}, &scalar, 8}};
  const std::string bytes = serialize_safetensors(entries);
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | uint8_t(bytes[i]);
  EXPECT_EQ(n % 8, 0u);
  const std::string header = bytes.substr(8, n);
  EXPECT_EQ(header.find_last_not_of(' ') + 1, header.find_last_of('}') + 1);
  auto j = nlohmann::json::parse(header);
  EXPECT_EQ(j["__metadata__"]["format"], "pt");
  EXPECT_EQ(j["c.count"]["data_offsets"][0], 0);  // 8-byte elements first, then 4, then 2
  EXPECT_EQ(j["a.float"]["data_offsets"][0], 8);
  EXPECT_EQ(j["b.half"]["data_offsets"], nlohmann::json::array({32, 38}));
  EXPECT_EQ(bytes.size(), 8 + n + 38);

  const auto path = test::temp_dir("safetensors_writer") / "model.safetensors";
  write_safetensors(path, entries);
  auto file = open_safetensors(path);
  ASSERT_EQ(file->tensors().size(), 3u);
  const TensorRef* t = file->find("a.float");
  ASSERT_NE(t, nullptr);
  EXPECT_EQ(t->shape, (std::vector<int64_t>{2, 3}));
  EXPECT_EQ(tensor_to_f32(*t, path), a);
  EXPECT_EQ(tensor_to_f32(*file->find("b.half"), path), (std::vector<float>{1, 2, 3}));
  EXPECT_EQ(file->find("c.count")->shape, std::vector<int64_t>{});

  EXPECT_THROW(serialize_safetensors({{"x", DType::f32, {2}, a.data(), 4}}), Error);  // bytes != shape
  EXPECT_THROW(serialize_safetensors({entries[1], entries[1]}), Error);               // duplicate
}

TEST(TrainExport, ModelDirectoryLoadsAndClassifiesAsTheHead) {
  const auto src = test::vectors_dir() / "conv-tiny";
  const PerceiverConfig config = load_config(src / "config.json");
  auto model = Model::load(src);
  NpyArray px = read_npy(src / "pixel_values.npy");
  const int B = int(px.shape[0]), H = int(px.shape[2]), W = int(px.shape[3]);
  std::vector<float> pixels = px.to_f32(), latents(size_t(B) * config.num_latents * config.d_latents);
  ForwardArgs args;
  args.pixels = pixels.data();
  args.batch = B;
  args.height = H;
  args.width = W;
  args.latents = latents.data();
  model->forward(args);

  ClassifierHead<float> head(config, 3);
  Rng rng(3);
  head.init_hf(rng, config_initializer_range(src));
  std::vector<float> want(size_t(B) * 3), got(size_t(B) * 3);
  head.forward(latents.data(), B, config.num_latents, want.data(), nullptr, nullptr);

  const auto out = test::temp_dir("train_export") / "new-model";
  write_model_dir(src, {}, out, head, {"cat", "dog", "T-shirt/top"}, PreprocessorConfig{});
  auto trained = Model::load(out);
  EXPECT_EQ(trained->info().labels, (std::vector<std::string>{"cat", "dog", "T-shirt/top"}));
  trained->classify(pixels.data(), B, H, W, got.data());
  EXPECT_TRUE(test::AllCloseScaled(got, want, 1e-5));

  // Encoder tensors byte for byte; decoder tensors are the head's; config and preprocessor as expected.
  auto before = open_weights(src / "model.safetensors"), after = open_safetensors(out / "model.safetensors");
  size_t copied = 0;
  for (const TensorRef& t : before->tensors()) {
    if (t.name.starts_with("perceiver.decoder.")) continue;
    const TensorRef* u = after->find(t.name);
    ASSERT_NE(u, nullptr) << t.name;
    EXPECT_EQ(u->dtype, t.dtype);
    EXPECT_EQ(u->shape, t.shape);
    EXPECT_EQ(0, std::memcmp(u->data, t.data, t.nbytes)) << t.name;
    ++copied;
  }
  EXPECT_EQ(after->tensors().size(), copied + head.params().size());
  EXPECT_EQ(after->find("perceiver.decoder.decoder.final_layer.weight")->shape,
            (std::vector<int64_t>{3, config.d_latents}));
  auto cfg = nlohmann::json::parse(std::ifstream(out / "config.json"));
  EXPECT_EQ(cfg["num_labels"], 3);
  EXPECT_EQ(cfg["id2label"]["2"], "T-shirt/top");
  EXPECT_EQ(cfg["label2id"]["dog"], 1);
  EXPECT_EQ(cfg["d_latents"], config.d_latents);
  EXPECT_TRUE(std::filesystem::exists(out / "preprocessor_config.json"));
  EXPECT_EQ(load_preprocessor_config(out / "preprocessor_config.json").height,
            224);  // the defaults written out
  EXPECT_THROW(write_model_dir(src, {}, src, head, {"a", "b", "c"}, PreprocessorConfig{}), Error);
}

TEST(TrainExport, HfInitialisation) {
  const PerceiverConfig config = load_config(test::vectors_dir() / "conv-tiny" / "config.json");
  ClassifierHead<float> head(config, 5);
  Rng rng(0);
  head.init_hf(rng, 0.2);
  for (Param<float>* p : head.params()) {
    SCOPED_TRACE(p->name);
    double sum = 0, sq = 0;
    for (float v : p->value) {
      sum += v;
      sq += double(v) * v;
    }
    const double n = double(p->size());
    if (p->kind == Param<float>::bias) {
      EXPECT_EQ(sq, 0.0);
    } else if (p->kind == Param<float>::norm_scale) {
      EXPECT_EQ(sum, n);
      EXPECT_EQ(sq, n);
    } else if (n >= 256) {
      EXPECT_NEAR(std::sqrt(sq / n), 0.2, 0.03);  // normal(0, initializer_range)
    }
  }
  EXPECT_EQ(head.params().front()->name,
            "perceiver.decoder.decoder.output_position_encodings.position_embeddings");
}

TEST(TrainData, ImageFolderCsvAndSplit) {
  const auto root = test::temp_dir("train_data");
  const auto images = test::shared_dir() / "models" / "fashion-mnist-conv" / "expected" / "images";
  std::vector<std::filesystem::path> pngs;
  for (const auto& e : std::filesystem::directory_iterator(images)) pngs.push_back(e.path());
  std::sort(pngs.begin(), pngs.end());
  ASSERT_GE(pngs.size(), 6u);
  std::filesystem::create_directories(root / "data" / "zeta");
  std::filesystem::create_directories(root / "data" / "alpha" / "nested");
  std::filesystem::create_directories(root / "data" / "empty");
  std::filesystem::copy_file(pngs[0], root / "data" / "zeta" / "b.png");
  std::filesystem::copy_file(pngs[1], root / "data" / "zeta" / "a.PNG");
  std::filesystem::copy_file(pngs[2], root / "data" / "alpha" / "nested" / "c.png");
  std::ofstream(root / "data" / "zeta" / "notes.txt") << "not an image";

  LabelledFiles d = scan_labelled_data(root / "data");
  EXPECT_EQ(d.classes, (std::vector<std::string>{"alpha", "zeta"}));
  ASSERT_EQ(d.files.size(), 3u);
  EXPECT_EQ(d.files[0].filename(), "c.png");
  EXPECT_EQ(d.files[1].filename(), "a.PNG");
  EXPECT_EQ(d.labels, (std::vector<int>{0, 1, 1}));

  std::ofstream(root / "labels.csv") << "file,label\n"
                                     << "data/zeta/b.png,shoe\n\"data/zeta/a.PNG\",\"T-shirt, top\"\r\n\n";
  LabelledFiles c = scan_labelled_data(root / "labels.csv");
  EXPECT_EQ(c.classes, (std::vector<std::string>{"T-shirt, top", "shoe"}));
  EXPECT_EQ(c.files[0], root / "data" / "zeta" / "b.png");
  EXPECT_EQ(c.labels, (std::vector<int>{1, 0}));
  std::ofstream(root / "bad.csv") << "just-one-field\n";
  EXPECT_THROW(scan_labelled_data(root / "bad.csv"), Error);
  EXPECT_THROW(scan_labelled_data(root / "missing"), Error);

  EXPECT_EQ(match_classes({"t_shirt_top", "Bag"}, {"T-shirt/top", "Bag", "bag"}), (std::vector<int>{0, 1}));
  EXPECT_THROW(match_classes({"robot"}, {"T-shirt/top"}), Error);

  std::vector<int> labels;
  for (int i = 0; i < 100; ++i) labels.push_back(i % 3 == 0 ? 0 : (i % 3 == 1 ? 1 : 2));
  labels.push_back(2);  // class 2 has 34
  std::vector<int64_t> tr, va, tr2, va2;
  split_train_val(labels, 3, 0.1, 5, &tr, &va);
  split_train_val(labels, 3, 0.1, 5, &tr2, &va2);
  EXPECT_EQ(tr, tr2);
  EXPECT_EQ(va, va2);
  EXPECT_EQ(tr.size() + va.size(), labels.size());
  EXPECT_EQ(va.size(), 3u + 3u + 3u);  // round(0.1 * 34) = 3, round(3.3) = 3, round(3.3) = 3
  split_train_val(labels, 3, 0.0, 5, &tr, &va);
  EXPECT_TRUE(va.empty());
}

TEST(TrainData, FeatureStoreInMemoryAndFileBacked) {
  FeatureStore mem(3, 4);
  EXPECT_FALSE(mem.file_backed());
  FeatureStore file(3, 4, /*max_memory_bytes=*/16, test::temp_dir("features"));
  EXPECT_TRUE(file.file_backed());
  for (int i = 0; i < 3; ++i)
    for (int j = 0; j < 4; ++j) file.row(i)[j] = float(i * 10 + j);
  FeatureStore moved = std::move(file);
  EXPECT_EQ(moved.row(2)[3], 23.0f);
  EXPECT_EQ(moved.count(), 3);
}

}  // namespace
}  // namespace perceiver::train
