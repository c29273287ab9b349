// Batched generation (gen_img's --batch_size) on tiny-sd1 at 64x64: a batch gives the images its
// requests give one by one (text-to-image with a deterministic and an ancestral sampler, and
// img2img from given latents; from images, gen_img's VAE draw couples a batch:
// test_img2img.cpp); VAE decoding in slices changes nothing; gen_img's seed picking (Python's random).
#include <doctest/doctest.h>

#include "../common/test_data.h"

#include "../common/plugin_test.h"
#include "app/generation.h"
#include "app/py_random.h"
#include "core/typed_plugins.h"
#include "sumi/io/safetensors_torch.h"

#include <ATen/CPUGeneratorImpl.h>
#include <ATen/Parallel.h>

#include <algorithm>

namespace {

using sumi::test::fixture;

struct Rig {
  sumi::host::Registry reg;
  std::unique_ptr<sumi::host::Component> model;
  explicit Rig(const std::map<std::string, std::string>& cfg = {{"dtype", "fp32"}}) {
    at::set_num_threads(2);
    model = sumi::test::make(SUMI_KIND_MODEL, "sd1", reg, cfg, "model");
    model->check(model->vtable<sumi_model_vtable>().load(model->self(), fixture("tiny-sd1.safetensors").c_str()), "load");
  }
  std::unique_ptr<sumi::host::Component> sampler(const std::string& name) {
    auto ref = sumi::test::plugins().find(SUMI_KIND_NOISE_SCHEDULER, name);
    auto cfg = sumi::app::scheduler_config_of(*model, *ref.component);
    return std::make_unique<sumi::host::Component>(ref, "sched_" + name, reg, sumi::host::make_config(*ref.component, cfg));
  }
};

sumi::app::ImageRequest request(const std::string& prompt, const std::string& negative, uint64_t seed) {
  sumi::app::ImageRequest r;
  r.prompt = prompt;
  r.negative_prompt = negative;
  r.width = r.height = 64;
  r.steps = 8;
  r.seed = seed;
  return r;
}

// How much a run moves when every guided model output is perturbed by about 1e-6 relative (the
// CFG scale made 1e-6 larger): the trajectory's amplification of per-step rounding, measured on
// this machine, with its thread count. A batch runs the UNet's convolutions with other blockings,
// which changes each step's output by float rounding (~1e-7..1e-6 relative); how far that carries
// depends on the random tiny UNet, the sampler and the CPU, so the bounds below are derived from
// this measurement instead of being fixed from one run on one machine.
struct Conditioning {
  double latents_rel = 0;  // ||perturbed - run|| / ||run||
  int64_t image_levels = 0;  // max 8-bit difference
};

template <class Run>
Conditioning measure(const sumi::app::ImageRequest& r, Run&& run) {
  sumi::app::ImageRequest p = r;
  p.scale = r.scale * (1 + 1e-6);
  const sumi::app::ImageResult a = run(r), b = run(p);
  Conditioning c;
  c.latents_rel = ((b.latents - a.latents).norm() / a.latents.norm()).item<double>();
  c.image_levels = (sumi::app::to_uint8_hwc(a.image).to(at::kInt) - sumi::app::to_uint8_hwc(b.image).to(at::kInt))
                       .abs().max().item<int64_t>();
  return c;
}

// How much more a batch's blocking moves one UNet output than `measure`'s 1e-6 scale change moves
// the guided output, measured at one step of `rs[i]` at `size` pixels on this machine (at least
// 1): the UNet on [uncond..., cond...] of every request against the same two rows alone, and
// the guided output with the scale 1e-6 larger against as given. On CPUs whose convolutions
// block a batch differently (AMD EPYC without AMX) the first is ~10x the second.
double batch_factor(sumi::host::Component& model, const std::vector<sumi::app::ImageRequest>& rs, size_t i, int64_t size) {
  at::NoGradGuard no_grad;
  sumi::host::ModelPlugin m(model);
  const int64_t B = static_cast<int64_t>(rs.size());
  std::vector<std::string> all, one = {rs[i].negative_prompt, rs[i].prompt};
  for (const auto& r : rs) all.push_back(r.negative_prompt);
  for (const auto& r : rs) all.push_back(r.prompt);
  const at::Tensor ctx_all = m.encode_text(all).first, ctx_one = m.encode_text(one).first;
  at::Generator g = at::make_generator<at::CPUGeneratorImpl>(rs[i].seed);
  const at::Tensor x = at::randn({1, 4, size / 8, size / 8}, g, at::TensorOptions().dtype(at::kFloat));
  const auto t = [](int64_t n) { return at::full({n}, 500.0, at::kFloat); };
  const at::Tensor out_all = m.denoise(x.repeat({2 * B, 1, 1, 1}), t(2 * B), ctx_all);
  const at::Tensor out_one = m.denoise(x.repeat({2, 1, 1, 1}), t(2), ctx_one);
  const at::Tensor mine = at::cat({out_all[static_cast<int64_t>(i)], out_all[B + static_cast<int64_t>(i)]}).view_as(out_one);
  const double batch = ((mine - out_one).norm() / out_one.norm()).item<double>();
  const double s = rs[i].scale;
  const at::Tensor u = out_one[0], c = out_one[1], guided = u + s * (c - u);
  const double scale = (1e-6 * s * (c - u).norm() / guided.norm()).item<double>();
  return scale > 0 ? std::max(1.0, batch / scale) : 1.0;
}

// Same image: latents within 100x the measured response to a 1e-6 perturbation, times how much
// more a batch's blocking perturbs a step here (`batch`, batch_factor; at least 1e-4: rounding
// alone, well conditioned), 8-bit pixels within one level, or 5x the measured level change
// where the perturbation itself moves pixels.
void check_same(const sumi::app::ImageResult& got, const sumi::app::ImageResult& want, const Conditioning& c,
                double batch = 1.0) {
  const double rel = ((got.latents - want.latents).norm() / want.latents.norm()).item<double>();
  const double bound = std::max(1e-4, 100 * batch * c.latents_rel);
  CAPTURE(c.latents_rel);
  CAPTURE(batch);
  CHECK(rel < bound);
  const auto a = sumi::app::to_uint8_hwc(got.image).to(at::kInt), b = sumi::app::to_uint8_hwc(want.image).to(at::kInt);
  CHECK((a - b).abs().max().item<int64_t>() <= std::max<int64_t>(1, 5 * c.image_levels));
}

}  // namespace

