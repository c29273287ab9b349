// Configs from diffusers json, and the same configs detected from single-file names/shapes.
#include <doctest/doctest.h>

#include <fstream>

#include "sumi/io/safetensors.h"
#include "nn/detect.h"
#include "nn_test_util.h"

using namespace sumi::nn;
using namespace sumi::nn::test;

namespace {

TensorShapes shapes_of(const std::string& path) {
  TensorShapes s;
  auto file = sumi::io::SafetensorsFile::open(path);
  for (const auto& info : file->tensors()) s[info.name] = info.shape;
  return s;
}

// Detection cannot see head counts; compare everything else.
UNetConfig without_heads(UNetConfig c) {
  std::fill(c.num_heads.begin(), c.num_heads.end(), 1);
  return c;
}
ClipTextConfig without_heads(ClipTextConfig c) {
  c.num_attention_heads = 1;
  return c;
}

}  // namespace

TEST_CASE("configs: diffusers json of the tiny models") {
  auto sd1 = UNetConfig::from_diffusers_json(fixture("tiny-sd1/unet/config.json"));
  CHECK(sd1.num_heads == std::vector<int64_t>{8, 8, 8, 8});
  CHECK(sd1.cross_attention == std::vector<bool>{true, true, true, false});
  CHECK_FALSE(sd1.use_linear_projection);
  auto sd2 = UNetConfig::from_diffusers_json(fixture("tiny-sd2v/unet/config.json"));
  CHECK(sd2.num_heads == std::vector<int64_t>{2, 4, 4, 4});
  CHECK(sd2.upcast_attention);
  CHECK(sd2.use_linear_projection);
  auto xl = UNetConfig::from_diffusers_json(fixture("tiny-sdxl/unet/config.json"));
  CHECK(xl.transformer_depth == std::vector<int64_t>{1, 1, 2});
  CHECK(xl.mid_transformer_depth == 2);
  CHECK(xl.cross_attention == std::vector<bool>{false, true, true});
  CHECK(xl.addition_time_embed_dim == 8);
  CHECK(xl.projection_class_embeddings_input_dim == 72);
  auto te2 = ClipTextConfig::from_diffusers_json(fixture("tiny-sdxl/text_encoder_2/config.json"));
  CHECK(te2.projection_dim == 24);
  CHECK(te2.hidden_act == "gelu");
  CHECK(ClipTextConfig::from_diffusers_json(fixture("tiny-sdxl/text_encoder/config.json")).projection_dim == 0);
}

TEST_CASE("configs: bad json is reported with the file name") {
  const std::string path = std::string(SUMI_BUILD_DIR) + "/test_nn_bad_unet.json";
  {
    std::ofstream out(path);
    out << R"({"block_out_channels": [32, 64], "down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"],
               "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D"], "attention_head_dim": [8, 8, 8]})";
  }
  CHECK_THROWS_WITH(UNetConfig::from_diffusers_json(path), doctest::Contains("attention_head_dim has 3 entries"));
  CHECK_THROWS_WITH(UNetConfig::from_diffusers_json(path + ".missing"), doctest::Contains("cannot open"));
}

TEST_CASE("detect: family and shapes from the single files match the diffusers configs") {
  struct Case {
    const char* model;
    ModelFamily family;
  };
  for (auto [model, family] : {Case{"tiny-sd1", ModelFamily::sd1}, Case{"tiny-sd2v", ModelFamily::sd2},
                               Case{"tiny-sdxl", ModelFamily::sdxl}}) {
    CAPTURE(model);
    const std::string m = model;
    auto d = detect_from_weights(shapes_of(fixture(m + ".safetensors")));
    CHECK(d.family == family);
    REQUIRE(d.unet);
    REQUIRE(d.vae);
    REQUIRE(d.text_encoder);
    CHECK(without_heads(*d.unet) == without_heads(UNetConfig::from_diffusers_json(fixture(m + "/unet/config.json"))));
    CHECK(*d.vae == VaeConfig::from_diffusers_json(fixture(m + "/vae/config.json")));
    CHECK(without_heads(*d.text_encoder) ==
          without_heads(ClipTextConfig::from_diffusers_json(fixture(m + "/text_encoder/config.json"))));
    if (family == ModelFamily::sdxl) {
      REQUIRE(d.text_encoder_2);
      CHECK(without_heads(*d.text_encoder_2) ==
            without_heads(ClipTextConfig::from_diffusers_json(fixture(m + "/text_encoder_2/config.json"))));
    } else {
      CHECK_FALSE(d.text_encoder_2);
    }
  }
}

TEST_CASE("detect: heads follow the family where shapes cannot tell") {
  auto sd1 = detect_from_weights(shapes_of(fixture("tiny-sd1.safetensors")));
  CHECK(sd1.unet->num_heads == std::vector<int64_t>{8, 8, 8, 8});
  // SD2/SDXL use 64-wide heads; the tiny widths (32/64) give 1 head each.
  auto xl = detect_from_weights(shapes_of(fixture("tiny-sdxl.safetensors")));
  CHECK(xl.unet->num_heads == std::vector<int64_t>{1, 1, 1});
}

TEST_CASE("detect: names of no SD layout are rejected") {
  TensorShapes s{{"foo.weight", {3, 3}}};
  CHECK_THROWS_WITH(detect_from_weights(s), doctest::Contains("no SD1/SD2/SDXL tensors"));
  TensorShapes partial{{"model.diffusion_model.input_blocks.0.0.weight", {32, 4, 3, 3}},
                       {"cond_stage_model.transformer.text_model.embeddings.token_embedding.weight", {10, 8}}};
  CHECK_THROWS_WITH(detect_from_weights(partial), doctest::Contains("is missing"));
  TensorShapes refiner{{"conditioner.embedders.0.model.token_embedding.weight", {49408, 1280}}};
  CHECK_THROWS_WITH(detect_from_weights(refiner), doctest::Contains("refiner"));
}
