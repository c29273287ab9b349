// Every sampler's full chain against a reference written here from the papers / k-diffusion's
// formulation (sigma space, x = x0 + sigma * eps), driven by a smooth synthetic "model" that
// depends on the scaled input and the timestep, so input scaling, timesteps, multistep history
// and ancestral noise all show in the result.
#include "sched_test.h"

#include <cmath>
#include <functional>

using sumi::test::Sched;
using sumi::test::rel_norm;

namespace {

at::Tensor model_eps(const at::Tensor& x_in, double t) { return 0.5 * at::tanh(x_in) + 0.3 * t / 1000.0; }

at::Tensor start_noise() {
  at::manual_seed(7);
  return at::randn({1, 4, 4, 4}, at::kDouble);
}

std::vector<at::Tensor> noises(int n) {
  at::manual_seed(11);
  std::vector<at::Tensor> v;
  for (int i = 0; i < n; ++i) v.push_back(at::randn({1, 4, 4, 4}, at::kDouble));
  return v;
}

// Runs the plugin's full chain; the model sees scale_model_input(x) at timesteps()[i].
at::Tensor run_plugin(Sched& s, int n, const std::vector<at::Tensor>& noise = {}) {
  s.set_timesteps(n);
  const at::Tensor ts = s.timesteps();
  at::Tensor x = start_noise() * s.init_noise_sigma();
  for (int64_t i = 0; i < ts.numel(); ++i) {
    const at::Tensor mo = model_eps(s.scale(x, i), ts[i].item<double>());
    x = s.step(mo, i, x, noise.empty() ? at::Tensor() : noise[static_cast<size_t>(i)]);
  }
  return x;
}

// The sigma schedule k-diffusion would use: linspace timesteps, sigma interpolated in t.
struct Sigmas {
  std::vector<double> table, log_table;
  explicit Sigmas(const at::Tensor& acp) {
    for (int64_t i = 0; i < acp.numel(); ++i) {
      const double a = acp[i].item<double>();
      table.push_back(std::sqrt((1 - a) / a));
      log_table.push_back(std::log(table.back()));
    }
  }
  double sigma_at(double t) const {
    const auto j = std::min(static_cast<size_t>(t), table.size() - 2);
    return table[j] + (t - static_cast<double>(j)) * (table[j + 1] - table[j]);
  }
  // t where log sigma, linear in t between table entries, equals log(s)
  double t_at(double s) const {
    const double ls = std::log(s);
    size_t j = 0;
    while (j + 2 < log_table.size() && log_table[j + 1] <= ls) ++j;
    return static_cast<double>(j) + (ls - log_table[j]) / (log_table[j + 1] - log_table[j]);
  }
  void schedule(int n, std::vector<double>& s, std::vector<double>& t) const {
    s.clear();
    t.clear();
    for (int i = n - 1; i >= 0; --i) t.push_back(999.0 * i / (n - 1));
    for (double v : t) s.push_back(sigma_at(v));
    s.push_back(0.0);
  }
  at::Tensor denoised(const at::Tensor& x, double s, double t) const {
    return x - s * model_eps(x / std::sqrt(s * s + 1), t);
  }
};

void ancestral(double from, double to, double& down, double& up) {
  up = std::sqrt(to * to * (from * from - to * to) / (from * from));
  down = std::sqrt(to * to - up * up);
}

const int kSteps = 7;

}  // namespace

