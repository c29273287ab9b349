// bf16 CPU autocast: the networks run and stay close to their float32 results.
#include <doctest/doctest.h>

#include <map>

#include <sumi/torch_compat.hpp>
#include "nn/autoencoder_kl.h"
#include "nn/clip_text.h"
#include "nn/unet.h"
#include "nn_test_util.h"

using namespace sumi::nn;
using namespace sumi::nn::test;
using sumi::torch_compat::AutocastGuard;

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

namespace {
// Gradients of every parameter and of the context for one UNet step.
std::map<std::string, at::Tensor> unet_grads(bool checkpointing, bool autocast) {
  UNet2DConditionModel unet(UNetConfig::from_diffusers_json(fixture("tiny-sdxl/unet/config.json")));
  load_weights(unet, load_f32(fixture("tiny-sdxl/unet/diffusion_pytorch_model.safetensors")));
  unet.set_gradient_checkpointing(checkpointing);
  AddedConditioning added{golden("tiny-sdxl", "unet.in.text_embeds"), golden("tiny-sdxl", "unet.in.time_ids")};
  auto ctx = golden("tiny-sdxl", "unet.in.encoder_hidden_states").clone().requires_grad_(true);
  at::Tensor out;
  {
    AutocastGuard guard(c10::DeviceType::CPU, at::kBFloat16, autocast);
    out = unet.forward(golden("tiny-sdxl", "unet.in.sample"), at::scalar_tensor(500, at::kLong), ctx, &added);
  }
  out.to(at::kFloat).square().mean().backward();  // outside the autocast scope, as trainers do
  std::map<std::string, at::Tensor> g;
  for (const auto& p : unet.named_parameters()) g[p.key()] = p.value().grad();
  g["<context>"] = ctx.grad();
  return g;
}
}  // namespace

TEST_CASE("training: gradient checkpointing gives the same gradients (float32 and bf16 autocast)") {
  // Compared as one vector: some gradients are ~0 in exact arithmetic (a conv bias right before
  // a group norm with one channel per group) and per-tensor relative errors of noise mean nothing.
  auto flat = [](const std::map<std::string, at::Tensor>& g) {
    std::vector<at::Tensor> parts;
    for (const auto& [name, t] : g)
      if (name != "<context>") parts.push_back(t.to(at::kFloat).reshape({-1}));
    return at::cat(parts);
  };
  for (bool autocast : {false, true}) {
    CAPTURE(autocast);
    auto plain = unet_grads(false, autocast);
    auto ckpt = unet_grads(true, autocast);
    for (const auto& [name, g] : plain) {
      CAPTURE(name);
      CHECK(ckpt.at(name).defined());
    }
    const double tol = autocast ? 2e-2 : 1e-5;
    CHECK(rel_err(flat(ckpt), flat(plain)) < tol);
    CHECK(rel_err(ckpt.at("<context>"), plain.at("<context>").to(at::kFloat)) < tol);
  }
}

TEST_CASE("training: checkpointed blocks still train parameters when no input requires grad") {
  ClipTextModel te(ClipTextConfig::from_diffusers_json(fixture("tiny-sd1/text_encoder/config.json")));
  // Freeze everything but one layer's q_proj, as an adapter-style fine-tune would.
  for (auto& p : te.named_parameters()) p.value().requires_grad_(p.key().find("layers.1.self_attn.q_proj") != std::string::npos);
  te.set_gradient_checkpointing(true);
  te.forward(golden("tiny-sd1", "tok.ids_77").to(at::kLong)).last_hidden_state.sum().backward();
  for (const auto& p : te.named_parameters()) {
    CAPTURE(p.key());
    CHECK(p.value().grad().defined() == p.value().requires_grad());
  }
}
