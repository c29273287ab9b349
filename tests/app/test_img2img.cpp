// img2img, inpainting and highres fix on tiny-sd1 at 64x64: the start image is the fixture's
// golden DDIM image. Exact identities where the math gives one (inpainting keeps the original,
// noised to the last step's level, outside the mask, in both DDPM and sigma space), orderings
// where it does not (a low strength stays near the start latents, a high one does not), and the
// CLI's refusals.
#include <doctest/doctest.h>

#include "../common/test_data.h"

#include "../common/plugin_test.h"
#include "app/commands.h"
#include "app/generation.h"
#include "core/error.h"
#include "core/op_bridge.h"
#include "core/tensor_handle.h"
#include "io/safetensors_torch.h"

#include <ATen/CPUGeneratorImpl.h>
#include <ATen/Parallel.h>

namespace {

using sumi::test::fixture;

struct Rig {
  sumi::host::Registry reg;
  std::unique_ptr<sumi::host::Component> model;
  at::Tensor start;  // [1, 3, 64, 64] in [-1, 1]

  Rig() {
    at::set_num_threads(2);
    model = sumi::test::make(SUMI_KIND_MODEL, "sd1", reg, {{"dtype", "fp32"}}, "model");
    model->check(model->vtable<sumi_model_vtable>().load(model->self(), fixture("tiny-sd1.safetensors").c_str()), "load");
    for (auto& [k, t] : sumi::io::load_all(fixture("tiny-sd1.golden.safetensors")))
      if (k == "gen.ddim.image") start = t.to(at::kFloat) * 2 - 1;
    REQUIRE(start.defined());
  }

  std::unique_ptr<sumi::host::Component> sampler(const std::string& name) {
    auto ref = sumi::test::plugins().find(SUMI_KIND_NOISE_SCHEDULER, name);
    auto cfg = sumi::app::scheduler_config_of(fixture("tiny-sd1"), *ref.component);
    return std::make_unique<sumi::host::Component>(ref, "sched_" + name, reg, sumi::host::make_config(*ref.component, cfg));
  }

  at::Tensor encode(const at::Tensor& img) {
    sumi_tensor in = sumi::host::make_handle(img), out = nullptr;
    model->check(model->vtable<sumi_model_vtable>().vae_encode(model->self(), in, 0, &out), "vae_encode");
    at::Tensor r = sumi::host::unwrap(out).to(at::kFloat);
    sumi::host::release_handle(in);
    sumi::host::release_handle(out);
    return r;
  }
};

sumi::app::ImageRequest request(const at::Tensor& start, double strength) {
  sumi::app::ImageRequest r;
  r.prompt = "a photo of a dog";
  r.width = r.height = 64;
  r.steps = 10;
  r.seed = 7;
  r.init_image = start;
  r.strength = strength;
  return r;
}

double mean_abs(const at::Tensor& a, const at::Tensor& b) { return (a - b).abs().mean().item<double>(); }

}  // namespace

TEST_CASE("img2img: a low strength stays near the start image, a high one moves away") {
  Rig rig;
  // Compared in latent space: the tiny fixture VAE is random, so its decoded images of any two
  // latents differ about equally; the latents show the distance the sampler travelled.
  const at::Tensor x0 = rig.encode(rig.start);
  const double scale = x0.abs().mean().item<double>();
  for (const char* s : {"ddim", "euler", "dpmsolver++"}) {
    CAPTURE(s);
    auto sched = rig.sampler(s);
    sumi::app::Generator gen(*rig.model, *sched);
    const double low = mean_abs(gen.run(request(rig.start, 0.2), false).latents, x0);
    const double high = mean_abs(gen.run(request(rig.start, 1.0), false).latents, x0);
    sumi::app::ImageRequest t2i = request(rig.start, 1.0);
    t2i.init_image = at::Tensor();
    const double txt = mean_abs(gen.run(t2i, false).latents, x0);
    MESSAGE(s, ": low ", low, " high ", high, " txt2img ", txt, " |x0| ", scale);
    CHECK(low < 0.1 * high);  // the random tiny UNet moves far; 2 of 10 steps move little
    CHECK(low < high);
    CHECK(low < txt);
  }
}

TEST_CASE("img2img: strength bounds, and latents in place of the image") {
  Rig rig;
  auto sched = rig.sampler("ddim");
  sumi::app::Generator gen(*rig.model, *sched);
  // 10 steps at strength 0.05: int(0.5) = 0 steps left to run.
  try {
    gen.run(request(rig.start, 0.05), false);
    FAIL("expected an error");
  } catch (const sumi::host::UserError& e) {
    CHECK(std::string(e.what()).find("no sampling step") != std::string::npos);
  }
  CHECK_THROWS_AS(gen.run(request(rig.start, 1.5), false), sumi::host::UserError);
  CHECK_THROWS_AS(gen.run(request(rig.start, 0.0), false), sumi::host::UserError);
  // Precomputed latents give the same result as the image they came from.
  sumi::app::ImageRequest a = request(rig.start, 0.5), b = a;
  b.init_image = at::Tensor();
  b.init_latents = rig.encode(rig.start);
  CHECK(mean_abs(gen.run(a, false).latents, gen.run(b, false).latents) < 1e-6);
}

