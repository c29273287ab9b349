// img2img, inpainting and highres fix on tiny-sd1 at 64x64: the start image is the fixture's
// golden DDIM image. The Generator against gen_img's steps written out literally
// (gen_img_reference.h) for single images and batches; exact identities where the math gives
// one (inpainting keeps the original, noised to the last step's level, outside the mask, in
// both DDPM and sigma space), orderings where it does not (a low strength stays near the start
// latents, a high one does not), and the CLI's refusals.
#include <doctest/doctest.h>

#include "../common/test_data.h"
#include "gen_img_reference.h"

#include "../common/plugin_test.h"
#include "app/commands.h"
#include "app/generation.h"
#include "core/error.h"
#include "core/op_bridge.h"
#include "core/tensor_handle.h"
#include "sumi/io/safetensors_torch.h"

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
    auto cfg = sumi::app::scheduler_config_of(*model, *ref.component);
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

// gen_img's start latents (a posterior sample) and img2img noise for `r`, alone in its batch.
sumi::test::GenImgOut gen_img_start(Rig& rig, sumi::host::Component& sched, const sumi::app::ImageRequest& r) {
  sumi::test::GenImgImage im{r.prompt, r.negative_prompt, r.seed, r.init_image, r.mask};
  return sumi::test::gen_img_img2img(*rig.model, sched, {im}, r.steps, r.strength, r.scale);
}

double max_diff(const at::Tensor& a, const at::Tensor& b) { return (a - b).abs().max().item<double>(); }

}  // namespace

