// Single-file (LDM / SGM) checkpoints converted to diffusers names give exactly the tensors of
// the diffusers folders, and load into the modules.
#include <doctest/doctest.h>

#include "nn/key_map.h"
#include "nn/unet.h"
#include "nn_test_util.h"

using namespace sumi::nn;
using namespace sumi::nn::test;

namespace {

// Every tensor of the diffusers file must be in `converted` with identical values, and
// nothing else (except buffers the modules do not use).
void check_same(const TensorMap& converted, const std::string& diffusers_file) {
  CAPTURE(diffusers_file);
  auto want = load_f32(diffusers_file);
  int64_t compared = 0;
  for (const auto& [name, t] : want) {
    if (name.find("position_ids") != std::string::npos) continue;
    CAPTURE(name);
    auto it = converted.find(name);
    REQUIRE(it != converted.end());
    REQUIRE(it->second.sizes() == t.sizes());
    CHECK(at::equal(it->second.to(at::kFloat), t));
    ++compared;
  }
  for (const auto& [name, t] : converted) {
    CAPTURE(name);
    CHECK(want.count(name) == 1);
  }
  CHECK(compared > 0);
}

ConvertedCheckpoint convert(const std::string& model, ModelFamily family) {
  return convert_single_file(load_f32(fixture(model + ".safetensors")), family);
}

}  // namespace

TEST_CASE("key map: tiny-sd1 single file equals the diffusers folder") {
  auto c = convert("tiny-sd1", ModelFamily::sd1);
  check_same(c.unet, fixture("tiny-sd1/unet/diffusion_pytorch_model.safetensors"));
  check_same(c.vae, fixture("tiny-sd1/vae/diffusion_pytorch_model.safetensors"));
  check_same(c.text_encoder, fixture("tiny-sd1/text_encoder/model.safetensors"));
  CHECK(c.text_encoder_2.empty());
  CHECK(c.unused.empty());
}

TEST_CASE("key map: tiny-sd2v single file (OpenCLIP, last block dropped) equals the diffusers folder") {
  auto c = convert("tiny-sd2v", ModelFamily::sd2);
  check_same(c.unet, fixture("tiny-sd2v/unet/diffusion_pytorch_model.safetensors"));
  check_same(c.vae, fixture("tiny-sd2v/vae/diffusion_pytorch_model.safetensors"));
  check_same(c.text_encoder, fixture("tiny-sd2v/text_encoder/model.safetensors"));
  // logit_scale, text_projection (no projection in SD2's CLIPTextModel) and the 12 tensors of
  // the dropped last block.
  CHECK(c.unused.size() == 14);
}

TEST_CASE("key map: tiny-sdxl single file (SGM, two encoders) equals the diffusers folder") {
  auto c = convert("tiny-sdxl", ModelFamily::sdxl);
  check_same(c.unet, fixture("tiny-sdxl/unet/diffusion_pytorch_model.safetensors"));
  check_same(c.vae, fixture("tiny-sdxl/vae/diffusion_pytorch_model.safetensors"));
  check_same(c.text_encoder, fixture("tiny-sdxl/text_encoder/model.safetensors"));
  check_same(c.text_encoder_2, fixture("tiny-sdxl/text_encoder_2/model.safetensors"));
  CHECK(c.unused == std::vector<std::string>{"conditioner.embedders.1.model.logit_scale"});
}

TEST_CASE("key map: a UNet loaded from the single file reproduces the golden") {
  auto original = load_f32(fixture("tiny-sd1.safetensors"));
  auto detected = detect_from_weights(shapes_of(original));
  REQUIRE(detected.family == ModelFamily::sd1);
  auto c = convert_single_file(original, detected.family);
  UNet2DConditionModel unet(UNetConfig::from_diffusers_json(fixture("tiny-sd1/unet/config.json")));
  load_weights(unet, c.unet);
  at::NoGradGuard no_grad;
  auto out = unet.forward(golden("tiny-sd1", "unet.in.sample"), at::scalar_tensor(500, at::kLong),
                          golden("tiny-sd1", "unet.in.encoder_hidden_states"));
  CHECK(rel_err(out, golden("tiny-sd1", "unet.out.t500")) < 1e-4);
}