TEST_CASE("sigma samplers: schedule, Euler, Euler ancestral, Heun, DPM2, DPM2 ancestral, LMS vs k-diffusion form") {
  Sched probe("euler");
  const Sigmas sg(probe.alphas_cumprod());
  std::vector<double> s, t;
  sg.schedule(kSteps, s, t);
  probe.set_timesteps(kSteps);
  CHECK(sumi::test::max_rel(probe.sigmas(), at::tensor(s, at::kDouble), 1e-3) < 1e-6);
  CHECK(probe.init_noise_sigma() == doctest::Approx(s[0]).epsilon(1e-6));  // linspace: sigma_max itself
  const at::Tensor x0 = start_noise() * s[0];
  const auto eta = noises(2 * kSteps);

  SUBCASE("euler") {
    at::Tensor x = x0;
    for (int i = 0; i < kSteps; ++i) x = x + (x - sg.denoised(x, s[i], t[i])) / s[i] * (s[i + 1] - s[i]);
    Sched e("euler");
    CHECK(rel_norm(run_plugin(e, kSteps), x) < 1e-5);
  }
  SUBCASE("euler_a") {
    at::Tensor x = x0;
    for (int i = 0; i < kSteps; ++i) {
      double down, up;
      ancestral(s[i], s[i + 1], down, up);
      x = x + (x - sg.denoised(x, s[i], t[i])) / s[i] * (down - s[i]) + eta[i] * up;
    }
    Sched e("k_euler_a");
    CHECK(rel_norm(run_plugin(e, kSteps, eta), x) < 1e-5);
  }
  SUBCASE("heun") {
    at::Tensor x = x0;
    for (int i = 0; i < kSteps; ++i) {
      const at::Tensor d = (x - sg.denoised(x, s[i], t[i])) / s[i];
      const double dt = s[i + 1] - s[i];
      if (s[i + 1] == 0) {
        x = x + d * dt;
      } else {
        const at::Tensor x2 = x + d * dt;
        const at::Tensor d2 = (x2 - sg.denoised(x2, s[i + 1], t[i + 1])) / s[i + 1];
        x = x + (d + d2) / 2 * dt;
      }
    }
    Sched h("heun");
    h.set_timesteps(kSteps);
    CHECK(h.timesteps().numel() == 2 * kSteps - 1);
    CHECK(rel_norm(run_plugin(h, kSteps), x) < 1e-5);
  }
  SUBCASE("dpm_2") {
    at::Tensor x = x0;
    for (int i = 0; i < kSteps; ++i) {
      const at::Tensor d = (x - sg.denoised(x, s[i], t[i])) / s[i];
      if (s[i + 1] == 0) {
        x = x + d * (s[i + 1] - s[i]);
      } else {
        const double mid = std::exp((std::log(s[i]) + std::log(s[i + 1])) / 2);
        const at::Tensor x2 = x + d * (mid - s[i]);
        const at::Tensor d2 = (x2 - sg.denoised(x2, mid, sg.t_at(mid))) / mid;
        x = x + d2 * (s[i + 1] - s[i]);
      }
    }
    Sched k("k_dpm_2");
    CHECK(rel_norm(run_plugin(k, kSteps), x) < 1e-5);
  }
  SUBCASE("dpm_2_a") {
    at::Tensor x = x0;
    for (int i = 0; i < kSteps; ++i) {
      double down, up;
      ancestral(s[i], s[i + 1], down, up);
      const at::Tensor d = (x - sg.denoised(x, s[i], t[i])) / s[i];
      if (down == 0) {
        x = x + d * (down - s[i]);
      } else {
        const double mid = std::exp((std::log(s[i]) + std::log(down)) / 2);
        const at::Tensor x2 = x + d * (mid - s[i]);
        const at::Tensor d2 = (x2 - sg.denoised(x2, mid, sg.t_at(mid))) / mid;
        x = x + d2 * (down - s[i]);
      }
      x = x + eta[static_cast<size_t>(2 * i + 1)] * up;  // the plugin is handed noise at every call
    }
    Sched k("dpm_2_a");
    CHECK(rel_norm(run_plugin(k, kSteps, eta), x) < 1e-5);
  }
  SUBCASE("lms") {
    // coefficients: integral of each Lagrange basis polynomial over [s_i, s_{i+1}] (Simpson is
    // exact for these cubics)
    std::vector<at::Tensor> ds;
    at::Tensor x = x0;
    for (int i = 0; i < kSteps; ++i) {
      ds.push_back((x - sg.denoised(x, s[i], t[i])) / s[i]);
      const int order = std::min(i + 1, 4);
      for (int j = 0; j < order; ++j) {
        auto basis = [&](double tau) {
          double p = 1;
          for (int k = 0; k < order; ++k)
            if (k != j) p *= (tau - s[i - k]) / (s[i - j] - s[i - k]);
          return p;
        };
        const double a = s[i], b = s[i + 1];
        const double c = (b - a) / 6 * (basis(a) + 4 * basis((a + b) / 2) + basis(b));
        x = x + c * ds[ds.size() - 1 - static_cast<size_t>(j)];
      }
    }
    Sched l("lms");
    CHECK(rel_norm(run_plugin(l, kSteps), x) < 1e-5);
  }
}

