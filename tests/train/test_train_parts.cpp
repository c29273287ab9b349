// The pieces of the training loop, each against hand-computed values with a fixed RNG: kohya's
// noise (offset, adaptive offset, random strengths, multires / pyramid noise, input
// perturbation), the loss family (l2 / l1 / Huber with its threshold schedules) and the SNR
// weightings, zero-terminal-SNR betas vs diffusers' rescale_zero_terminal_snr, GradScaler
// semantics, the loss recorder behind loss/average, and the sample-image gating.
#include <doctest/doctest.h>

#include "../common/plugin_test.h"
#include "app/train/loss.h"
#include "app/train/noise.h"
#include "app/train/precision.h"
#include "app/train/sample_images.h"
#include "app/train/train_log.h"
#include "core/op_bridge.h"
#include "core/tensor_handle.h"

#include <ATen/ATen.h>

#include <cmath>
#include <random>

using namespace sumi::app;

namespace {

at::Tensor ddpm_alphas_cumprod(bool zero_snr) {
  sumi::host::Registry reg;
  auto s = sumi::test::make(SUMI_KIND_NOISE_SCHEDULER, "ddpm", reg,
                            {{"rescale_betas_zero_snr", zero_snr ? "true" : "false"}}, "noise_scheduler");
  sumi_tensor h = nullptr;
  s->check(s->vtable<sumi_noise_scheduler_vtable>().alphas_cumprod(s->self(), &h), "alphas_cumprod");
  at::Tensor t = sumi::host::unwrap(h).to(at::kDouble).clone();
  sumi::host::release_handle(h);
  return t;
}

bool close(const at::Tensor& a, const at::Tensor& b, double tol = 1e-6) {
  return at::allclose(a.to(at::kDouble), b.to(at::kDouble), tol, tol);
}

}  // namespace

TEST_CASE("noise offset: fixed, adaptive (|channel mean| added, clamped at 0) and random strength") {
  const at::Tensor latents = at::arange(2 * 3 * 2 * 2, at::kFloat).reshape({2, 3, 2, 2}) / 10 - 0.5;
  const at::Tensor noise = at::zeros_like(latents);
  at::manual_seed(3);
  const at::Tensor got = apply_noise_offset(latents, noise, at::scalar_tensor(0.1), 0.5);
  at::manual_seed(3);
  const at::Tensor r = at::randn({2, 3, 1, 1});
  // hand-computed: offset = clamp(0.1 + 0.5 * |mean over H, W|, 0)
  at::Tensor want = at::empty({2, 3, 1, 1});
  for (int b = 0; b < 2; ++b)
    for (int c = 0; c < 3; ++c) {
      double m = 0;
      for (int i = 0; i < 4; ++i) m += latents[b][c].flatten()[i].item<double>();
      want[b][c][0][0] = std::max(0.0, 0.1 + 0.5 * std::abs(m / 4)) * r[b][c][0][0].item<double>();
    }
  CHECK(close(got, want));
  // a negative adaptive scale can only shrink the offset to 0, never flip its sign
  at::manual_seed(3);
  CHECK(at::equal(apply_noise_offset(latents, noise, at::scalar_tensor(0.1), -100.0), at::zeros_like(latents)));

  NoiseOptions o;
  o.noise_offset = 0.1;
  o.noise_offset_random_strength = true;
  at::manual_seed(11);
  std::mt19937_64 rr(1);
  const auto t = draw_training_noise(o, latents, rr);
  at::manual_seed(11);
  const at::Tensor n = at::randn_like(latents);
  const at::Tensor strength = at::rand({1}) * 0.1;
  const at::Tensor off = at::randn({2, 3, 1, 1});
  const at::Tensor ts = at::randint(0, 1000, {2}, at::kLong);
  CHECK(close(t.noise, n + strength * off));
  CHECK(at::equal(t.timesteps, ts));
  CHECK(at::equal(t.input_noise, t.noise));
}

