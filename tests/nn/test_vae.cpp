// AutoencoderKL of the three tiny models against diffusers' outputs.
#include <ATen/CPUGeneratorImpl.h>
#include <ATen/Parallel.h>
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

namespace {

std::unique_ptr<AutoencoderKL> tiny_vae(const std::string& model) {
  auto vae = std::make_unique<AutoencoderKL>(VaeConfig::from_diffusers_json(fixture(model + "/vae/config.json")));
  load_weights(*vae, load_f32(fixture(model + "/vae/diffusion_pytorch_model.safetensors")));
  return vae;
}

}  // namespace

TEST_CASE("vae: slicing gives exactly the batched result") {
  auto vae = tiny_vae("tiny-sd1");
  at::NoGradGuard no_grad;
  auto gen = at::detail::createCPUGenerator(3);
  const at::Tensor z = at::randn({3, 4, 8, 8}, gen);
  const at::Tensor x = at::rand({3, 3, 64, 64}, gen) * 2 - 1;
  const at::Tensor dec = vae->decode(z), mom = vae->encode(x).moments;
  vae->set_slicing(true);
  // Not bit-identical: the CPU kernels round differently for a batch of 3 than for 1 (~1e-5
  // absolute here, with one thread too) — the same as diffusers' enable_slicing.
  CHECK(rel_err(vae->decode(z), dec) < 1e-5);
  CHECK(rel_err(vae->encode(x).moments, mom) < 1e-5);
}

TEST_CASE("vae: tiling blends tiles of sample_size as diffusers' enable_tiling does") {
  auto vae = tiny_vae("tiny-sd1");
  // the fixture VAE's sample_size (64) is the tile: 64 pixels, 8 latents; 20x20 latents take
  // 4 x 4 tiles at latent stride 6, each 64-pixel result cropped to 48 after blending 16.
  REQUIRE(vae->tile_sample_size() == 64);
  REQUIRE(vae->tile_latent_size() == 8);
  at::NoGradGuard no_grad;
  auto gen = at::detail::createCPUGenerator(5);
  const at::Tensor z = at::randn({1, 4, 20, 20}, gen);
  const at::Tensor x = at::rand({1, 3, 160, 160}, gen) * 2 - 1;
  const at::Tensor whole = vae->decode(z), whole_m = vae->encode(x).moments;
  vae->set_tiling(true);
  const at::Tensor t = vae->decode(z), tm = vae->encode(x).moments;
  REQUIRE(t.sizes() == whole.sizes());
  REQUIRE(tm.sizes() == whole_m.sizes());
  // Tiles were used: the result is not the whole-image one. It is not close to it either on this
  // random VAE (~0.6-1 relative): an 8-latent tile is smaller than the decoder's receptive field,
  // and attention and group-norm statistics are per tile. The tiling itself is checked below.
  CHECK_FALSE(at::equal(t, whole));
  CHECK_FALSE(at::equal(tm, whole_m));

  // Where only the first tile reaches, the output is that tile's own result...
  const at::Tensor first = vae->decode(z.slice(2, 0, 8).slice(3, 0, 8));
  CHECK(at::equal(t.slice(2, 0, 48).slice(3, 0, 48), first.slice(2, 0, 48).slice(3, 0, 48)));
  const at::Tensor first_m = vae->encode(x.slice(2, 0, 64).slice(3, 0, 64)).moments;
  CHECK(at::equal(tm.slice(2, 0, 6).slice(3, 0, 6), first_m.slice(2, 0, 6).slice(3, 0, 6)));
  // ...and the seam to its right fades linearly from it into the next tile over 16 columns
  // (rows 0..47 of the top row see no vertical blend).
  const at::Tensor right = vae->decode(z.slice(2, 0, 8).slice(3, 6, 14));
  for (int64_t c : {0, 5, 15}) {
    CAPTURE(c);
    const double w = static_cast<double>(c) / 16.0;
    const at::Tensor want = first.select(3, 48 + c) * (1 - w) + right.select(3, c) * w;
    CHECK(at::allclose(t.select(3, 48 + c).slice(2, 0, 48), want.slice(2, 0, 48), 1e-6, 1e-6));
  }

  // inputs no larger than a tile are not tiled
  const at::Tensor small = z.slice(2, 0, 8).slice(3, 0, 8);
  vae->set_tiling(false);
  const at::Tensor plain = vae->decode(small);
  vae->set_tiling(true);
  CHECK(at::equal(vae->decode(small), plain));
}

TEST_CASE("vae: sample_size comes from the diffusers config and sets the tile") {
  CHECK(VaeConfig::from_diffusers_json(fixture("tiny-sdxl/vae/config.json")).sample_size == 64);
  CHECK(VaeConfig().sample_size == 512);
}

TEST_CASE("vae: a 2 x 2 tiled decode equals diffusers' blend of the four tile decodes") {
  auto vae = tiny_vae("tiny-sd2v");
  at::NoGradGuard no_grad;
  auto gen = at::detail::createCPUGenerator(9);
  const at::Tensor z = at::randn({2, 4, 10, 10}, gen);  // tiles start at latent 0 and 6
  auto tile = [&](int64_t i, int64_t j) { return vae->decode(z.slice(2, i, i + 8).slice(3, j, j + 8)); };
  const at::Tensor d00 = tile(0, 0), d01 = tile(0, 6), d10 = tile(6, 0), d11 = tile(6, 6);
  // blend over 16 pixels: b[y] = a[-16 + y] * (1 - y / 16) + b[y] * y / 16 (rows: dim 2, columns: dim 3)
  auto blend = [](const at::Tensor& a, at::Tensor b, int64_t dim) {
    const at::Tensor w = (at::arange(16, at::kFloat) / 16).reshape(dim == 2 ? std::vector<int64_t>{16, 1} : std::vector<int64_t>{16});
    b = b.clone();
    b.narrow(dim, 0, 16).copy_(a.narrow(dim, a.size(dim) - 16, 16) * (1 - w) + b.narrow(dim, 0, 16) * w);
    return b;
  };
  const at::Tensor t00 = d00, t01 = blend(t00, d01, 3);
  const at::Tensor t10 = blend(t00, d10, 2), t11 = blend(t10, blend(t01, d11, 2), 3);
  auto crop = [](const at::Tensor& t) { return t.slice(2, 0, 48).slice(3, 0, 48); };
  const at::Tensor want = at::cat({at::cat({crop(t00), crop(t01)}, 3), at::cat({crop(t10), crop(t11)}, 3)}, 2);
  REQUIRE(want.sizes() == at::IntArrayRef({2, 3, 80, 80}));
  vae->set_tiling(true);
  CHECK(at::allclose(vae->decode(z), want, 1e-6, 1e-6));
  // with slicing too: the same, one image at a time
  vae->set_slicing(true);
  CHECK(rel_err(vae->decode(z), want) < 1e-5);
}