TEST_CASE("img2img: a low strength stays near the start image, a high one moves away") {
  Rig rig;
  // Compared in latent space: the tiny fixture VAE is random, so its decoded images of any two
  // latents differ about equally; the latents show the distance the sampler travelled. The start
  // latents are gen_img's posterior sample (the same for both strengths: same seed and steps).
  for (const char* s : {"ddim", "euler", "dpmsolver++"}) {
    CAPTURE(s);
    auto sched = rig.sampler(s);
    const at::Tensor x0 = gen_img_start(rig, *sched, request(rig.start, 0.2)).init_latents;
    const double scale = x0.abs().mean().item<double>();
    sumi::app::Generator gen(*rig.model, *sched);
    const double low = mean_abs(gen.run(request(rig.start, 0.2), false).latents, x0);
    const double high = mean_abs(gen.run(request(rig.start, 1.0), false).latents, x0);
    sumi::app::ImageRequest t2i = request(rig.start, 1.0);
    t2i.init_image = at::Tensor();
    const double txt = mean_abs(gen.run(t2i, false).latents, x0);
    MESSAGE(s, ": low ", low, " high ", high, " txt2img ", txt, " |x0| ", scale);
    // The random tiny UNet moves far; 2 of 10 steps move little (from one noise level above the
    // first step's, as gen_img noises).
    CHECK(low < 0.2 * high);
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
  // Precomputed latents give the same result as the image they came from (gen_img's sample).
  sumi::app::ImageRequest a = request(rig.start, 0.5), b = a;
  b.init_image = at::Tensor();
  b.init_latents = gen_img_start(rig, *sched, a).init_latents;
  CHECK(mean_abs(gen.run(a, false).latents, gen.run(b, false).latents) < 1e-6);
}

TEST_CASE("inpainting keeps the unmasked region and repaints the masked one") {
  Rig rig;
  at::Tensor mask = at::zeros({1, 1, 64, 64});
  mask.slice(3, 32, 64).fill_(1);  // right half repaints
  for (const char* s : {"ddim", "euler"}) {
    CAPTURE(s);
    auto sched = rig.sampler(s);
    sumi::app::Generator gen(*rig.model, *sched);
    sumi::app::ImageRequest r = request(rig.start, 0.8);
    r.mask = mask;
    // gen_img's start latents and img2img noise (the draw after the start and step noises).
    const auto ref = gen_img_start(rig, *sched, r);
    const at::Tensor x0 = ref.init_latents, noise = ref.i2i_noise;
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

TEST_CASE("img2img follows gen_img: its draw order, VAE posterior sample, timesteps and noises") {
  Rig rig;
  const at::Tensor other = rig.start.flip(3);
  for (const char* s : {"ddim", "euler", "euler_a"}) {
    auto sched = rig.sampler(s);
    // 4 steps: strength 0.75 is capped (int(3) + 1 = 4: noised to timesteps[0], 3 steps from
    // index 1), 0.5 is not (noised to timesteps[1], 2 steps from index 2).
    for (double strength : {0.75, 0.5}) {
      // Alone; two images sharing one start image (gen_img encodes it once, one draw); two start
      // images (one [2, ...] draw from the second image's stream), also encoded one at a time.
      struct Case {
        const char* what;
        std::vector<sumi::test::GenImgImage> batch;
        int64_t vae_batch_size;
      };
      const std::vector<Case> cases = {
          {"single", {{"a photo of a dog", "", 7, rig.start, {}}}, 0},
          {"same image", {{"a photo of a dog", "", 7, rig.start, {}}, {"an owl", "blurry", 1234, rig.start, {}}}, 0},
          {"two images", {{"a photo of a dog", "", 7, rig.start, {}}, {"an owl", "blurry", 1234, other, {}}}, 0},
          {"two images, vae 1", {{"a photo of a dog", "", 7, rig.start, {}}, {"an owl", "blurry", 1234, other, {}}}, 1},
      };
      for (const auto& c : cases) {
        CAPTURE(s);
        CAPTURE(strength);
        CAPTURE(c.what);
        std::vector<sumi::app::ImageRequest> rs;
        for (const auto& im : c.batch) {
          sumi::app::ImageRequest r = request(im.image, strength);
          r.steps = 4;
          r.prompt = im.prompt;
          r.negative_prompt = im.negative_prompt;
          r.seed = im.seed;
          rs.push_back(r);
        }
        const auto want = sumi::test::gen_img_img2img(*rig.model, *sched, c.batch, 4, strength, rs[0].scale, 1, c.vae_batch_size);
        sumi::app::Generator gen(*rig.model, *sched, c.vae_batch_size);
        const auto got = gen.run_batch(rs, false);
        for (size_t k = 0; k < rs.size(); ++k) {
          CAPTURE(k);
          CHECK(max_diff(got[k].latents, want.latents.narrow(0, static_cast<int64_t>(k), 1)) == 0);
        }
      }
    }
  }
}

TEST_CASE("inpainting follows gen_img: the img2img noise blends the kept region at every step") {
  Rig rig;
  at::Tensor mask = at::zeros({1, 1, 64, 64});
  mask.slice(3, 32, 64).fill_(1);
  for (const char* s : {"ddim", "euler_a"}) {
    CAPTURE(s);
    auto sched = rig.sampler(s);
    const std::vector<sumi::test::GenImgImage> batch = {{"a photo of a dog", "", 7, rig.start, mask},
                                                        {"an owl", "", 99, rig.start.flip(2), 1 - mask}};
    const auto want = sumi::test::gen_img_img2img(*rig.model, *sched, batch, 4, 0.5, 7.5);
    std::vector<sumi::app::ImageRequest> rs;
    for (const auto& im : batch) {
      sumi::app::ImageRequest r = request(im.image, 0.5);
      r.steps = 4;
      r.prompt = im.prompt;
      r.seed = im.seed;
      r.mask = im.mask;
      rs.push_back(r);
    }
    sumi::app::Generator gen(*rig.model, *sched);
    const auto got = gen.run_batch(rs, false);
    for (size_t k = 0; k < rs.size(); ++k)
      CHECK(max_diff(got[k].latents, want.latents.narrow(0, static_cast<int64_t>(k), 1)) == 0);
    // A batch is not its single runs here, as in gen_img: the posterior sample of image 0 comes
    // from the last image's stream.
    CHECK(max_diff(got[0].latents, gen.run(rs[0], false).latents) > 1e-3);
  }
}

TEST_CASE("the model's posterior sample is mean + std * a draw from torch's global RNG; the Generator puts it back") {
  Rig rig;
  const at::Tensor mean = rig.encode(rig.start);
  auto g1 = at::make_generator<at::CPUGeneratorImpl>(5), g2 = at::make_generator<at::CPUGeneratorImpl>(6);
  const at::Tensor s1 = sumi::test::with_global_rng(g1, [&] { return sumi::test::vae_sample(*rig.model, rig.start); });
  const at::Tensor s2 = sumi::test::with_global_rng(g2, [&] { return sumi::test::vae_sample(*rig.model, rig.start); });
  const at::Tensor e1 = at::randn({1, 4, 8, 8}, g1.clone(), at::TensorOptions().dtype(at::kFloat));
  // g1 / g2 themselves are untouched (their state was copied): fresh generators draw the noise.
  const at::Tensor n1 = at::randn({1, 4, 8, 8}, at::make_generator<at::CPUGeneratorImpl>(5), at::TensorOptions().dtype(at::kFloat));
  const at::Tensor n2 = at::randn({1, 4, 8, 8}, at::make_generator<at::CPUGeneratorImpl>(6), at::TensorOptions().dtype(at::kFloat));
  CHECK(max_diff(e1, n1) == 0);
  // The scaled std the first draw implies predicts the second draw.
  const at::Tensor std = (s1 - mean) / n1;
  CHECK((std > 0).all().item<bool>());
  CHECK(max_diff(mean + std * n2, s2) < 1e-4 * s2.abs().max().item<double>());
  // Generating leaves the global RNG where it was.
  auto sched = rig.sampler("euler");
  sumi::app::Generator gen(*rig.model, *sched);
  at::Generator global = at::detail::getDefaultCPUGenerator();
  global.set_current_seed(321);
  const at::Tensor before = at::randn({16});
  global.set_current_seed(321);
  sumi::app::ImageRequest r = request(rig.start, 0.5);
  r.steps = 2;
  gen.run(r, false);
  CHECK(max_diff(at::randn({16}), before) == 0);
}

TEST_CASE("highres fix second pass: gen_img's seed + 1, no mask, the 8-bit first image") {
  Rig rig;
  auto sched = rig.sampler("euler");
  sumi::app::Generator gen(*rig.model, *sched);
  sumi::app::ImageRequest r = request(rig.start, 0.5);
  r.steps = 3;
  r.mask = at::zeros({1, 1, 64, 64});
  r.mask.slice(3, 0, 32).fill_(1);
  sumi::app::HighresFix h;
  h.scale = 0.5;
  h.steps = 3;
  sumi::app::ImageResult first;
  const auto out = gen.run_highres(r, h, false, &first);
  sumi::app::ImageRequest b = r;
  b.seed = r.seed + 1;
  b.mask = at::Tensor();
  auto eight = [](const at::Tensor& x) { return sumi::app::to_uint8_hwc(x).permute({2, 0, 1}).unsqueeze(0).to(at::kFloat) / 255 * 2 - 1; };
  b.init_image = eight(at::_upsample_bicubic2d_aa(eight(first.image), {64, 64}, false));
  CHECK(max_diff(out.latents, gen.run(b, false).latents) < 1e-5);
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