TEST_CASE("discrete samplers: DDIM with eta, DDPM, PLMS vs the papers' updates") {
  Sched probe("ddim");
  const at::Tensor acp = probe.alphas_cumprod();
  auto A = [&](int64_t t) { return t >= 0 ? acp[t].item<double>() : acp[0].item<double>(); };
  const int n = 8;
  const int64_t ratio = 1000 / n;
  std::vector<int64_t> ts;  // leading spacing, steps_offset 1
  for (int i = n - 1; i >= 0; --i) ts.push_back(i * ratio + 1);
  const auto eta = noises(n + 1);

  SUBCASE("ddim eta 0.7") {
    at::Tensor x = start_noise();
    for (int i = 0; i < n; ++i) {
      const double a = A(ts[i]), ap = A(ts[i] - ratio);
      const at::Tensor e = model_eps(x, static_cast<double>(ts[i]));
      const at::Tensor x0 = (x - std::sqrt(1 - a) * e) / std::sqrt(a);
      const double sd = 0.7 * std::sqrt((1 - ap) / (1 - a)) * std::sqrt(1 - a / ap);  // eq. (16) of Song et al.
      x = std::sqrt(ap) * x0 + std::sqrt(1 - ap - sd * sd) * e + sd * eta[i];
    }
    Sched d("ddim", {{"eta", "0.7"}});
    CHECK(rel_norm(run_plugin(d, n, eta), x) < 1e-10);
  }
  SUBCASE("ddpm") {
    at::Tensor x = start_noise();
    for (int i = 0; i < n; ++i) {
      const int64_t t = ts[i], prev = t - ratio;
      const double a = A(t), ap = prev >= 0 ? A(prev) : 1.0, beta = 1 - a / ap;
      const at::Tensor x0 = (x - std::sqrt(1 - a) * model_eps(x, static_cast<double>(t))) / std::sqrt(a);
      // posterior q(x_prev | x_t, x0), eqs. (6)-(7) of Ho et al.
      const at::Tensor mean = std::sqrt(ap) * beta / (1 - a) * x0 + std::sqrt(1 - beta) * (1 - ap) / (1 - a) * x;
      x = mean + std::sqrt(std::max((1 - ap) / (1 - a) * beta, 1e-20)) * eta[i];
    }
    Sched d("ddpm");
    CHECK(rel_norm(run_plugin(d, n, eta), x) < 1e-10);
  }
  SUBCASE("pndm (PLMS)") {
    // transfer of eq. (11) in Liu et al.
    auto phi = [&](const at::Tensor& x, const at::Tensor& e, int64_t t, int64_t tp) {
      const double a = A(t), ap = A(tp);
      return std::sqrt(ap / a) * x - (ap - a) / (a * std::sqrt(1 - ap) + std::sqrt(a * (1 - a) * ap)) * e;
    };
    at::Tensor x = start_noise();
    std::vector<at::Tensor> es;
    for (int i = 0; i < n; ++i) {
      const int64_t t = ts[i], tp = t - ratio;
      const at::Tensor e = model_eps(x, static_cast<double>(t));
      es.push_back(e);
      at::Tensor ep;
      const size_t k = es.size();
      if (k == 1) {  // warm-up: average the slopes at both ends (one extra model call)
        const at::Tensor x1 = phi(x, e, t, tp);
        ep = (e + model_eps(x1, static_cast<double>(tp))) / 2;
      } else if (k == 2) {
        ep = (3 * es[1] - es[0]) / 2;
      } else if (k == 3) {
        ep = (23 * es[2] - 16 * es[1] + 5 * es[0]) / 12;
      } else {
        ep = (55 * es[k - 1] - 59 * es[k - 2] + 37 * es[k - 3] - 9 * es[k - 4]) / 24;
      }
      x = phi(x, ep, t, tp);
    }
    Sched p("pndm");
    p.set_timesteps(n);
    CHECK(p.timesteps().numel() == n + 1);
    CHECK(rel_norm(run_plugin(p, n), x) < 1e-10);
  }
}

