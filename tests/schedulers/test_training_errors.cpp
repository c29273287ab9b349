// Training calls (add_noise, velocity), v-prediction, zero-terminal-SNR rescaling and the error
// messages for bad settings and bad calls.
#include "sched_test.h"

#include <cmath>

using sumi::test::Sched;
using sumi::test::rel_norm;

namespace {
at::Tensor rnd(std::vector<int64_t> shape, int seed) {
  at::manual_seed(seed);
  return at::randn(shape, at::kFloat);
}
// diffusers' SD schedule in float64: betas = linspace(sqrt(0.00085), sqrt(0.012), 1000)^2
at::Tensor sd_alphas_cumprod() {
  return at::cumprod(1 - at::linspace(std::sqrt(0.00085), std::sqrt(0.012), 1000, at::kDouble).pow(2), 0);
}
}  // namespace

TEST_CASE("training: alphas_cumprod, add_noise and velocity follow q(x_t | x_0)") {
  Sched d("ddpm");
  const at::Tensor acp = d.alphas_cumprod();
  CHECK(acp.numel() == 1000);
  CHECK(sumi::test::max_rel(acp, sd_alphas_cumprod()) < 3e-6);  // float32 schedule vs exact
  const at::Tensor x0 = rnd({3, 4, 8, 8}, 1), noise = rnd({3, 4, 8, 8}, 2);
  const at::Tensor ts = at::tensor({0, 500, 999}, at::kLong);
  const at::Tensor a = acp.index_select(0, ts).view({3, 1, 1, 1});
  const at::Tensor noisy = d.add_noise(x0, noise, ts);
  CHECK(bool(noisy.scalar_type() == at::kFloat));
  CHECK(rel_norm(noisy, at::sqrt(a) * x0 + at::sqrt(1 - a) * noise) < 1e-6);
  const at::Tensor vel = d.velocity(x0, noise, ts);
  CHECK(rel_norm(vel, at::sqrt(a) * noise - at::sqrt(1 - a) * x0) < 1e-6);
  // every scheduler shares the training calls
  Sched e("euler_a");
  CHECK(rel_norm(e.add_noise(x0, noise, ts.to(at::kDouble)), noisy) < 1e-7);

  CHECK_THROWS_WITH(d.add_noise(x0, noise, at::tensor({0, 500, 1000}, at::kLong)), doctest::Contains("not an integer in [0, 999]"));
  CHECK_THROWS_WITH(d.add_noise(x0, noise, at::tensor({0.0, 1.5, 2.0}, at::kDouble)), doctest::Contains("1.5"));
  CHECK_THROWS_WITH(d.add_noise(x0, noise, at::tensor({0, 1}, at::kLong)), doctest::Contains("2 timesteps for a batch of 3"));
  CHECK_THROWS_WITH(d.add_noise(x0, rnd({3, 4, 8, 7}, 3), ts), doctest::Contains("shape"));
}

TEST_CASE("zero terminal SNR: sqrt(alphas_cumprod) shifted to 0 and rescaled, v-prediction at t = 999") {
  Sched plain("ddim");
  Sched z("ddim", {{"rescale_betas_zero_snr", "true"}, {"prediction_type", "v_prediction"},
                   {"timestep_spacing", "trailing"}});
  const at::Tensor s0 = at::sqrt(plain.alphas_cumprod()), sz = at::sqrt(z.alphas_cumprod());
  const double first = s0[0].item<double>(), last = s0[-1].item<double>();
  CHECK(sz[-1].item<double>() == 0.0);
  CHECK(((sz - (s0 - last) * first / (first - last)).abs().max().item<double>()) < 2e-6);
  // velocity at the terminal step is -x0; DDIM's first trailing step starts from t = 999
  const at::Tensor x0 = rnd({1, 4, 4, 4}, 4), noise = rnd({1, 4, 4, 4}, 5);
  const at::Tensor t999 = at::tensor({999}, at::kLong);
  CHECK(rel_norm(z.velocity(x0, noise, t999), -x0) < 1e-7);
  CHECK(rel_norm(z.add_noise(x0, noise, t999), noise) < 1e-7);
  z.set_timesteps(10);
  CHECK(z.timesteps()[0].item<double>() == 999.0);
  CHECK(z.timesteps()[9].item<double>() == 99.0);
  // pure noise x = eps with v = -x0: x0_pred = -v, eps_pred = x; DDIM lands at acp[899]
  const at::Tensor x = noise.to(at::kDouble), v = -x0.to(at::kDouble);
  const double ap = z.alphas_cumprod()[899].item<double>();
  CHECK(rel_norm(z.step(v, 0, x), std::sqrt(ap) * x0.to(at::kDouble) + std::sqrt(1 - ap) * x) < 1e-10);
  // the sigma samplers floor alphas_cumprod so the first sigma stays finite
  Sched ze("euler", {{"rescale_betas_zero_snr", "true"}, {"prediction_type", "v_prediction"},
                     {"timestep_spacing", "trailing"}});
  ze.set_timesteps(10);
  CHECK(std::isfinite(ze.init_noise_sigma()));
}

