// config.json parsing and the weight/config consistency checks of the model loader.
#include <fstream>
#include <nlohmann/json.hpp>

#include "model/config.h"
#include "perceiver/perceiver.h"
#include "test_util.h"

namespace perceiver {
namespace {

nlohmann::json tiny_config(const std::string& variant) {
  return nlohmann::json::parse(std::ifstream(test::vectors_dir() / variant / "config.json"));
}

// The error message of parse_config for a modified conv-tiny config.
std::string config_error(const std::function<void(nlohmann::json&)>& edit) {
  nlohmann::json j = tiny_config("conv-tiny");
  edit(j);
  try {
    parse_config(j.dump(), "config.json");
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::model);
    return e.what();
  }
  return "";
}

TEST(Config, DerivesHuggingFaceWidths) {
  PerceiverConfig c = parse_config(tiny_config("conv-tiny").dump(), "config.json");
  EXPECT_EQ(c.architecture, Architecture::conv);
  EXPECT_EQ(c.input_channels, 322);
  EXPECT_EQ(c.encoder_cross.qk_channels, 322);  // cross_attention_shape_for_attention = "kv"
  EXPECT_EQ(c.encoder_cross.v_channels, 322);
  EXPECT_EQ(c.encoder_cross.heads, 1);
  EXPECT_EQ(c.self_attention.qk_channels, 32);
  EXPECT_EQ(c.self_attention.heads, 4);
  EXPECT_EQ(c.decoder_cross.qk_channels, 32);
  EXPECT_EQ(c.decoder_cross.heads, 1);
  EXPECT_EQ(c.num_labels(), 10);
  EXPECT_EQ(c.labels[3], "LABEL_3");
  EXPECT_EQ(parse_config(tiny_config("fourier-tiny").dump(), "c").input_channels, 261);
  EXPECT_EQ(parse_config(tiny_config("learned-tiny").dump(), "c").input_channels, 512);
}

TEST(Config, RefusesNonsenseWithClearErrors) {
  EXPECT_NE(config_error([](auto& j) { j["num_self_attention_heads"] = 0; }).find("num_self_attention_heads"),
            std::string::npos);
  EXPECT_NE(config_error([](auto& j) { j["d_latents"] = -5; }).find("d_latents"), std::string::npos);
  EXPECT_NE(config_error([](auto& j) { j["num_self_attention_heads"] = 3; }).find("not divisible"),
            std::string::npos);
  EXPECT_NE(config_error([](auto& j) { j["num_labels"] = 7; }).find("num_labels"), std::string::npos);
  EXPECT_NE(
      config_error([](auto& j) { j["architectures"] = {"BertModel"}; }).find("unsupported architecture"),
      std::string::npos);
  EXPECT_NE(config_error([](auto& j) { j.erase("architectures"); }).find("architectures"), std::string::npos);
  EXPECT_NE(config_error([](auto& j) { j["id2label"]["12"] = "x"; }).find("id2label"), std::string::npos);
  EXPECT_NE(config_error([](auto& j) { j["hidden_act"] = "relu"; }).find("hidden_act"), std::string::npos);
  EXPECT_NE(config_error([](auto& j) { j["num_latents"] = "many"; }).find("num_latents"), std::string::npos);
  EXPECT_THROW(parse_config("{not json", "config.json"), Error);
  EXPECT_THROW(parse_config("[1,2]", "config.json"), Error);
}

// A model directory whose config.json is edited, with the real tiny weights.
std::string load_error(const std::function<void(nlohmann::json&)>& edit) {
  auto dir = test::temp_dir("model");
  auto src = test::vectors_dir() / "conv-tiny";
  std::filesystem::copy_file(src / "model.safetensors", dir / "model.safetensors");
  nlohmann::json j = tiny_config("conv-tiny");
  edit(j);
  std::ofstream(dir / "config.json") << j.dump();
  try {
    Model::load(dir);
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::model);
    return e.what();
  }
  return "";
}

TEST(ModelLoad, NamesMissingUnexpectedAndMisshapenTensors) {
  std::string shape = load_error([](auto& j) { j["d_latents"] = 64; });
  EXPECT_NE(shape.find("perceiver.embeddings.latents"), std::string::npos) << shape;
  EXPECT_NE(shape.find("[16, 32]"), std::string::npos) << shape;
  EXPECT_NE(shape.find("model.safetensors"), std::string::npos) << shape;

  std::string missing = load_error([](auto& j) { j["num_self_attends_per_block"] = 3; });
  EXPECT_NE(missing.find("missing"), std::string::npos) << missing;
  EXPECT_NE(missing.find("perceiver.encoder.self_attends.2."), std::string::npos) << missing;

  std::string unexpected = load_error([](auto& j) { j["num_self_attends_per_block"] = 1; });
  EXPECT_NE(unexpected.find("unexpected"), std::string::npos) << unexpected;
  EXPECT_NE(unexpected.find("perceiver.encoder.self_attends.1."), std::string::npos) << unexpected;

  std::string labels = load_error([](auto& j) {
    j.erase("label2id");
    j["id2label"] = {{"0", "a"}, {"1", "b"}};
  });
  EXPECT_NE(labels.find("final_layer"), std::string::npos) << labels;
}

TEST(ModelLoad, MissingFilesAreModelErrors) {
  auto dir = test::temp_dir("empty");
  EXPECT_THROW(Model::load(dir), Error);
  EXPECT_THROW(Model::load(dir / "nope"), Error);
  std::ofstream(dir / "config.json") << tiny_config("conv-tiny").dump();
  try {
    Model::load(dir);
    FAIL() << "loaded a model without weights";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("model.safetensors"), std::string::npos);
  }
}

}  // namespace
}  // namespace perceiver