TEST_CASE("key map: name-level maps") {
  CHECK(unet_key_to_diffusers("input_blocks.4.1.proj_in.weight", 2) == "down_blocks.1.attentions.0.proj_in.weight");
  CHECK(unet_key_to_diffusers("input_blocks.3.0.op.bias", 2) == "down_blocks.0.downsamplers.0.conv.bias");
  CHECK(unet_key_to_diffusers("output_blocks.2.1.conv.weight", 2) == "up_blocks.0.upsamplers.0.conv.weight");
  CHECK(unet_key_to_diffusers("output_blocks.5.2.conv.weight", 2) == "up_blocks.1.upsamplers.0.conv.weight");
  CHECK(unet_key_to_diffusers("output_blocks.4.0.skip_connection.weight", 2) ==
        "up_blocks.1.resnets.1.conv_shortcut.weight");
  CHECK(unet_key_to_diffusers("label_emb.0.2.weight", 2) == "add_embedding.linear_2.weight");
  CHECK_FALSE(unet_key_to_diffusers("input_blocks.1.7.weight", 2));
  CHECK(vae_key_to_diffusers("decoder.up.0.block.2.nin_shortcut.weight", 4) ==
        "decoder.up_blocks.3.resnets.2.conv_shortcut.weight");
  CHECK(vae_key_to_diffusers("encoder.mid.attn_1.proj_out.bias", 4) == "encoder.mid_block.attentions.0.to_out.0.bias");
  CHECK_FALSE(vae_key_to_diffusers("decoder.up.4.block.0.conv1.weight", 4));
}

TEST_CASE("weights: strict loading names missing, unexpected and mis-shaped tensors") {
  UNet2DConditionModel unet(UNetConfig::from_diffusers_json(fixture("tiny-sd1/unet/config.json")));
  auto w = load_f32(fixture("tiny-sd1/unet/diffusion_pytorch_model.safetensors"));
  auto missing = w;
  missing.erase("conv_in.weight");
  CHECK_THROWS_WITH(load_weights(unet, missing), doctest::Contains("missing: conv_in.weight"));
  auto extra = w;
  extra["bogus.weight"] = at::zeros({1});
  CHECK_THROWS_WITH(load_weights(unet, extra), doctest::Contains("unexpected: bogus.weight"));
  LoadOptions lenient;
  lenient.strict = false;
  CHECK(load_weights(unet, extra, lenient).unexpected == std::vector<std::string>{"bogus.weight"});
  auto wrong = w;
  wrong["conv_in.weight"] = at::zeros({32, 4, 1, 1});
  CHECK_THROWS_WITH(load_weights(unet, wrong), doctest::Contains("conv_in.weight' has shape [32, 4, 1, 1]"));
}

TEST_CASE("key map: diffusers parts back to the single file") {
  struct Case {
    const char* model;
    ModelFamily family;
  };
  for (auto [model, family] : {Case{"tiny-sd1", ModelFamily::sd1}, Case{"tiny-sd2v", ModelFamily::sd2},
                               Case{"tiny-sdxl", ModelFamily::sdxl}}) {
    CAPTURE(model);
    const std::string m = model;
    auto original = load_f32(fixture(m + ".safetensors"));
    auto parts = convert_single_file(original, family);
    auto config = UNetConfig::from_diffusers_json(fixture(m + "/unet/config.json"));
    // With the original as carry-over the round trip is exact.
    auto back = to_single_file(parts, config, &original);
    CHECK(back.size() == original.size());
    for (const auto& [name, t] : original) {
      CAPTURE(name);
      auto it = back.find(name);
      REQUIRE(it != back.end());
      REQUIRE(it->second.sizes() == t.sizes());
      CHECK(at::equal(it->second, t));
    }
    // Without it, the tensors the diffusers form lacks get placeholders of the right shape
    // (SD2's unused text_projection is [width, width] as in the real model; the tiny one is not).
    auto placeholder = to_single_file(parts, config);
    CHECK(placeholder.size() == original.size());
    for (const auto& [name, t] : original) {
      CAPTURE(name);
      REQUIRE(placeholder.count(name) == 1);
      if (name != "cond_stage_model.model.text_projection") CHECK(placeholder.at(name).sizes() == t.sizes());
    }
  }
}

