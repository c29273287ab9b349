// The sd model options for memory: `gradient_checkpointing` with a runtime LoRA on the frozen
// tiny-sd1 (the network's parameters live in the host registry and are reached only through the
// layers' adapter hooks, yet their gradients must equal those without checkpointing), and
// `vae_tiling` / `vae_slicing` reaching the VAE (their numbers: tests/nn/test_vae.cpp).
#include <ATen/CPUGeneratorImpl.h>
#include <doctest/doctest.h>

#include "core/error.h"

#include <filesystem>

#include "core/host_api.h"
#include "core/tensor_handle.h"
#include "sumi/io/safetensors_torch.h"
#include "models_test_util.h"

using namespace sumi::test;

namespace {

// The kohya-made tiny-sd1 LoRA (UNet and text encoder) attached to `m` at run time.
std::unique_ptr<TestNetwork> attach_fixture_lora(ModelUnderTest& m) {
  auto n = attach_lora(m.modules(), {{"dim", "4"}, {"alpha", "2"}});
  load_network_file(*n, fixture("tiny-sd1.lora.safetensors"));
  m.c->check(m.vt().set_network(m.self(), n->net->self(), &n->vt(), n->selected.data()), "set_network");
  return n;
}

// Each trainable network parameter's gradient of a loss over the text encoder and the UNet.
std::map<std::string, at::Tensor> lora_grads(bool checkpointing) {
  auto m = load_model("sd1", fixture("tiny-sd1.safetensors"),
                      {{"gradient_checkpointing", checkpointing ? "true" : "false"}});
  auto n = attach_fixture_lora(*m);
  const auto& g = golden("tiny-sd1");
  const at::Tensor cond = m->encode_text({"a photo of a cat", "an old man"}).first;
  REQUIRE(cond.requires_grad());
  const at::Tensor out = m->denoise(g.at("unet.in.sample"), at::full({2}, 500, at::kLong), cond);
  REQUIRE(out.requires_grad());
  out.square().mean().backward();
  std::map<std::string, at::Tensor> grads;
  for (const auto& e : n->registry.entries())
    if (e.trainable) grads[e.name] = e.tensor.grad().defined() ? e.tensor.grad().clone() : at::Tensor();
  return grads;
}

}  // namespace

TEST_CASE("models: gradient checkpointing gives the LoRA the gradients it gets without (tiny-sd1, fp32)") {
  const auto plain = lora_grads(false);
  const auto ckpt = lora_grads(true);
  REQUIRE(plain.size() == 2 * 210);  // 192 UNet + 18 text-encoder modules, down and up each
  REQUIRE(ckpt.size() == plain.size());
  size_t te = 0, unet = 0;
  double worst = 0, worst_rel = 0;
  for (const auto& [name, want] : plain) {
    CAPTURE(name);
    const at::Tensor& got = ckpt.at(name);
    REQUIRE(got.defined() == want.defined());
    if (!want.defined()) continue;
    worst = std::max(worst, (got - want).abs().max().item<double>());
    worst_rel = std::max(worst_rel, ((got - want).norm() / want.norm().clamp_min(1e-30)).item<double>());
    if (want.abs().sum().item<double>() > 0) (name.rfind("lora_te_", 0) == 0 ? te : unet) += 1;
  }
  CHECK(worst < 1e-5);
  // per tensor, float32 summation order differs between one backward and the recomputed one
  CHECK(worst_rel < 1e-4);
  CHECK(te == 2 * 18);
  CHECK(unet >= 2 * 192 - 4);  // the 1x1 mid block's self-attention ignores q and k
}

TEST_CASE("models: gradient_checkpointing is a model option and refuses non-booleans") {
  CHECK(load_error("sd1", fixture("tiny-sd1.safetensors"), {{"gradient_checkpointing", "true"}}).empty());
  CHECK_FALSE(load_error("sd1", fixture("tiny-sd1.safetensors"), {{"gradient_checkpointing", "sometimes"}}).empty());
}

