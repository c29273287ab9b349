// AutoencoderKL of the three tiny models against diffusers' outputs.
#include <ATen/CPUGeneratorImpl.h>
#include <doctest/doctest.h>

#include "nn/autoencoder_kl.h"
#include "nn_test_util.h"

using namespace sumi::nn;
using namespace sumi::nn::test;

namespace {

void check_vae(const std::string& model) {
  CAPTURE(model);
  auto config = VaeConfig::from_diffusers_json(fixture(model + "/vae/config.json"));
  AutoencoderKL vae(config);
  load_weights(vae, load_f32(fixture(model + "/vae/diffusion_pytorch_model.safetensors")));
  at::NoGradGuard no_grad;
  auto d = vae.encode(golden(model, "vae.in.image"));
  const double tol = 1e-4;
  CHECK(rel_err(d.moments, golden(model, "vae.enc.moments")) < tol);
  CHECK(rel_err(d.mean, golden(model, "vae.enc.mean")) < tol);
  CHECK(rel_err(d.logvar, golden(model, "vae.enc.logvar")) < tol);
  CHECK(rel_err(d.std, golden(model, "vae.enc.std")) < tol);
  CHECK(rel_err(vae.decode(golden(model, "vae.in.latent")), golden(model, "vae.dec.out")) < tol);
}

}  // namespace

TEST_CASE("vae: tiny-sd1 encode/decode match diffusers") { check_vae("tiny-sd1"); }
TEST_CASE("vae: tiny-sd2v encode/decode match diffusers") { check_vae("tiny-sd2v"); }
TEST_CASE("vae: tiny-sdxl encode/decode match diffusers") {
  check_vae("tiny-sdxl");
  CHECK(VaeConfig::from_diffusers_json(fixture("tiny-sdxl/vae/config.json")).scaling_factor ==
        doctest::Approx(0.13025));
}

TEST_CASE("vae: sampling is mean + std * noise") {
  VaeConfig c;
  c.block_out_channels = {32, 32};
  c.layers_per_block = 1;
  AutoencoderKL vae(c);
  at::NoGradGuard no_grad;
  auto d = vae.encode(at::rand({1, 3, 16, 16}) * 2 - 1);
  CHECK(d.mean.sizes() == at::IntArrayRef({1, 4, 8, 8}));
  auto gen = at::detail::createCPUGenerator(7);
  auto s = d.sample(gen);
  auto gen2 = at::detail::createCPUGenerator(7);
  auto noise = at::randn(d.mean.sizes(), gen2, d.mean.options());
  CHECK(rel_err(s, d.mean + d.std * noise) < 1e-6);
}
