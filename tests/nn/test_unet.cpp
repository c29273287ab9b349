// UNet2DConditionModel of the three tiny models against diffusers' outputs at t = 1, 500, 999.
#include <doctest/doctest.h>

#include "nn/unet.h"
#include "nn_test_util.h"

using namespace sumi::nn;
using namespace sumi::nn::test;

namespace {

void check_unet(const std::string& model) {
  CAPTURE(model);
  auto config = UNetConfig::from_diffusers_json(fixture(model + "/unet/config.json"));
  UNet2DConditionModel unet(config);
  load_weights(unet, load_f32(fixture(model + "/unet/diffusion_pytorch_model.safetensors")));
  at::NoGradGuard no_grad;
  AddedConditioning added;
  const AddedConditioning* added_ptr = nullptr;
  if (config.addition_time_embed_dim > 0) {
    added.text_embeds = golden(model, "unet.in.text_embeds");
    added.time_ids = golden(model, "unet.in.time_ids");
    added_ptr = &added;
  }
  for (int t : {1, 500, 999}) {
    CAPTURE(t);
    auto out = unet.forward(golden(model, "unet.in.sample"), at::scalar_tensor(t, at::kLong),
                            golden(model, "unet.in.encoder_hidden_states"), added_ptr);
    CHECK(rel_err(out, golden(model, "unet.out.t" + std::to_string(t))) < 1e-4);
  }
}

}  // namespace

TEST_CASE("unet: tiny-sd1 (conv proj, 8 heads) matches diffusers") { check_unet("tiny-sd1"); }
TEST_CASE("unet: tiny-sd2v (linear proj, upcast, head dim 16) matches diffusers") { check_unet("tiny-sd2v"); }
TEST_CASE("unet: tiny-sdxl (depths 1/1/2, mid 2, text_time) matches diffusers") { check_unet("tiny-sdxl"); }

TEST_CASE("unet: timestep embedding is [cos | sin] with flip_sin_to_cos") {
  auto e = timestep_embedding(at::tensor({0.0f, 10.0f}), 8, true, 0);
  CHECK(e.sizes() == at::IntArrayRef({2, 8}));
  CHECK(e[0][0].item<float>() == doctest::Approx(1.0));  // cos(0)
  CHECK(e[0][4].item<float>() == doctest::Approx(0.0));  // sin(0)
  CHECK(e[1][4].item<float>() == doctest::Approx(std::sin(10.0)).epsilon(1e-5));
}

TEST_CASE("unet: SDXL model without added conditioning is rejected") {
  auto config = UNetConfig::from_diffusers_json(fixture("tiny-sdxl/unet/config.json"));
  UNet2DConditionModel unet(config);
  at::NoGradGuard no_grad;
  CHECK_THROWS_WITH_AS(unet.forward(at::zeros({1, 4, 8, 8}), at::scalar_tensor(1), at::zeros({1, 77, 64})),
                       doctest::Contains("text_embeds"), std::invalid_argument);
}

TEST_CASE("unet: odd latent sizes upsample to the skip's size") {
  auto config = UNetConfig::from_diffusers_json(fixture("tiny-sd1/unet/config.json"));
  UNet2DConditionModel unet(config);
  at::NoGradGuard no_grad;
  auto out = unet.forward(at::randn({1, 4, 9, 7}), at::scalar_tensor(10), at::randn({1, 5, 32}));
  CHECK(out.sizes() == at::IntArrayRef({1, 4, 9, 7}));
}
