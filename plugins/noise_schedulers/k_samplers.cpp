// Samplers in sigma space (k-diffusion's parametrisation, x = x0 + sigma * eps): LMS, Euler,
// Euler ancestral, Heun and DPM-Solver-2 (KDPM2) with its ancestral variant.
#include "samplers.h"

#include <algorithm>
#include <cmath>
#include <limits>

namespace sumi::sched {

namespace {
constexpr unsigned kSigmaFeatures = kKarras;

// Repeats entries 1..end-1 twice, like diffusers' cat([x[:1], x[1:].repeat_interleave(2), x[-1:]]).
std::vector<double> interleave(const std::vector<double>& v) {
  std::vector<double> out{v.front()};
  for (size_t i = 1; i < v.size(); ++i) {
    out.push_back(v[i]);
    out.push_back(v[i]);
  }
  out.push_back(v.back());
  return out;
}
}  // namespace

// ------------------------------------------------------------------------------------- LMS
Lms::Lms(Context& ctx) : SigmaBase(ctx, "lms", kSigmaFeatures) {}

void Lms::set_timesteps(int64_t n) {
  base_schedule(n, sig_, ts_);
  num_steps_ = n;
  derivatives_.clear();
  next_ = -1;
}

// Integral over [sigma_i, sigma_{i+1}] of the Lagrange basis polynomial of the `current`-th
// previous derivative. The polynomial has degree < 4, so 4-point Gauss-Legendre is exact.
double Lms::coefficient(int64_t order, int64_t i, int64_t current) const {
  auto s = [&](int64_t k) { return sig_[static_cast<size_t>(k)]; };
  auto basis = [&](double tau) {
    double prod = 1.0;
    for (int64_t k = 0; k < order; ++k) {
      if (k == current) continue;
      prod *= (tau - s(i - k)) / (s(i - current) - s(i - k));
    }
    return prod;
  };
  static const double x[4] = {-0.8611363115940526, -0.3399810435848563, 0.3399810435848563, 0.8611363115940526};
  static const double w[4] = {0.3478548451374538, 0.6521451548625461, 0.6521451548625461, 0.3478548451374538};
  const double a = s(i), b = s(i + 1), half = (b - a) / 2, mid = (a + b) / 2;
  double sum = 0;
  for (int q = 0; q < 4; ++q) sum += w[q] * basis(mid + half * x[q]);
  return sum * half;
}

Tensor Lms::step(const Tensor& model_output, int64_t step_index, const Tensor& sample, const Tensor&) {
  require_index(step_index, static_cast<int64_t>(ts_.size()));
  require_same_shape(model_output, "model_output", sample, "sample");
  if (enter(step_index)) derivatives_.clear();
  const double sigma = sig_[static_cast<size_t>(step_index)];
  const Tensor x0 = predict_x0(model_output, sample, sigma);
  derivatives_.push_back((sample - x0) / sigma);
  constexpr int64_t kOrder = 4;
  if (static_cast<int64_t>(derivatives_.size()) > kOrder) derivatives_.pop_front();
  const int64_t order = std::min(step_index + 1, kOrder);
  // started mid-schedule (img2img) there are fewer derivatives than the order; diffusers then
  // uses the leading coefficients only
  const int64_t terms = std::min(order, static_cast<int64_t>(derivatives_.size()));
  Tensor out = sample;
  for (int64_t cur = 0; cur < terms; ++cur)
    out = ops::add(out, derivatives_[derivatives_.size() - 1 - static_cast<size_t>(cur)], coefficient(order, step_index, cur));
  return out;
}

// ----------------------------------------------------------------------------------- Euler
Euler::Euler(Context& ctx) : SigmaBase(ctx, "euler", kSigmaFeatures) {}

void Euler::set_timesteps(int64_t n) {
  base_schedule(n, sig_, ts_);
  num_steps_ = n;
}

Tensor Euler::step(const Tensor& model_output, int64_t step_index, const Tensor& sample, const Tensor&) {
  require_index(step_index, static_cast<int64_t>(ts_.size()));
  require_same_shape(model_output, "model_output", sample, "sample");
  const double sigma = sig_[static_cast<size_t>(step_index)], next = sig_[static_cast<size_t>(step_index) + 1];
  const Tensor x0 = predict_x0(model_output, sample, sigma);
  const Tensor derivative = (sample - x0) / sigma;
  return ops::add(sample, derivative, next - sigma);
}

// ------------------------------------------------------------------------- Euler ancestral
EulerAncestral::EulerAncestral(Context& ctx) : SigmaBase(ctx, "euler_a", kSigmaFeatures) {}

void EulerAncestral::set_timesteps(int64_t n) {
  base_schedule(n, sig_, ts_);
  num_steps_ = n;
}

Tensor EulerAncestral::step(const Tensor& model_output, int64_t step_index, const Tensor& sample, const Tensor& noise) {
  require_index(step_index, static_cast<int64_t>(ts_.size()));
  require_same_shape(model_output, "model_output", sample, "sample");
  const Tensor& eps = require_noise(noise, sample, step_index);
  const double from = sig_[static_cast<size_t>(step_index)], to = sig_[static_cast<size_t>(step_index) + 1];
  // Split the move to `to` into a deterministic part down to sigma_down and fresh noise of sigma_up.
  const double up = std::sqrt(to * to * (from * from - to * to) / (from * from));
  const double down = std::sqrt(to * to - up * up);
  const Tensor x0 = predict_x0(model_output, sample, from);
  const Tensor derivative = (sample - x0) / from;
  return ops::add(ops::add(sample, derivative, down - from), eps, up);
}

// ------------------------------------------------------------------------------------ Heun
Heun::Heun(Context& ctx) : SigmaBase(ctx, "heun", kSigmaFeatures) {}

void Heun::set_timesteps(int64_t n) {
  std::vector<double> s, t;
  base_schedule(n, s, t);
  // s = [s0 .. s_{n-1}, 0]: every sigma but the first and the final 0 is visited twice.
  sig_ = {s.front()};
  for (size_t i = 1; i + 1 < s.size(); ++i) {
    sig_.push_back(s[i]);
    sig_.push_back(s[i]);
  }
  sig_.push_back(s.back());
  ts_ = {t.front()};
  for (size_t i = 1; i < t.size(); ++i) {
    ts_.push_back(t[i]);
    ts_.push_back(t[i]);
  }
  num_steps_ = n;
  prev_derivative_ = prev_sample_ = Tensor();
  next_ = -1;
}

Tensor Heun::step(const Tensor& model_output, int64_t step_index, const Tensor& sample, const Tensor&) {
  require_index(step_index, static_cast<int64_t>(ts_.size()));
  require_same_shape(model_output, "model_output", sample, "sample");
  enter(step_index, true);
  const auto i = static_cast<size_t>(step_index);
  if (step_index % 2 == 0) {  // Euler predictor
    const double sigma = sig_[i], next = sig_[i + 1];
    const Tensor x0 = predict_x0(model_output, sample, sigma);
    const Tensor derivative = (sample - x0) / sigma;
    prev_derivative_ = derivative;
    prev_sample_ = sample;
    dt_ = next - sigma;
    return ops::add(sample, derivative, dt_);
  }
  // corrector: average the slopes at both ends of the interval
  const double next = sig_[i];
  const Tensor x0 = predict_x0(model_output, sample, next);
  const Tensor derivative = ((sample - x0) / next + prev_derivative_) / 2.0;
  Tensor out = ops::add(prev_sample_, derivative, dt_);
  prev_derivative_ = prev_sample_ = Tensor();
  return out;
}

// ----------------------------------------------------------------------------------- KDPM2
KDpm2::KDpm2(Context& ctx, const char* name, bool ancestral) : SigmaBase(ctx, name, kSigmaFeatures), ancestral_(ancestral) {}

void KDpm2::set_timesteps(int64_t n) {
  std::vector<double> s, t;
  base_schedule(n, s, t);  // s has n + 1 entries, the last 0
  const size_t m = s.size();
  std::vector<double> up(m, 0.0), down(m, 0.0), mid(m, 0.0);
  const double nan = std::numeric_limits<double>::quiet_NaN();
  if (ancestral_) {
    for (size_t j = 0; j < m; ++j) {
      const double next = j + 1 < m ? s[j + 1] : 0.0;
      up[j] = j + 1 < m ? std::sqrt(next * next * (s[j] * s[j] - next * next) / (s[j] * s[j])) : nan;
      down[j] = j + 1 < m ? std::sqrt(next * next - up[j] * up[j]) : 0.0;
    }
    // geometric midpoint between sigma and sigma_down; the last two steps go straight to x0
    for (size_t j = 0; j < m; ++j) mid[j] = j + 2 < m ? std::sqrt(s[j] * down[j]) : 0.0;
  } else {
    // geometric midpoint between consecutive sigmas (entry j is between s[j-1] and s[j])
    mid[0] = nan;
    for (size_t j = 1; j < m; ++j) mid[j] = s[j] == 0.0 ? 0.0 : std::sqrt(s[j] * s[j - 1]);
  }
  sig_ = interleave(s);
  interpol_ = interleave(mid);
  up_ = interleave(up);
  down_ = interleave(down);
  // each step evaluates the model at its sigma, then at the midpoint's timestep
  ts_ = {t.front()};
  for (size_t j = 1; j < t.size(); ++j) {
    const double mid_sigma = ancestral_ ? mid[j - 1] : mid[j];
    ts_.push_back(sigma_to_t(mid_sigma, log_table_));
    ts_.push_back(t[j]);
  }
  num_steps_ = n;
  prev_sample_ = Tensor();
  next_ = -1;
}

double KDpm2::input_sigma(int64_t step_index) const {
  const auto i = static_cast<size_t>(step_index);
  if (step_index % 2 == 0) return sig_[i];
  return ancestral_ ? interpol_[i - 1] : interpol_[i];
}

Tensor KDpm2::step(const Tensor& model_output, int64_t step_index, const Tensor& sample, const Tensor& noise) {
  require_index(step_index, static_cast<int64_t>(ts_.size()));
  require_same_shape(model_output, "model_output", sample, "sample");
  enter(step_index, true);
  const Tensor eps = ancestral_ ? require_noise(noise, sample, step_index) : Tensor();
  const auto i = static_cast<size_t>(step_index);
  if (step_index % 2 == 0) {  // Euler half-step to the midpoint
    const double sigma = sig_[i];
    const double mid = ancestral_ ? interpol_[i] : interpol_[i + 1];
    const Tensor x0 = predict_x0(model_output, sample, sigma);
    prev_sample_ = sample;
    return ops::add(sample, (sample - x0) / sigma, mid - sigma);
  }
  // full step from the stored sample with the midpoint's slope
  const double sigma = sig_[i - 1];
  const double mid = ancestral_ ? interpol_[i - 1] : interpol_[i];
  const double target = ancestral_ ? down_[i - 1] : sig_[i];
  const Tensor x0 = predict_x0(model_output, sample, mid);
  Tensor out = ops::add(prev_sample_, (sample - x0) / mid, target - sigma);
  prev_sample_ = Tensor();
  if (ancestral_) out = ops::add(out, eps, up_[i - 1]);
  return out;
}

}  // namespace sumi::sched