TEST_CASE("a batch of N gives the images of N single runs") {
  Rig rig;
  const std::vector<sumi::app::ImageRequest> rs = {request("a photo of a cat", "", 31),
                                                   request("a red house by the sea", "blurry", 7),
                                                   request("an owl", "low quality, jpeg", 123456789)};
  // The UNet's batch rounding does not depend on the sampler: measured once per image.
  std::vector<double> bf;
  for (size_t i = 0; i < rs.size(); ++i) bf.push_back(batch_factor(*rig.model, rs, i, 64));
  for (const char* s : {"ddim", "euler_a"}) {
    CAPTURE(s);
    auto sched = rig.sampler(s);
    sumi::app::Generator gen(*rig.model, *sched);
    const auto batch = gen.run_batch(rs, false);
    REQUIRE(batch.size() == rs.size());
    for (size_t i = 0; i < rs.size(); ++i) {
      CAPTURE(i);
      CHECK(batch[i].latents.sizes() == at::IntArrayRef({1, 4, 8, 8}));
      const auto cond = measure(rs[i], [&](const sumi::app::ImageRequest& r) { return gen.run(r, false); });
      check_same(batch[i], gen.run(rs[i], false), cond, bf[i]);
    }
    // The images differ from one another (each its own seed and prompt).
    CHECK((batch[0].latents - batch[1].latents).abs().max().item<double>() > 0.1);
    // Decoding one image at a time gives the same pixels.
    sumi::app::Generator sliced(*rig.model, *sched, 1);
    const auto b1 = sliced.run_batch(rs, false);
    for (size_t i = 0; i < rs.size(); ++i) CHECK((b1[i].image - batch[i].image).abs().max().item<double>() < 1e-5);
  }
}

