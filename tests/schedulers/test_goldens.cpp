// The fixtures' `sched.*` tables and `gen.*` trajectories (diffusers 0.21.2) against the plugin.
//
// The goldens keep the latents after every sampling step but not the model outputs. DDIM's
// update is affine in the model output, so each output is recovered from two consecutive DDIM
// latents; deterministic DDIM and Euler at the same timesteps evaluate the UNet on the same
// inputs (Euler's x / sqrt(sigma^2 + 1) is DDIM's x), so those outputs must also drive the
// plugin's Euler through the golden Euler trajectory — an independent check of both samplers.
// DPM++ 2M Karras is checked by recovering its data predictions from the trajectory with the
// published update (Lu et al. 2022) and replaying them through the plugin.
#include "sched_test.h"

#include <cmath>

using sumi::test::Sched;
using sumi::test::max_rel;
using sumi::test::rel_norm;

namespace {

struct Fixture {
  const char* model;
  const char* prediction;
};
const Fixture kFixtures[] = {{"tiny-sd1", "epsilon"}, {"tiny-sd2v", "v_prediction"}, {"tiny-sdxl", "epsilon"}};

std::map<std::string, std::string> cfg(const Fixture& f, std::map<std::string, std::string> extra = {}) {
  extra["prediction_type"] = f.prediction;
  return extra;
}

}  // namespace

TEST_CASE("sched.*: training tables, DDIM, Euler, Euler-Karras and DPM++ 2M Karras schedules") {
  for (const auto& f : kFixtures) {
    CAPTURE(f.model);
    auto g = sumi::test::goldens(f.model);

    Sched ddim("ddim", cfg(f));
    const at::Tensor acp = ddim.alphas_cumprod();
    REQUIRE(bool(acp.scalar_type() == at::kDouble));
    // bit-exact: the plugin redoes torch's float32 arithmetic
    CHECK(at::equal(acp, g.at("sched.alphas_cumprod")));
    // betas: torch's float32 cumprod of the golden ones is our table, and ours divide back to them
    const at::Tensor gb = g.at("sched.betas");
    CHECK(at::equal(at::cumprod(1 - gb.to(at::kFloat), 0).to(at::kDouble), acp));
    const at::Tensor our_b = 1 - acp.slice(0, 1) / acp.slice(0, 0, -1);
    CHECK((our_b - gb.slice(0, 1)).abs().max().item<double>() < 3e-7);
    CHECK(std::abs(1 - acp[0].item<double>() - gb[0].item<double>()) < 5e-8);

    ddim.set_timesteps(20);
    CHECK(at::equal(ddim.timesteps(), g.at("sched.ddim20.timesteps")));
    CHECK(ddim.sigmas().numel() == 0);
    ddim.set_timesteps(10);
    CHECK(at::equal(ddim.timesteps(), g.at("gen.ddim.timesteps")));

    Sched euler("euler", cfg(f, {{"timestep_spacing", "leading"}}));
    euler.set_timesteps(20);
    CHECK(at::equal(euler.timesteps(), g.at("sched.euler20.timesteps")));
    CHECK(max_rel(euler.sigmas(), g.at("sched.euler20.sigmas"), 1e-3) < 1e-7);
    CHECK(euler.init_noise_sigma() == doctest::Approx(g.at("sched.euler20.init_noise_sigma").item<double>()).epsilon(2e-7));
    euler.set_timesteps(10);
    CHECK(at::equal(euler.timesteps(), g.at("gen.euler.timesteps")));
    CHECK(max_rel(euler.sigmas(), g.at("gen.euler.sigmas"), 1e-3) < 1e-7);

    Sched ek("euler", cfg(f, {{"timestep_spacing", "leading"}, {"use_karras_sigmas", "true"}}));
    ek.set_timesteps(20);
    CHECK(max_rel(ek.sigmas(), g.at("sched.euler_karras20.sigmas"), 1e-3) < 1e-7);
    CHECK((ek.timesteps() - g.at("sched.euler_karras20.timesteps")).abs().max().item<double>() < 1e-4);

    Sched dpm("dpmsolver++", cfg(f, {{"use_karras_sigmas", "true"}}));
    for (int n : {20, 10}) {
      dpm.set_timesteps(n);
      const at::Tensor ts = dpm.timesteps();
      CHECK(at::equal(ts, g.at(n == 20 ? "sched.dpmpp2m_karras20.timesteps" : "gen.dpmpp2m_karras.timesteps")));
      // diffusers exposes the continuous Karras ramp (ascending); the steps use the sigmas of
      // the rounded timesteps, which is what the plugin's sigmas() reports (plus timestep 0).
      const at::Tensor want = g.at(n == 20 ? "sched.dpmpp2m_karras20.sigmas" : "gen.dpmpp2m_karras.sigmas");
      const double smin = std::sqrt((1 - acp[0].item<double>()) / acp[0].item<double>());
      const double smax = std::sqrt((1 - acp[-1].item<double>()) / acp[-1].item<double>());
      const at::Tensor ramp = at::linspace(0, 1, n, at::kDouble);
      const at::Tensor karras = at::pow(std::pow(smin, 1 / 7.0) + ramp * (std::pow(smax, 1 / 7.0) - std::pow(smin, 1 / 7.0)), 7);
      CHECK(max_rel(karras, want) < 1e-7);
      const at::Tensor at_ts = acp.index_select(0, at::cat({ts, at::zeros({1}, at::kDouble)}).to(at::kLong));
      CHECK(max_rel(dpm.sigmas(), at::sqrt((1 - at_ts) / at_ts)) < 1e-12);
    }
  }
}