TEST_CASE("DPM-Solver family vs Lu et al.'s updates") {
  Sched probe("dpmsolver++");
  const at::Tensor acp = probe.alphas_cumprod();
  auto al = [&](int64_t t) { return std::sqrt(acp[t].item<double>()); };
  auto si = [&](int64_t t) { return std::sqrt(1 - acp[t].item<double>()); };
  auto la = [&](int64_t t) { return std::log(al(t) / si(t)); };
  const int n = 8;
  std::vector<int64_t> ts;  // linspace over n + 1 points, the last dropped
  for (int i = n; i >= 1; --i) ts.push_back(static_cast<int64_t>(std::nearbyint(999.0 * i / n)));
  probe.set_timesteps(n);
  CHECK(at::equal(probe.timesteps(), at::tensor(std::vector<double>(ts.begin(), ts.end()), at::kDouble)));
  auto to = [&](int i) { return i + 1 < n ? ts[static_cast<size_t>(i) + 1] : int64_t{0}; };

  SUBCASE("dpmsolver++ 2M (data prediction), lower order at the end below 15 steps") {
    at::Tensor x = start_noise(), prev_x0;
    for (int i = 0; i < n; ++i) {
      const int64_t t = ts[i], tn = to(i);
      const at::Tensor x0 = (x - si(t) * model_eps(x, static_cast<double>(t))) / al(t);
      const double h = la(tn) - la(t);
      at::Tensor D = x0;
      if (i > 0 && i < n - 1) {
        const double r = (la(t) - la(ts[i - 1])) / h;
        D = (1 + 1 / (2 * r)) * x0 - 1 / (2 * r) * prev_x0;
      }
      x = si(tn) / si(t) * x - al(tn) * std::expm1(-h) * D;
      prev_x0 = x0;
    }
    Sched d("dpmsolver++");
    CHECK(rel_norm(run_plugin(d, n), x) < 1e-10);
  }
  SUBCASE("dpmsolver 2M (noise prediction)") {
    at::Tensor x = start_noise(), prev_e;
    for (int i = 0; i < n; ++i) {
      const int64_t t = ts[i], tn = to(i);
      const at::Tensor e = model_eps(x, static_cast<double>(t));
      const double h = la(tn) - la(t);
      at::Tensor D = e;
      if (i > 0 && i < n - 1) {
        const double r = (la(t) - la(ts[i - 1])) / h;
        D = e + (e - prev_e) / (2 * r);
      }
      x = al(tn) / al(t) * x - si(tn) * std::expm1(h) * D;
      prev_e = e;
    }
    Sched d("dpmsolver");
    CHECK(rel_norm(run_plugin(d, n), x) < 1e-10);
  }
  SUBCASE("dpmsingle: pairs of a first-order half step and a second-order full step") {
    at::Tensor x = start_noise();
    for (int i = 0; i < n; i += 2) {
      const int64_t t = ts[i], tm = ts[i + 1], tn = to(i + 1);
      const at::Tensor x0a = (x - si(t) * model_eps(x, static_cast<double>(t))) / al(t);
      const at::Tensor xm = si(tm) / si(t) * x - al(tm) * std::expm1(la(t) - la(tm)) * x0a;
      const at::Tensor x0b = (xm - si(tm) * model_eps(xm, static_cast<double>(tm))) / al(tm);
      const double h = la(tn) - la(t), r = (la(tm) - la(t)) / h;
      x = si(tn) / si(t) * x - al(tn) * std::expm1(-h) * (x0a + (x0b - x0a) / (2 * r));
    }
    Sched d("dpmsingle");
    CHECK(rel_norm(run_plugin(d, n), x) < 1e-10);
  }
  SUBCASE("dpmsingle order 3, 6 steps: orders 1,2,3 then 1,2 then a final 1") {
    Sched d("dpmsingle", {{"solver_order", "3"}});
    const int m = 6;
    std::vector<int64_t> t6;
    for (int i = m; i >= 1; --i) t6.push_back(static_cast<int64_t>(std::nearbyint(999.0 * i / m)));
    t6.push_back(0);
    auto x0_of = [&](const at::Tensor& x, int64_t t) {
      return (x - si(t) * model_eps(x, static_cast<double>(t))) / al(t);
    };
    // first-order (DDIM) move of x from s to t with data prediction D
    auto first = [&](const at::Tensor& x, int64_t s, int64_t t, const at::Tensor& D) {
      return si(t) / si(s) * x - al(t) * std::expm1(la(s) - la(t)) * D;
    };
    at::Tensor x = start_noise();
    // steps 0-2: from t0, through t1 and t2, to t3 (third order, midpoint form)
    const at::Tensor a0 = x0_of(x, t6[0]);
    const at::Tensor x1 = first(x, t6[0], t6[1], a0);
    const at::Tensor a1 = x0_of(x1, t6[1]);
    double h = la(t6[2]) - la(t6[0]);
    const at::Tensor x2 = first(x, t6[0], t6[2], a0) - 0.5 * al(t6[2]) * std::expm1(-h) * (a1 - a0) * h / (la(t6[1]) - la(t6[0]));
    const at::Tensor a2 = x0_of(x2, t6[2]);
    h = la(t6[3]) - la(t6[0]);
    const double r0 = (la(t6[2]) - la(t6[0])) / h;
    x = first(x, t6[0], t6[3], a0) + al(t6[3]) * (std::expm1(-h) / h + 1) * (a2 - a0) / r0;
    // steps 3-4: second order from t3 to t5; step 5: first order to 0
    const at::Tensor b0 = x0_of(x, t6[3]);
    const at::Tensor y1 = first(x, t6[3], t6[4], b0);
    const at::Tensor b1 = x0_of(y1, t6[4]);
    h = la(t6[5]) - la(t6[3]);
    x = first(x, t6[3], t6[5], b0) - 0.5 * al(t6[5]) * std::expm1(-h) * (b1 - b0) * h / (la(t6[4]) - la(t6[3]));
    x = first(x, t6[5], t6[6], x0_of(x, t6[5]));
    CHECK(rel_norm(run_plugin(d, m), x) < 1e-10);
  }
  SUBCASE("solver_order 3 runs and differs from order 2") {
    Sched d3("dpmsolver++", {{"solver_order", "3"}});
    Sched d2("dpmsolver++");
    const at::Tensor a = run_plugin(d3, 20), b = run_plugin(d2, 20);
    CHECK(a.isfinite().all().item<bool>());
    CHECK(rel_norm(a, b) > 1e-6);
    CHECK(rel_norm(a, b) < 0.1);
    Sched s3("dpmsingle", {{"solver_order", "3"}});
    CHECK(rel_norm(run_plugin(s3, 21), b) < 0.1);
  }
}