TEST_CASE("multires noise: level 0 is full-size noise, levels shrink by r^i, result has unit std") {
  at::manual_seed(5);
  const at::Tensor base = at::randn({2, 4, 16, 16});
  std::mt19937_64 rng(42), copy(42);
  at::manual_seed(6);
  const at::Tensor one = pyramid_noise_like(base, 1, 0.3, rng);
  at::manual_seed(6);
  const at::Tensor lvl0 = at::randn({2, 4, 16, 16});
  CHECK(close((base + lvl0) / (base + lvl0).std(), one, 1e-5));
  CHECK(one.std().item<double>() == doctest::Approx(1.0).epsilon(1e-5));

  // Two levels, rebuilt by hand with the same ratio stream: level 1 at int(16 / r), weight 0.3.
  std::mt19937_64 rng2(7), hand(7);
  at::manual_seed(8);
  const at::Tensor two = pyramid_noise_like(base, 2, 0.3, rng2);
  std::uniform_real_distribution<double> u(0.0, 1.0);
  u(hand);  // level 0's ratio (r^0 = 1)
  const double r = u(hand) * 2 + 2;
  const auto n1 = static_cast<int64_t>(16.0 / r);
  at::manual_seed(8);
  at::Tensor sum = base + at::randn({2, 4, 16, 16});
  sum = sum + at::upsample_bilinear2d(at::randn({2, 4, n1, n1}), {16, 16}, false) * 0.3;
  CHECK(close(two, sum / sum.std(), 1e-5));
  // Many iterations stop at the 1-pixel level instead of failing.
  std::mt19937_64 rng3(1);
  CHECK(pyramid_noise_like(base, 50, 0.3, rng3).isfinite().all().item<bool>());
  (void)copy;
}

TEST_CASE("ip_noise_gamma perturbs the noisy-latents input but not the target") {
  const at::Tensor latents = at::zeros({2, 4, 8, 8});
  NoiseOptions o;
  o.ip_noise_gamma = 0.1;
  std::mt19937_64 rr(1);
  at::manual_seed(21);
  const auto t = draw_training_noise(o, latents, rr);
  at::manual_seed(21);
  const at::Tensor n = at::randn_like(latents);
  const at::Tensor ts = at::randint(0, 1000, {2}, at::kLong);
  const at::Tensor xi = at::randn_like(latents);
  CHECK(at::equal(t.noise, n));
  CHECK(at::equal(t.timesteps, ts));
  CHECK(close(t.input_noise, n + 0.1 * xi));

  o.ip_noise_gamma_random_strength = true;
  o.min_timestep = 100;
  o.max_timestep = 200;
  at::manual_seed(22);
  const auto t2 = draw_training_noise(o, latents, rr);
  at::manual_seed(22);
  const at::Tensor n2 = at::randn_like(latents);
  const at::Tensor ts2 = at::randint(100, 200, {2}, at::kLong);
  const at::Tensor s2 = at::rand({1}) * 0.1;
  const at::Tensor xi2 = at::randn_like(latents);
  CHECK(at::equal(t2.timesteps, ts2));
  CHECK(close(t2.input_noise, n2 + s2 * xi2));
  CHECK((t2.timesteps >= 100).all().item<bool>());
}

TEST_CASE("noise options: kohya's invalid combinations are refused") {
  NoiseOptions o;
  o.adaptive_noise_scale = 0.1;
  CHECK_THROWS_WITH(check_noise_options(o), doctest::Contains("adaptive_noise_scale needs noise_offset"));
  o.noise_offset = 0.05;
  CHECK_NOTHROW(check_noise_options(o));
  o.min_timestep = 500;
  o.max_timestep = 400;
  CHECK_THROWS_WITH(check_noise_options(o), doctest::Contains("min_timestep"));
}

TEST_CASE("SNR weights equal their formulas on the DDPM schedule") {
  const at::Tensor acp = ddpm_alphas_cumprod(false);
  const at::Tensor snr = snr_table(acp);
  const at::Tensor ts = at::tensor({0L, 10L, 100L, 500L, 999L});
  for (int64_t i = 0; i < ts.size(0); ++i) {
    const int64_t t = ts[i].item<int64_t>();
    const double a = static_cast<float>(acp[t].item<double>());
    const double s = a / (1 - a);
    CAPTURE(t);
    CHECK(snr[t].item<double>() == doctest::Approx(s).epsilon(1e-5));
    CHECK(min_snr_weight(ts, snr, 5.0, false)[i].item<double>() == doctest::Approx(std::min(s, 5.0) / s).epsilon(1e-5));
    CHECK(min_snr_weight(ts, snr, 5.0, true)[i].item<double>() == doctest::Approx(std::min(s, 5.0) / (s + 1)).epsilon(1e-5));
    const double sc = std::min(s, 1000.0);
    CHECK(v_pred_scale(ts, snr)[i].item<double>() == doctest::Approx(sc / (sc + 1)).epsilon(1e-5));
    CHECK(debiased_weight(ts, snr, false)[i].item<double>() == doctest::Approx(1 / std::sqrt(sc)).epsilon(1e-5));
    CHECK(debiased_weight(ts, snr, true)[i].item<double>() == doctest::Approx(1 / (sc + 1)).epsilon(1e-5));
  }
  // post_process_loss applies them in kohya's order.
  const at::Tensor loss = at::tensor({0.5f, 1.0f, 2.0f, 0.25f, 4.0f});
  LossOptions o;
  o.min_snr_gamma = 5.0;
  o.v_pred_like_loss = 0.2;
  o.debiased_estimation_loss = true;
  at::Tensor want = loss * min_snr_weight(ts, snr, 5.0, false);
  want = want + want / v_pred_scale(ts, snr) * 0.2;
  want = want * debiased_weight(ts, snr, false);
  CHECK(close(post_process_loss(loss, ts, snr, o), want));
  LossOptions v;
  v.v_parameterization = true;
  v.scale_v_pred_loss_like_noise_pred = true;
  CHECK(close(post_process_loss(loss, ts, snr, v), loss * v_pred_scale(ts, snr)));
}

