// Why two golden images are left out of tests/app/test_generation.cpp, proven on the real models.
//
// tiny-sdxl + DDIM (the golden took DDIMScheduler's class defaults, clip_sample and
// set_alpha_to_one, over SDXL's Euler config) and tiny-sd2v + DPM++ 2M Karras reproduce every
// single golden step: started from the golden's own latents before a step, the plugin lands on
// the golden's latents after it within float32 UNet rounding. Run free, the trajectories of these
// two runs are ill-conditioned: with clipping, DDIM's update is driven by the UNet output alone,
// and this random tiny UNet amplifies input differences several-fold per step; DPM++ 2M on
// tiny-sd2v crosses a point (t = 523) where the UNet turns a 1e-7 input change into ~1e-4. A
// one-ulp change of the initial noise then moves the 8-bit image by far more than 2/255, so no
// float32 implementation that is not bit-identical to the reference's PyTorch run can meet the
// 2/255 bound there. The same ulp leaves the well-conditioned runs (sd1 DPM++) within 1/255.
#include "../common/test_data.h"
#include "sched_test.h"

#include "app/generation.h"
#include "core/op_bridge.h"

#include <ATen/Parallel.h>

#include <tuple>

using sumi::test::Sched;
using sumi::test::rel_norm;

namespace {

using sumi::test::fixture;

struct Handle {
  sumi_tensor h = nullptr;
  Handle() = default;
  explicit Handle(const at::Tensor& t) : h(t.defined() ? sumi::host::make_handle(t) : nullptr) {}
  ~Handle() { sumi::host::release_handle(h); }
  Handle(const Handle&) = delete;
  Handle& operator=(const Handle&) = delete;
  at::Tensor get() const { return h ? sumi::host::unwrap(h) : at::Tensor(); }
};

// A fixture model with the golden's conditioning: "a photo of a cat", empty negative (zeros for SDXL), CFG 7.5.
struct Model {
  sumi::host::Registry reg;
  std::unique_ptr<sumi::host::Component> c;
  at::Tensor context, pooled, added;

  Model(const std::string& name, const std::string& family) {
    c = sumi::test::make(SUMI_KIND_MODEL, family, reg, {{"dtype", "fp32"}}, "model");
    const std::string path = fixture(name);
    c->check(vt().load(c->self(), path.c_str()), "load");
    Handle cond, pool;
    const char* prompt = "a photo of a cat";
    c->check(vt().encode_text(c->self(), &prompt, 1, &cond.h, &pool.h), "encode_text");
    at::Tensor uncond, unpooled;
    if (family == "sdxl") {
      uncond = at::zeros_like(cond.get());
      unpooled = at::zeros_like(pool.get());
      pooled = at::cat({unpooled, pool.get()});
      added = at::tensor({64.0, 64.0, 0.0, 0.0, 64.0, 64.0}, at::kFloat).repeat({2, 1});
    } else {
      Handle neg, negpool;
      const char* empty = "";
      c->check(vt().encode_text(c->self(), &empty, 1, &neg.h, &negpool.h), "encode_text");
      uncond = neg.get();
    }
    context = at::cat({uncond, cond.get()});
  }
  const sumi_model_vtable& vt() const { return c->vtable<sumi_model_vtable>(); }

