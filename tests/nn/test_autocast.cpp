// bf16 CPU autocast: the networks run and stay close to their float32 results.
#include <doctest/doctest.h>

#include "nn/autocast.h"
#include "nn/autoencoder_kl.h"
#include "nn/clip_text.h"
#include "nn/unet.h"
#include "nn_test_util.h"

using namespace sumi::nn;
using namespace sumi::nn::test;

TEST_CASE("autocast: tiny-sdxl UNet under bf16 autocast stays within 5e-2 of float32") {
  auto config = UNetConfig::from_diffusers_json(fixture("tiny-sdxl/unet/config.json"));
  UNet2DConditionModel unet(config);
  load_weights(unet, load_f32(fixture("tiny-sdxl/unet/diffusion_pytorch_model.safetensors")));
  at::NoGradGuard no_grad;
  AddedConditioning added{golden("tiny-sdxl", "unet.in.text_embeds"), golden("tiny-sdxl", "unet.in.time_ids")};
  const auto& x = golden("tiny-sdxl", "unet.in.sample");
  const auto& ctx = golden("tiny-sdxl", "unet.in.encoder_hidden_states");
  auto t = at::scalar_tensor(500, at::kLong);
  at::Tensor low;
  {
    AutocastGuard guard(c10::DeviceType::CPU, at::kBFloat16);
    low = unet.forward(x, t, ctx, &added);
  }
  CHECK((low.scalar_type() == at::kBFloat16));
  CHECK(rel_err(low, golden("tiny-sdxl", "unet.out.t500")) < 5e-2);
  // The guard restores float32 behaviour.
  CHECK((unet.forward(x, t, ctx, &added).scalar_type() == at::kFloat));
}

TEST_CASE("autocast: tiny-sd2v UNet (upcast attention) and SD1 under bf16 autocast") {
  for (const std::string model : {"tiny-sd1", "tiny-sd2v"}) {
    CAPTURE(model);
    UNet2DConditionModel unet(UNetConfig::from_diffusers_json(fixture(model + "/unet/config.json")));
    load_weights(unet, load_f32(fixture(model + "/unet/diffusion_pytorch_model.safetensors")));
    at::NoGradGuard no_grad;
    AutocastGuard guard(c10::DeviceType::CPU, at::kBFloat16);
    auto out = unet.forward(golden(model, "unet.in.sample"), at::scalar_tensor(999, at::kLong),
                            golden(model, "unet.in.encoder_hidden_states"));
    CHECK(rel_err(out, golden(model, "unet.out.t999")) < 5e-2);
  }
}

TEST_CASE("autocast: text encoder and VAE decode under bf16 autocast") {
  ClipTextModel te(ClipTextConfig::from_diffusers_json(fixture("tiny-sdxl/text_encoder_2/config.json")));
  load_weights(te, load_f32(fixture("tiny-sdxl/text_encoder_2/model.safetensors")));
  AutoencoderKL vae(VaeConfig::from_diffusers_json(fixture("tiny-sdxl/vae/config.json")));
  load_weights(vae, load_f32(fixture("tiny-sdxl/vae/diffusion_pytorch_model.safetensors")));
  at::NoGradGuard no_grad;
  AutocastGuard guard(c10::DeviceType::CPU, at::kBFloat16);
  auto out = te.forward(golden("tiny-sdxl", "tok2.ids_77").to(at::kLong));
  CHECK(rel_err(out.hidden_states[out.hidden_states.size() - 2], golden("tiny-sdxl", "te2.penultimate")) < 5e-2);
  CHECK(rel_err(out.text_embeds, golden("tiny-sdxl", "te2.text_embeds")) < 5e-2);
  CHECK(rel_err(vae.decode(golden("tiny-sdxl", "vae.in.latent")), golden("tiny-sdxl", "vae.dec.out")) < 5e-2);
}

TEST_CASE("bf16: a UNet cast to bf16 runs in bf16 and stays close to float32") {
  UNet2DConditionModel unet(UNetConfig::from_diffusers_json(fixture("tiny-sd2v/unet/config.json")));
  load_weights(unet, load_f32(fixture("tiny-sd2v/unet/diffusion_pytorch_model.safetensors")));
  unet.to(at::kBFloat16);
  at::NoGradGuard no_grad;
  auto out = unet.forward(golden("tiny-sd2v", "unet.in.sample").to(at::kBFloat16), at::scalar_tensor(500, at::kLong),
                          golden("tiny-sd2v", "unet.in.encoder_hidden_states").to(at::kBFloat16));
  CHECK((out.scalar_type() == at::kBFloat16));
  CHECK(rel_err(out, golden("tiny-sd2v", "unet.out.t500")) < 5e-2);
}

TEST_CASE("training: gradients reach every UNet and text-encoder parameter") {
  UNet2DConditionModel unet(UNetConfig::from_diffusers_json(fixture("tiny-sdxl/unet/config.json")));
  AddedConditioning added{at::randn({1, 24}), at::tensor({64.0f, 64.0f, 0.0f, 0.0f, 64.0f, 64.0f}).unsqueeze(0)};
  unet.forward(at::randn({1, 4, 8, 8}), at::scalar_tensor(10), at::randn({1, 7, 64}), &added).square().mean().backward();
  for (const auto& p : unet.named_parameters()) {
    CAPTURE(p.key());
    REQUIRE(p.value().grad().defined());
  }
  ClipTextModel te(ClipTextConfig::from_diffusers_json(fixture("tiny-sdxl/text_encoder_2/config.json")));
  auto out = te.forward(at::tensor({49406, 320, 49407, 0}, at::kLong).unsqueeze(0));
  (out.last_hidden_state.sum() + out.text_embeds.sum()).backward();
  for (const auto& p : te.named_parameters()) {
    CAPTURE(p.key());
    REQUIRE(p.value().grad().defined());
  }
}