TEST_CASE("loss types: l2, l1, pseudo-Huber and smooth L1 with kohya's threshold schedules") {
  const at::Tensor pred = at::full({2, 1, 1, 1}, 3.0), target = at::zeros({2, 1, 1, 1});
  const at::Tensor c = at::tensor({0.1f, 0.5f});
  CHECK(conditional_loss(pred, target, "l2", {})[0].item<double>() == doctest::Approx(9.0));
  CHECK(conditional_loss(pred, target, "l1", {})[0].item<double>() == doctest::Approx(3.0));
  const at::Tensor h = conditional_loss(pred, target, "huber", c).flatten();
  CHECK(h[0].item<double>() == doctest::Approx(2 * 0.1 * (std::sqrt(9.01) - 0.1)).epsilon(1e-6));
  CHECK(h[1].item<double>() == doctest::Approx(2 * 0.5 * (std::sqrt(9.25) - 0.5)).epsilon(1e-6));
  const at::Tensor sl = conditional_loss(pred, target, "smooth_l1", c).flatten();
  CHECK(sl[0].item<double>() == doctest::Approx(2 * (std::sqrt(9.01) - 0.1)).epsilon(1e-6));

  const at::Tensor acp = ddpm_alphas_cumprod(false);
  const at::Tensor ts = at::tensor({0L, 500L, 999L});
  LossOptions o;
  o.loss_type = "huber";
  o.huber_c = 0.1;
  o.huber_scale = 2.0;
  o.huber_schedule = "constant";
  CHECK(close(huber_threshold(o, ts, acp), at::full({3}, 0.2)));
  o.huber_schedule = "exponential";
  const at::Tensor e = huber_threshold(o, ts, acp);
  CHECK(e[0].item<double>() == doctest::Approx(2.0));
  CHECK(e[2].item<double>() == doctest::Approx(2.0 * std::exp(std::log(0.1) * 999 / 1000)).epsilon(1e-5));
  o.huber_schedule = "snr";
  const at::Tensor sn = huber_threshold(o, ts, acp);
  for (int i = 0; i < 3; ++i) {
    const double a = static_cast<float>(acp[ts[i].item<int64_t>()].item<double>());
    const double sigma = std::sqrt((1 - a) / a);
    CHECK(sn[i].item<double>() == doctest::Approx(0.9 / ((1 + sigma) * (1 + sigma)) + 0.1).epsilon(1e-5));
  }
  o.loss_type = "l2";
  CHECK_FALSE(huber_threshold(o, ts, acp).defined());

  LossOptions bad;
  bad.loss_type = "l3";
  CHECK_THROWS_WITH(check_loss_options(bad), doctest::Contains("loss_type"));
  LossOptions sv;
  sv.scale_v_pred_loss_like_noise_pred = true;
  CHECK_THROWS_WITH(check_loss_options(sv), doctest::Contains("only with v_parameterization"));
  LossOptions vl;
  vl.v_pred_like_loss = 0.1;
  vl.v_parameterization = true;
  CHECK_THROWS_WITH(check_loss_options(vl), doctest::Contains("cannot be enabled with v_parameterization"));
}