  at::Tensor guided(const at::Tensor& x, double t) {
    Handle hx(at::cat({x, x})), ht(at::full({2}, t, at::kFloat)), hc(context), hp(pooled), ha(added), out;
    c->check(vt().denoise(c->self(), hx.h, ht.h, hc.h, hp.h, ha.h, &out.h), "denoise");
    const auto parts = out.get().chunk(2);
    return parts[0] + 7.5 * (parts[1] - parts[0]);
  }
  at::Tensor image8(const at::Tensor& latents) {
    Handle hl(latents), img;
    c->check(vt().vae_decode(c->self(), hl.h, &img.h), "vae_decode");
    return sumi::app::to_uint8_hwc(img.get()).to(at::kInt);
  }
  // 10 steps from `x` (unit noise); the final latents.
  at::Tensor sample(Sched& s, at::Tensor x) {
    s.set_timesteps(10);
    const at::Tensor ts = s.timesteps();
    x = x * s.init_noise_sigma();
    for (int64_t i = 0; i < ts.numel(); ++i) x = s.step(guided(s.scale(x, i), ts[i].item<double>()), i, x).to(at::kFloat);
    return x;
  }
};

struct Run {
  const char* model;
  const char* family;
  const char* golden;
  const char* sampler;
  std::map<std::string, std::string> config;
};

const Run kSdxlDdim{"tiny-sdxl", "sdxl", "ddim", "ddim", {{"clip_sample", "true"}, {"set_alpha_to_one", "true"}}};
const Run kSd2vDpm{"tiny-sd2v", "sd2", "dpmpp2m_karras", "dpmsolver++", {{"use_karras_sigmas", "true"}, {"prediction_type", "v_prediction"}}};
const Run kSd1Dpm{"tiny-sd1", "sd1", "dpmpp2m_karras", "dpmsolver++", {{"use_karras_sigmas", "true"}}};

int64_t max_diff(const at::Tensor& a, const at::Tensor& b) { return (a - b).abs().max().item<int64_t>(); }

}  // namespace

TEST_CASE("excluded goldens: every step from the golden's previous latents lands on the golden's next") {
  at::set_num_threads(2);
  at::NoGradGuard no_grad;
  for (const auto& [run, bound] : {std::make_tuple(kSdxlDdim, 5e-5), std::make_tuple(kSd2vDpm, 5e-4)}) {
    CAPTURE(run.model);
    Model m(run.model, run.family);
    auto g = sumi::test::goldens(run.model);
    const at::Tensor lat = g.at(std::string("gen.") + run.golden + ".step_latents").to(at::kFloat);
    Sched s(run.sampler, run.config);
    s.set_timesteps(10);
    const at::Tensor ts = s.timesteps();
    at::Tensor x = g.at("gen.init_latents").to(at::kFloat);
    double worst = 0;
    for (int64_t i = 0; i < 10; ++i) {
      worst = std::max(worst, rel_norm(s.step(m.guided(x, ts[i].item<double>()), i, x), lat[i].unsqueeze(0).to(at::kDouble)));
      x = lat[i].unsqueeze(0);
    }
    CHECK(worst < bound);
    if (std::string(run.sampler) == "ddim") {
      // and the golden did clip: without clip_sample the first step is far off
      Sched plain("ddim", {{"set_alpha_to_one", "true"}});
      plain.set_timesteps(10);
      const at::Tensor x0 = g.at("gen.init_latents").to(at::kFloat);
      CHECK(rel_norm(plain.step(m.guided(x0, ts[0].item<double>()), 0, x0), lat[0].unsqueeze(0).to(at::kDouble)) > 0.1);
    }
  }
}

TEST_CASE("excluded goldens: one ulp of initial noise moves these images beyond 2/255, not sd1's DPM++") {
  at::set_num_threads(2);
  at::NoGradGuard no_grad;
  for (const auto& [run, ill] : {std::make_pair(kSdxlDdim, true), std::make_pair(kSd2vDpm, true), std::make_pair(kSd1Dpm, false)}) {
    CAPTURE(run.model);
    CAPTURE(run.golden);
    Model m(run.model, run.family);
    auto g = sumi::test::goldens(run.model);
    const at::Tensor noise = g.at("gen.init_latents").to(at::kFloat);
    const at::Tensor nudged = at::nextafter(noise, at::full_like(noise, 1e9));  // +1 ulp everywhere
    Sched a(run.sampler, run.config), b(run.sampler, run.config);
    const at::Tensor ia = m.image8(m.sample(a, noise)), ib = m.image8(m.sample(b, nudged));
    if (ill) CHECK(max_diff(ia, ib) > 2);
    else CHECK(max_diff(ia, ib) <= 1);
  }
}
