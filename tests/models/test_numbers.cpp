// The sd1/sd2/sdxl components against the reference stack's goldens, for every fixture in both
// of its forms (original single file and diffusers folder): conditioning, UNet, VAE.
#include <doctest/doctest.h>

#include "sumi/io/safetensors_torch.h"
#include "models_test_util.h"

using namespace sumi::test;

namespace {

void check_numbers(const std::string& model, const std::string& path) {
  CAPTURE(path);
  auto m = load_model(family_of(model), path);
  const auto prompts = golden_prompts();
  auto g = [&](const std::string& k) { return golden(model, k); };
  at::NoGradGuard no_grad;

  // Conditioning of the six golden prompts and of the generation prompt.
  auto [cond, pooled] = m->encode_text(prompts);
  auto [gen_cond, gen_pooled] = m->encode_text({"a photo of a cat"});
  CHECK(rel_err(gen_cond, g("gen.cond.prompt_embeds")) < 1e-4);
  if (model == "tiny-sdxl") {
    CHECK(rel_err(cond, at::cat({g("te.penultimate"), g("te2.penultimate")}, -1)) < 1e-4);
    REQUIRE(pooled.defined());
    CHECK(rel_err(pooled, g("te2.text_embeds")) < 1e-4);
    CHECK(rel_err(gen_pooled, g("gen.cond.pooled")) < 1e-4);
  } else {
    // SD2: diffusers' last_hidden_state is already the penultimate layer + final norm.
    CHECK(rel_err(cond, g("te.last_hidden_state")) < 1e-4);
    CHECK_FALSE(pooled.defined());
  }

  for (int t : {1, 500, 999}) {
    CAPTURE(t);
    const at::Tensor ts = at::full({2}, t, at::kLong);
    at::Tensor out = model == "tiny-sdxl"
                         ? m->denoise(g("unet.in.sample"), ts, g("unet.in.encoder_hidden_states"), g("unet.in.text_embeds"),
                                      g("unet.in.time_ids"))
                         : m->denoise(g("unet.in.sample"), ts, g("unet.in.encoder_hidden_states"));
    CHECK(rel_err(out, g("unet.out.t" + std::to_string(t))) < 1e-4);
  }

  const double sf = model == "tiny-sdxl" ? 0.13025 : 0.18215;
  CHECK(rel_err(m->vae_encode(g("vae.in.image")), g("vae.enc.mean") * sf) < 1e-4);
  CHECK(rel_err(m->vae_decode(g("vae.in.latent") * sf), g("vae.dec.out")) < 1e-4);
}

}  // namespace

TEST_CASE("models: tiny-sd1 single file and diffusers folder match the goldens") {
  check_numbers("tiny-sd1", fixture("tiny-sd1.safetensors"));
  check_numbers("tiny-sd1", fixture("tiny-sd1"));
}

TEST_CASE("models: tiny-sd2v single file and diffusers folder match the goldens") {
  check_numbers("tiny-sd2v", fixture("tiny-sd2v.safetensors"));
  check_numbers("tiny-sd2v", fixture("tiny-sd2v"));
}

TEST_CASE("models: tiny-sdxl single file and diffusers folder match the goldens") {
  check_numbers("tiny-sdxl", fixture("tiny-sdxl.safetensors"));
  check_numbers("tiny-sdxl", fixture("tiny-sdxl"));
}

TEST_CASE("models: clip_skip 2 is the penultimate layer with the final layer norm") {
  auto m = load_model("sd1", fixture("tiny-sd1.safetensors"), {{"clip_skip", "2"}});
  at::NoGradGuard no_grad;
  CHECK(rel_err(m->encode_text(golden_prompts()).first, golden("tiny-sd1", "te.penultimate_ln")) < 1e-4);
}

TEST_CASE("models: a separate VAE replaces the checkpoint's") {
  // The diffusers VAE file of tiny-sd1 given as `vae` to the single file gives the same decode.
  auto m = load_model("sd1", fixture("tiny-sd1.safetensors"),
                      {{"vae", fixture("tiny-sd1/vae/diffusion_pytorch_model.safetensors")}});
  at::NoGradGuard no_grad;
  CHECK(rel_err(m->vae_decode(golden("tiny-sd1", "vae.in.latent") * 0.18215), golden("tiny-sd1", "vae.dec.out")) < 1e-4);

  // An original-layout VAE file (first_stage_model.* names, LDM's 1x1-conv attention) for SDXL.
  sumi::io::NamedTensors ldm;
  for (auto& [k, t] : sumi::io::load_all(fixture("tiny-sdxl.safetensors")))
    if (k.rfind("first_stage_model.", 0) == 0) ldm.emplace_back(k, t);
  const std::string path = scratch("sdxl-vae.safetensors");
  sumi::io::save_tensors(path, ldm);
  auto xl = load_model("sdxl", fixture("tiny-sdxl"), {{"vae", path}});
  CHECK(rel_err(xl->vae_decode(golden("tiny-sdxl", "vae.in.latent") * 0.13025), golden("tiny-sdxl", "vae.dec.out")) < 1e-4);
  CHECK(rel_err(xl->vae_encode(golden("tiny-sdxl", "vae.in.image")), golden("tiny-sdxl", "vae.enc.mean") * 0.13025) < 1e-4);
  CHECK(load_error("sdxl", fixture("tiny-sdxl"), {{"vae", scratch("none.safetensors")}}).find("none.safetensors") !=
        std::string::npos);
}