TEST_CASE("zero terminal SNR: last alpha_bar is 0, sqrt(alpha_bar) shifted and rescaled as diffusers") {
  const at::Tensor plain = ddpm_alphas_cumprod(false);
  const at::Tensor zero = ddpm_alphas_cumprod(true);
  CHECK(zero[-1].item<double>() == 0.0);
  // diffusers' rescale_zero_terminal_snr on sqrt(alphas_cumprod)
  const at::Tensor s = plain.sqrt();
  const double s0 = s[0].item<double>(), sT = s[-1].item<double>();
  const at::Tensor want = ((s - sT) * (s0 / (s0 - sT))).pow(2);
  CHECK(close(zero, want, 1e-5));
  CHECK(zero[0].item<double>() == doctest::Approx(plain[0].item<double>()).epsilon(1e-6));
}

TEST_CASE("GradScaler: init 65536, skip and back off on inf/NaN, grow x2 after 2000 good steps") {
  GradScaler sc;
  CHECK(sc.scale_value() == 65536.0);
  at::Tensor p = at::zeros({3}).set_requires_grad(true);
  (sc.scale(p * at::tensor({1.0f, 2.0f, 3.0f})).sum()).backward();
  CHECK(close(p.grad(), at::full({3}, 65536.0) * at::tensor({1.0f, 2.0f, 3.0f})));
  CHECK(sc.unscale({p}));
  CHECK(close(p.grad(), at::tensor({1.0f, 2.0f, 3.0f})));
  sc.update(false);
  CHECK(sc.growth_tracker() == 1);

  p.grad().fill_(std::numeric_limits<float>::infinity());
  CHECK_FALSE(sc.unscale({p}));
  sc.update(true);
  CHECK(sc.scale_value() == 32768.0);
  CHECK(sc.growth_tracker() == 0);
  p.grad().fill_(std::numeric_limits<float>::quiet_NaN());
  CHECK_FALSE(sc.unscale({p}));
  sc.update(true);
  CHECK(sc.scale_value() == 16384.0);

  for (int i = 0; i < 1999; ++i) sc.update(false);
  CHECK(sc.scale_value() == 16384.0);
  sc.update(false);
  CHECK(sc.scale_value() == 32768.0);
  CHECK(sc.growth_tracker() == 0);
}

TEST_CASE("loss recorder: moving average over one epoch of micro-batches, as kohya's avr_loss") {
  LossRecorder r;
  r.add(true, 0, 1.0);
  r.add(true, 1, 2.0);
  r.add(true, 2, 3.0);
  CHECK(r.moving_average() == doctest::Approx(2.0));
  r.add(false, 0, 4.0);  // replaces the first epoch's entry 0
  CHECK(r.moving_average() == doctest::Approx(3.0));
}

TEST_CASE("log and sample options are checked") {
  LogOptions l;
  l.log_with = "wandb";
  l.logging_dir = "/tmp/x";
  CHECK_THROWS_WITH(check_log_options(l), doctest::Contains("wandb is not supported"));
  l.log_with = "tensorboard";
  l.logging_dir.clear();
  CHECK_THROWS_WITH(check_log_options(l), doctest::Contains("needs logging_dir"));

  SampleOptions s;
  s.prompts = "p.txt";
  CHECK_FALSE(should_sample(s, 0, 0));
  s.at_first = true;
  CHECK(should_sample(s, 0, 0));
  CHECK_FALSE(should_sample(s, 4, std::nullopt));
  s.every_n_steps = 2;
  CHECK(should_sample(s, 4, std::nullopt));
  CHECK_FALSE(should_sample(s, 3, std::nullopt));
  CHECK_FALSE(should_sample(s, 4, 1));  // the end-of-epoch call samples only with every_n_epochs
  s.every_n_epochs = 2;                 // overrides every_n_steps
  CHECK_FALSE(should_sample(s, 4, std::nullopt));
  CHECK(should_sample(s, 7, 2));
  CHECK_FALSE(should_sample(s, 7, 3));
}

TEST_CASE("the fp16 autocast probe leaves autocast off (regression: a refused dtype left it on)") {
  const bool fp16 = cpu_fp16_autocast_available();
  CAPTURE(fp16);
  const at::Tensor x = at::ones({2, 4});
  const at::Tensor w = at::ones({3, 4}).set_requires_grad(true);
  const at::Tensor y = at::linear(x, w);
  CHECK((y.scalar_type() == at::kFloat));  // no autocast leaked
  CHECK(y.requires_grad());
  {
    Autocast ac(at::kBFloat16);
    CHECK((at::linear(x, w).scalar_type() == at::kBFloat16));
  }
  CHECK((at::linear(x, w).scalar_type() == at::kFloat));
}