TEST_CASE("img2img: samplers with history start afresh at any step after set_timesteps") {
  Sched probe("euler");
  const Sigmas sg(probe.alphas_cumprod());
  std::vector<double> s, t;
  sg.schedule(kSteps, s, t);
  const at::Tensor x_start = start_noise() * s[3];

  // plugin chain from step_index `first` (model calls as in run_plugin)
  auto run_from = [&](Sched& sc, int64_t first) {
    sc.set_timesteps(kSteps);
    const at::Tensor ts = sc.timesteps();
    at::Tensor x = x_start;
    for (int64_t i = first; i < ts.numel(); ++i) x = sc.step(model_eps(sc.scale(x, i), ts[i].item<double>()), i, x);
    return x;
  };

  SUBCASE("heun from its 4th step") {
    at::Tensor x = x_start;
    for (int i = 3; i < kSteps; ++i) {
      const at::Tensor d = (x - sg.denoised(x, s[i], t[i])) / s[i];
      const double dt = s[i + 1] - s[i];
      if (s[i + 1] == 0) {
        x = x + d * dt;
      } else {
        const at::Tensor x2 = x + d * dt;
        x = x + (d + (x2 - sg.denoised(x2, s[i + 1], t[i + 1])) / s[i + 1]) / 2 * dt;
      }
    }
    Sched h("heun");
    CHECK(rel_norm(run_from(h, 6), x) < 1e-5);
    Sched h2("heun");
    h2.set_timesteps(kSteps);
    CHECK_THROWS_WITH(h2.step(x, 5, x), doctest::Contains("even step_index"));
  }
  SUBCASE("lms from its 3rd step: one derivative, the leading coefficient of order 3") {
    const at::Tensor d = (x_start - sg.denoised(x_start, s[2], t[2])) / s[2];
    auto basis = [&](double tau) { return (tau - s[1]) / (s[2] - s[1]) * (tau - s[0]) / (s[2] - s[0]); };
    const double a = s[2], b = s[3];
    const double c = (b - a) / 6 * (basis(a) + 4 * basis((a + b) / 2) + basis(b));
    Sched l("lms");
    l.set_timesteps(kSteps);
    const double t2 = l.timesteps()[2].item<double>();
    CHECK(rel_norm(l.step(model_eps(l.scale(x_start, 2), t2), 2, x_start), x_start + c * d) < 1e-5);
  }
  SUBCASE("dpmsolver++ from its 4th step starts with a first-order step; out of order is refused") {
    Sched d("dpmsolver++");
    d.set_timesteps(kSteps);
    const at::Tensor acp = d.alphas_cumprod(), ts = d.timesteps();
    const auto t3 = static_cast<int64_t>(ts[3].item<double>()), t4 = static_cast<int64_t>(ts[4].item<double>());
    const double a = acp[t3].item<double>(), an = acp[t4].item<double>();
    const at::Tensor e = model_eps(x_start, static_cast<double>(t3));
    const at::Tensor x0 = (x_start - std::sqrt(1 - a) * e) / std::sqrt(a);
    CHECK(rel_norm(d.step(e, 3, x_start), std::sqrt(an) * x0 + std::sqrt(1 - an) * e) < 1e-10);
    CHECK_THROWS_WITH(d.step(e, 3, x_start), doctest::Contains("expected step_index 4"));
    CHECK_NOTHROW(d.step(e, 0, x_start));
  }
}