TEST_CASE("v-prediction: one step of Euler, DDIM and DPM++ against the conversions to x0") {
  const at::Tensor x = rnd({1, 4, 4, 4}, 6).to(at::kDouble), v = rnd({1, 4, 4, 4}, 7).to(at::kDouble);
  {
    Sched e("euler", {{"prediction_type", "v_prediction"}});
    e.set_timesteps(5);
    const at::Tensor s = e.sigmas();
    const double s0 = s[0].item<double>(), s1 = s[1].item<double>();
    // with x = x0 + sigma eps and the model fed x / sqrt(sigma^2 + 1): x0 = x/(s^2+1) - v s/sqrt(s^2+1)
    const at::Tensor x0 = x / (s0 * s0 + 1) - v * s0 / std::sqrt(s0 * s0 + 1);
    CHECK(rel_norm(e.step(v, 0, x), x + (x - x0) / s0 * (s1 - s0)) < 1e-12);
  }
  {
    Sched d("ddim", {{"prediction_type", "v_prediction"}});
    d.set_timesteps(5);
    const at::Tensor acp = d.alphas_cumprod();
    const double a = acp[801].item<double>(), ap = acp[601].item<double>();
    const at::Tensor x0 = std::sqrt(a) * x - std::sqrt(1 - a) * v, eps = std::sqrt(a) * v + std::sqrt(1 - a) * x;
    CHECK(rel_norm(d.step(v, 0, x), std::sqrt(ap) * x0 + std::sqrt(1 - ap) * eps) < 1e-12);
  }
  {
    Sched d("dpmsolver++", {{"prediction_type", "v_prediction"}});
    d.set_timesteps(5);
    const at::Tensor acp = d.alphas_cumprod(), ts = d.timesteps();
    const auto t = static_cast<int64_t>(ts[0].item<double>()), tn = static_cast<int64_t>(ts[1].item<double>());
    const double a = acp[t].item<double>(), an = acp[tn].item<double>();
    const at::Tensor x0 = std::sqrt(a) * x - std::sqrt(1 - a) * v;
    // first order DPM-Solver++ is DDIM: x_tn = sqrt(an) x0 + sqrt(1 - an) eps_hat
    const at::Tensor eps = (x - std::sqrt(a) * x0) / std::sqrt(1 - a);
    CHECK(rel_norm(d.step(v, 0, x), std::sqrt(an) * x0 + std::sqrt(1 - an) * eps) < 1e-10);
  }
}

TEST_CASE("settings and calls that are refused name the problem") {
  sumi::host::Registry reg;
  auto make = [&](const char* name, std::map<std::string, std::string> cfg) {
    return sumi::test::make(SUMI_KIND_NOISE_SCHEDULER, name, reg, cfg);
  };
  CHECK_THROWS_WITH(make("euler", {{"prediction_type", "sample"}}), doctest::Contains("prediction_type must be \"epsilon\" or \"v_prediction\""));
  CHECK_THROWS_WITH(make("ddim", {{"timestep_spacing", "uniform"}}), doctest::Contains("timestep_spacing must be"));
  CHECK_THROWS_WITH(make("ddpm", {{"beta_schedule", "cosine"}}), doctest::Contains("beta_schedule must be"));
  CHECK_THROWS_WITH(make("dpmsolver++", {{"solver_order", "4"}}), doctest::Contains("solver_order must be 1, 2 or 3"));
  CHECK_THROWS_WITH(make("dpmsingle", {{"algorithm_type", "sde-dpmsolver++"}}), doctest::Contains("algorithm_type"));
  CHECK_THROWS_WITH(make("lms", {{"beta_start", "0.02"}}), doctest::Contains("beta_start <= beta_end"));
  CHECK_THROWS_WITH(make("ddim", {{"eta", "-1"}}), doctest::Contains("eta must be in [0, 1]"));
  CHECK_THROWS_WITH(make("ddim", {{"eta", "1.5"}}), doctest::Contains("got 1.5"));
  CHECK_THROWS(make("euler", {{"eta", "0.5"}}));  // not in euler's schema

  const at::Tensor x = rnd({1, 4, 4, 4}, 8);
  Sched e("euler_a");
  CHECK_THROWS_WITH(e.step(x, 0, x, x), doctest::Contains("set_timesteps must be called"));
  e.set_timesteps(10);
  CHECK_THROWS_WITH(e.step(x, 0, x), doctest::Contains("`noise` is NULL"));
  CHECK_THROWS_WITH(e.step(x, 10, x, x), doctest::Contains("step_index 10 is outside"));
  CHECK_THROWS_WITH(e.step(rnd({1, 4, 4, 5}, 9), 0, x, x), doctest::Contains("model_output has shape [1,4,4,5]"));
  for (const char* name : {"dpm_2_a", "k_dpm_2_a", "ddpm"}) {
    CAPTURE(name);
    Sched a(name);
    a.set_timesteps(4);
    CHECK_THROWS_WITH(a.step(x, 0, x), doctest::Contains("ancestral"));
  }
  Sched ddim_eta("ddim", {{"eta", "1"}});
  ddim_eta.set_timesteps(4);
  CHECK_THROWS_WITH(ddim_eta.step(x, 0, x), doctest::Contains("`noise` is NULL"));

  Sched m("dpmsolver++");
  m.set_timesteps(10);
  m.step(x, 0, x);
  CHECK_THROWS_WITH(m.step(x, 2, x), doctest::Contains("must be stepped in order: expected step_index 1"));
  CHECK_NOTHROW(m.step(x, 0, x));  // 0 restarts

  Sched d("ddpm");
  CHECK_THROWS_WITH(d.set_timesteps(1000), doctest::Contains("give timestep 1000, outside [0, 999]"));
  CHECK_THROWS_WITH(d.set_timesteps(0), doctest::Contains("num_inference_steps must be in [1, 1000]"));
  Sched d0("ddpm", {{"steps_offset", "0"}});
  CHECK_NOTHROW(d0.set_timesteps(1000));
}