TEST_CASE("models: mem_eff_attn (kohya's --mem_eff_attn / --xformers / --sdpa) gives the same UNet output") {
  auto gen = at::detail::createCPUGenerator(5);
  // 48x48 latents: 2304 tokens x 8 heads, so the 2M-element chunks split the queries.
  const at::Tensor x = at::randn({1, 4, 48, 48}, gen), t = at::full({1}, 500.0), cond = at::randn({1, 77, 32}, gen);
  auto plain = load_model("sd1", fixture("tiny-sd1"));
  auto chunked = load_model("sd1", fixture("tiny-sd1"), {{"mem_eff_attn", "true"}});
  at::NoGradGuard no_grad;
  CHECK(rel_err(chunked->denoise(x, t, cond), plain->denoise(x, t, cond)) < 1e-6);
  CHECK_FALSE(load_error("sd1", fixture("tiny-sd1"), {{"mem_eff_attn", "maybe"}}).empty());
}

TEST_CASE("models: vae_tiling and vae_slicing reach the model's VAE") {
  auto gen = at::detail::createCPUGenerator(4);
  const at::Tensor big = at::randn({1, 4, 20, 20}, gen), batch = at::randn({2, 4, 8, 8}, gen);
  auto plain = load_model("sd1", fixture("tiny-sd1"));
  auto tiled = load_model("sd1", fixture("tiny-sd1"), {{"vae_tiling", "true"}});
  auto sliced = load_model("sd1", fixture("tiny-sd1"), {{"vae_slicing", "true"}});
  at::NoGradGuard no_grad;
  const at::Tensor whole = plain->vae_decode(big);
  // the folder's VAE config says sample_size 64: 20 x 20 latents take several tiles
  CHECK_FALSE(at::equal(tiled->vae_decode(big), whole));
  CHECK(at::equal(tiled->vae_decode(batch), plain->vae_decode(batch)));  // one tile: not tiled
  CHECK(rel_err(sliced->vae_decode(batch), plain->vae_decode(batch)) < 1e-5);
  const at::Tensor images = at::rand({2, 3, 64, 64}, gen) * 2 - 1;
  CHECK(rel_err(sliced->vae_encode(images), plain->vae_encode(images)) < 1e-5);
  CHECK_FALSE(load_error("sd1", fixture("tiny-sd1"), {{"vae_tiling", "maybe"}}).empty());
}

TEST_CASE("models: release_part frees the VAE; describe still answers, VAE use and save are refused by name") {
  auto m = load_model("sd1", fixture("tiny-sd1"));
  REQUIRE(SUMI_HAS_FIELD(&m->vt(), sumi_model_vtable, release_part));
  const char* text = nullptr;
  REQUIRE(m->vt().describe(m->self(), &text) == SUMI_OK);
  const std::string before = text;
  CHECK(m->vt().release_part(m->self(), "unet") == SUMI_ERR_INVALID_ARGUMENT);
  CHECK(sumi::host::last_error().find("unknown part 'unet'") != std::string::npos);
  REQUIRE(m->vt().release_part(m->self(), "vae") == SUMI_OK);
  REQUIRE(m->vt().describe(m->self(), &text) == SUMI_OK);
  CHECK(std::string(text) == before);
  at::NoGradGuard no_grad;
  CHECK_THROWS_WITH(m->vae_decode(at::zeros({1, 4, 8, 8})), doctest::Contains("vae_decode: the VAE was released"));
  CHECK_THROWS_WITH(m->vae_encode(at::zeros({1, 3, 64, 64})), doctest::Contains("vae_encode: the VAE was released"));
  const auto file = std::filesystem::temp_directory_path() / "sumi_released_vae.safetensors";
  std::filesystem::remove(file);
  CHECK(m->vt().save(m->self(), file.string().c_str(), nullptr, 1) != SUMI_OK);
  CHECK(sumi::host::last_error().find("save: the VAE was released") != std::string::npos);
  CHECK_FALSE(std::filesystem::exists(file));
  // The rest of the model still computes.
  const auto cond = m->encode_text({"a"}).first;
  CHECK(m->denoise(at::zeros({1, 4, 8, 8}), at::full({1}, 10.0), cond).isfinite().all().item<bool>());
}