TEST_CASE("gen.*: DDIM outputs recovered from the golden trajectory drive the golden Euler trajectory") {
  // tiny-sdxl's scheduler config is SDXL base 1.0's own (clip_sample and set_alpha_to_one false),
  // so its DDIM run is as invertible as the others'.
  for (const auto& f : kFixtures) {
    CAPTURE(f.model);
    auto g = sumi::test::goldens(f.model);
    const bool v = std::string(f.prediction) == "v_prediction";
    Sched ddim("ddim", cfg(f));
    Sched euler("euler", cfg(f, {{"timestep_spacing", "leading"}}));
    ddim.set_timesteps(10);
    euler.set_timesteps(10);
    const at::Tensor acp = ddim.alphas_cumprod();
    const at::Tensor ts = ddim.timesteps();
    const at::Tensor dl = g.at("gen.ddim.step_latents"), el = g.at("gen.euler.step_latents");
    at::Tensor x = g.at("gen.init_latents");
    at::Tensor xe = x * euler.init_noise_sigma();
    double worst_ddim = 0, worst_euler = 0, worst_input = 0;
    for (int64_t i = 0; i < 10; ++i) {
      CAPTURE(i);
      const auto t = static_cast<int64_t>(ts[i].item<double>());
      const int64_t prev = t - 100;
      const double a = acp[t].item<double>(), ap = acp[prev >= 0 ? prev : 0].item<double>();
      // x_prev = cx * x + cm * model_output (DDIM, eta 0), solved for the model output
      const double cx = v ? std::sqrt(ap * a) + std::sqrt((1 - ap) * (1 - a)) : std::sqrt(ap / a);
      const double cm = v ? std::sqrt((1 - ap) * a) - std::sqrt(ap * (1 - a))
                          : std::sqrt(1 - ap) - std::sqrt(ap) * std::sqrt(1 - a) / std::sqrt(a);
      const at::Tensor next = dl[i].unsqueeze(0);
      const at::Tensor mo = (next - cx * x) / cm;
      worst_ddim = std::max(worst_ddim, rel_norm(ddim.step(mo, i, x), next));
      // Euler sees the same UNet input...
      worst_input = std::max(worst_input, rel_norm(euler.scale(xe, i), x));
      // ...so the same output moves it along the golden Euler path.
      const at::Tensor enext = el[i].unsqueeze(0);
      worst_euler = std::max(worst_euler, rel_norm(euler.step(mo, i, xe), enext));
      x = next;
      xe = enext;
    }
    CHECK(worst_ddim < 1e-9);
    CHECK(worst_input < 1e-3);
    CHECK(worst_euler < 1e-3);
  }
}

TEST_CASE("gen.*: DPM++ 2M Karras data predictions recovered from the golden trajectory replay it") {
  for (const auto& f : kFixtures) {
    CAPTURE(f.model);
    auto g = sumi::test::goldens(f.model);
    const bool v = std::string(f.prediction) == "v_prediction";
    Sched dpm("dpmsolver++", cfg(f, {{"use_karras_sigmas", "true"}}));
    dpm.set_timesteps(10);
    CHECK(dpm.init_noise_sigma() == 1.0);
    const at::Tensor acp = dpm.alphas_cumprod();
    const at::Tensor ts = dpm.timesteps();
    REQUIRE(ts.numel() == 10);
    auto alpha = [&](int64_t t) { return std::sqrt(acp[t].item<double>()); };
    auto sigma = [&](int64_t t) { return std::sqrt(1 - acp[t].item<double>()); };
    auto lambda = [&](int64_t t) { return std::log(alpha(t) / sigma(t)); };
    const at::Tensor lat = g.at("gen.dpmpp2m_karras.step_latents");
    at::Tensor x = g.at("gen.init_latents"), x0_prev;
    double worst = 0;
    for (int64_t i = 0; i < 10; ++i) {
      CAPTURE(i);
      const auto t = static_cast<int64_t>(ts[i].item<double>());
      const int64_t to = i == 9 ? 0 : static_cast<int64_t>(ts[i + 1].item<double>());
      const double h = lambda(to) - lambda(t);
      const at::Tensor next = lat[i].unsqueeze(0);
      // x_to = sigma_to / sigma_t * x - alpha_to * (e^-h - 1) * D
      const at::Tensor D = (next - sigma(to) / sigma(t) * x) / (-alpha(to) * std::expm1(-h));
      at::Tensor x0 = D;
      if (i > 0 && i < 9) {  // second order: D = x0 + (x0 - x0_prev) / (2 r); first and last steps are first order
        const double r = (lambda(t) - lambda(static_cast<int64_t>(ts[i - 1].item<double>()))) / h;
        x0 = (D + x0_prev / (2 * r)) / (1 + 1 / (2 * r));
      }
      const at::Tensor mo = v ? (alpha(t) * x - x0) / sigma(t) : (x - alpha(t) * x0) / sigma(t);
      worst = std::max(worst, rel_norm(dpm.step(mo, i, x), next));
      x0_prev = x0;
      x = next;
    }
    CHECK(worst < 1e-9);
    CHECK(rel_norm(x, g.at("gen.dpmpp2m_karras.final_latents")) < 1e-7);
  }
}