TEST_CASE("key map: names back to the original layout") {
  auto xl = UNetConfig::from_diffusers_json(fixture("tiny-sdxl/unet/config.json"));
  CHECK(unet_key_to_original("down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q.weight", xl) ==
        "input_blocks.4.1.transformer_blocks.0.attn1.to_q.weight");
  CHECK(unet_key_to_original("up_blocks.0.upsamplers.0.conv.weight", xl) == "output_blocks.2.2.conv.weight");
  CHECK(unet_key_to_original("up_blocks.1.upsamplers.0.conv.weight", xl) == "output_blocks.5.2.conv.weight");
  auto sd1 = UNetConfig::from_diffusers_json(fixture("tiny-sd1/unet/config.json"));
  CHECK(unet_key_to_original("up_blocks.0.upsamplers.0.conv.weight", sd1) == "output_blocks.2.1.conv.weight");
  CHECK(unet_key_to_original("down_blocks.1.resnets.0.time_emb_proj.weight", sd1) ==
        "input_blocks.4.0.emb_layers.1.weight");
  CHECK_FALSE(unet_key_to_original("down_blocks.9.resnets.0.conv1.weight", sd1));
  CHECK(vae_key_to_original("decoder.up_blocks.0.upsamplers.0.conv.weight", 4) == "decoder.up.3.upsample.conv.weight");
  CHECK(vae_key_to_original("encoder.mid_block.attentions.0.to_out.0.weight", 4) == "encoder.mid.attn_1.proj_out.weight");
  ConvertedCheckpoint bad;
  bad.unet["nonsense.weight"] = at::zeros({1});
  CHECK_THROWS_WITH(to_single_file(bad, sd1), doctest::Contains("'nonsense.weight' has no place"));
}

TEST_CASE("key map: legacy diffusers VAE attention names are upgraded") {
  auto vae = load_f32(fixture("tiny-sd1/vae/diffusion_pytorch_model.safetensors"));
  TensorMap legacy;
  for (const auto& [name, t] : vae) {
    auto n = name;
    for (auto [from, to] : {std::pair<std::string, std::string>{".to_q.", ".query."}, {".to_k.", ".key."},
                            {".to_v.", ".value."}, {".to_out.0.", ".proj_attn."}}) {
      auto pos = n.find(from);
      if (pos != std::string::npos) n = n.substr(0, pos) + to + n.substr(pos + from.size());
    }
    legacy[n] = t;
  }
  REQUIRE(legacy.count("encoder.mid_block.attentions.0.proj_attn.weight") == 1);
  auto upgraded = upgrade_legacy_vae_names(legacy);
  CHECK(upgraded.size() == vae.size());
  for (const auto& [name, t] : vae) {
    CAPTURE(name);
    REQUIRE(upgraded.count(name) == 1);
    CHECK(at::equal(upgraded.at(name), t));
  }
}

TEST_CASE("unet: mismatched context batch is reported") {
  UNet2DConditionModel unet(UNetConfig::from_diffusers_json(fixture("tiny-sd1/unet/config.json")));
  at::NoGradGuard no_grad;
  CHECK_THROWS_WITH(unet.forward(at::zeros({2, 4, 8, 8}), at::scalar_tensor(1), at::zeros({1, 77, 32})),
                    doctest::Contains("context batch 1 differs from sample batch 2"));
}