TEST_CASE("inpainting keeps the unmasked region and repaints the masked one") {
  Rig rig;
  const at::Tensor x0 = rig.encode(rig.start);
  at::Tensor mask = at::zeros({1, 1, 64, 64});
  mask.slice(3, 32, 64).fill_(1);  // right half repaints
  auto gen_cpu = at::make_generator<at::CPUGeneratorImpl>(7);
  const at::Tensor noise = at::randn({1, 4, 8, 8}, gen_cpu, at::TensorOptions().dtype(at::kFloat));
  for (const char* s : {"ddim", "euler"}) {
    CAPTURE(s);
    auto sched = rig.sampler(s);
    sumi::app::Generator gen(*rig.model, *sched);
    sumi::app::ImageRequest r = request(rig.start, 0.8);
    r.mask = mask;
    const auto out = gen.run(r, false);
    // Outside the mask the latents are the original noised to the last step's timestep.
    const auto& svt = sched->vtable<sumi_noise_scheduler_vtable>();
    sumi_tensor ts = nullptr, sg = nullptr, ac = nullptr;
    sched->check(svt.timesteps(sched->self(), &ts), "timesteps");
    sched->check(svt.sigmas(sched->self(), &sg), "sigmas");
    sched->check(svt.alphas_cumprod(sched->self(), &ac), "alphas_cumprod");
    const at::Tensor timesteps = sumi::host::unwrap(ts).to(at::kDouble), sigmas = sumi::host::unwrap(sg).to(at::kDouble),
                     alphas = sumi::host::unwrap(ac).to(at::kDouble);
    const int64_t last = timesteps.numel() - 1;
    at::Tensor want;
    if (std::string(s) == "euler") {
      want = x0 + noise * sigmas[last].item<double>();
    } else {
      const double a = alphas[static_cast<int64_t>(std::llround(timesteps[last].item<double>()))].item<double>();
      want = x0 * std::sqrt(a) + noise * std::sqrt(1 - a);
    }
    for (auto h : {ts, sg, ac}) sumi::host::release_handle(h);
    CHECK((out.latents.slice(3, 0, 4) - want.slice(3, 0, 4)).abs().max().item<double>() < 1e-4);
    // The repainted half moved away from the original (in latents: the tiny fixture VAE is
    // random, so decoded pixels do not separate the halves).
    const double kept = mean_abs(out.latents.slice(3, 0, 4), x0.slice(3, 0, 4));
    const double repainted = mean_abs(out.latents.slice(3, 4, 8), x0.slice(3, 4, 8));
    MESSAGE(s, ": kept ", kept, " repainted ", repainted);
    CHECK(repainted > 2 * kept);
  }
}

TEST_CASE("highres fix: a smaller first pass, the requested size out") {
  Rig rig;
  auto sched = rig.sampler("euler");
  sumi::app::Generator gen(*rig.model, *sched);
  for (bool latent : {false, true}) {
    CAPTURE(latent);
    sumi::app::ImageRequest r = request(rig.start, 0.6);
    r.init_image = at::Tensor();
    sumi::app::HighresFix h;
    h.scale = 0.5;
    h.steps = 4;
    h.latents_upscaling = latent;
    sumi::app::ImageResult first;
    const auto out = gen.run_highres(r, h, false, &first);
    CHECK(first.image.sizes() == at::IntArrayRef({1, 3, 32, 32}));
    CHECK(out.image.sizes() == at::IntArrayRef({1, 3, 64, 64}));
    CHECK(out.latents.sizes() == at::IntArrayRef({1, 4, 8, 8}));
    CHECK(out.image.isfinite().all().item<bool>());
    // The second pass refines the upscaled first one rather than starting over.
    const at::Tensor up = at::upsample_bilinear2d(first.latents, {8, 8}, false);
    sumi::app::ImageRequest t2i = r;
    const double to_first = mean_abs(out.latents, up);
    const double fresh = mean_abs(gen.run(t2i, false).latents, up);
    MESSAGE("latent ", latent, ": to first ", to_first, " fresh ", fresh);
    CHECK(to_first < fresh);
  }
  sumi::app::HighresFix bad;
  bad.scale = 1.5;
  CHECK_THROWS_AS(gen.run_highres(request(rig.start, 0.6), bad, false), sumi::host::UserError);
}

namespace {
std::string refusal(const std::vector<std::string>& args) {
  try {
    sumi::app::cmd_generate(args);
  } catch (const sumi::host::UserError& e) {
    return e.what();
  }
  return "(no error)";
}
}  // namespace

TEST_CASE("sumi generate refuses bad img2img flags by name") {
  const std::string ckpt = fixture("tiny-sd1.safetensors");
  const std::string missing = std::string(SUMI_BUILD_DIR) + "/no-such-start.png";
  std::string m = refusal({"--ckpt", ckpt, "--prompt", "x", "--image_path", missing});
  CHECK(m.find("no-such-start.png") != std::string::npos);
  CHECK(m.find("--image_path") != std::string::npos);
  for (const char* s : {"0", "1.5", "-0.2"}) {
    m = refusal({"--ckpt", ckpt, "--prompt", "x", "--image_path", fixture("tiny-sd1.safetensors"), "--strength", s});
    CHECK(m.find("--strength must be in (0, 1]") != std::string::npos);
  }
  m = refusal({"--ckpt", ckpt, "--prompt", "x", "--mask_path", missing});
  CHECK(m.find("--mask_path needs --image_path") != std::string::npos);
  m = refusal({"--ckpt", ckpt, "--prompt", "x", "--highres_fix_scale", "2"});
  CHECK(m.find("--highres_fix_scale must be in (0, 1)") != std::string::npos);
  m = refusal({"--ckpt", ckpt, "--prompt", "x", "--highres_fix_steps", "5"});
  CHECK(m.find("need --highres_fix_scale") != std::string::npos);
  m = refusal({"--ckpt", ckpt, "--prompt", "x", "--highres_fix_save_1st"});
  CHECK(m.find("not supported yet") != std::string::npos);
}