TEST_CASE("img2img and inpainting from latents batch as their single runs") {
  // Start latents given: no VAE posterior draw (which gen_img takes for a whole batch from the
  // last image's stream), so each image depends on its own seed only.
  Rig rig;
  at::Tensor start;
  for (auto& [k, t] : sumi::io::load_all(fixture("tiny-sd1.golden.safetensors")))
    if (k == "gen.ddim.image") start = t.to(at::kFloat) * 2 - 1;
  REQUIRE(start.defined());
  auto sched = rig.sampler("euler");
  sumi::app::Generator gen(*rig.model, *sched);
  const at::Tensor z = at::randn({1, 4, 8, 8}, at::make_generator<at::CPUGeneratorImpl>(3), at::TensorOptions().dtype(at::kFloat));
  std::vector<sumi::app::ImageRequest> rs = {request("a dog", "", 1), request("a cat", "", 2)};
  rs[0].init_latents = z;
  rs[1].init_latents = z.flip(3);
  for (auto& r : rs) r.strength = 0.6;
  auto single = [&](const sumi::app::ImageRequest& r) { return gen.run(r, false); };
  auto batch = gen.run_batch(rs, false);
  std::vector<double> bf;
  for (size_t i = 0; i < rs.size(); ++i) bf.push_back(batch_factor(*rig.model, rs, i, 64));
  for (size_t i = 0; i < rs.size(); ++i) check_same(batch[i], gen.run(rs[i], false), measure(rs[i], single), bf[i]);
  at::Tensor mask = at::zeros({1, 1, 64, 64});
  mask.slice(3, 32, 64).fill_(1);
  rs[0].mask = mask;
  rs[1].mask = 1 - mask;
  batch = gen.run_batch(rs, false);
  for (size_t i = 0; i < rs.size(); ++i) check_same(batch[i], gen.run(rs[i], false), measure(rs[i], single), bf[i]);
}

TEST_CASE("a batch refuses requests that cannot share a denoising loop") {
  Rig rig;
  auto sched = rig.sampler("ddim");
  sumi::app::Generator gen(*rig.model, *sched);
  auto a = request("x", "", 1), b = request("y", "", 2);
  b.width = 128;
  CHECK_THROWS_WITH_AS(gen.run_batch({a, b}, false), doctest::Contains("size 128x64 vs 64x64"), sumi::host::UserError);
  b = request("y", "", 2);
  b.steps = 3;
  CHECK_THROWS_WITH_AS(gen.run_batch({a, b}, false), doctest::Contains("steps 3 vs 8"), sumi::host::UserError);
}

TEST_CASE("seeds as gen_img picks them: Python's random.seed(n); randint(0, 0x7FFFFFFF)") {
  // Values printed by CPython 3: random.seed(n); [random.randint(0, 0x7FFFFFFF) for _ in range(k)].
  sumi::app::PyRandom a(42);
  for (int64_t want : {478163327, 107420369, 1181241943, 1051802512, 958682846}) CHECK(a.randint31() == want);
  sumi::app::PyRandom b(1234567890123ull);  // two 32-bit words of key
  for (int64_t want : {867419813, 1864296861, 727480867}) CHECK(b.randint31() == want);
  sumi::app::PyRandom c(0);
  for (int64_t want : {1654615998, 1806341205, 173879092}) CHECK(c.randint31() == want);
}

TEST_CASE("highres fix in a batch: each image as alone; the second pass takes seed + 1 as gen_img") {
  Rig rig;
  auto sched = rig.sampler("euler");
  sumi::app::Generator gen(*rig.model, *sched);
  std::vector<sumi::app::ImageRequest> rs = {request("a dog", "", 11), request("a cat", "ugly", 12)};
  for (auto& r : rs) r.strength = 0.5;
  sumi::app::HighresFix h;
  h.scale = 0.5;
  h.steps = 3;
  // Latent upscaling: the decoded-image path runs the random fixture VAE both ways, which turns
  // float-rounding differences of the first pass into percent-level ones.
  h.latents_upscaling = true;
  std::vector<sumi::app::ImageResult> firsts;
  const auto out = gen.run_highres_batch(rs, h, false, &firsts);
  REQUIRE(out.size() == 2);
  for (size_t i = 0; i < rs.size(); ++i) {
    CAPTURE(i);
    sumi::app::ImageResult first;
    const auto whole = measure(rs[i], [&](const sumi::app::ImageRequest& r) { return gen.run_highres(r, h, false); });
    const auto first_pass = measure(rs[i], [&](const sumi::app::ImageRequest& r) {
      sumi::app::ImageResult f;
      gen.run_highres(r, h, false, &f);
      return f;
    });
    // Both passes run batched: the larger of the two sizes' batch factors.
    const double bf = std::max(batch_factor(*rig.model, rs, i, 32), batch_factor(*rig.model, rs, i, 64));
    check_same(out[i], gen.run_highres(rs[i], h, false, &first), whole, bf);
    check_same(firsts[i], first, first_pass, bf);
    // The second pass by hand: img2img of the upscaled first image with seed + 1.
    sumi::app::ImageRequest b = rs[i];
    b.seed = rs[i].seed + 1;
    b.init_latents = at::upsample_bilinear2d(firsts[i].latents, {8, 8}, false);
    check_same(out[i], gen.run(b, false), whole, bf);
  }
}
