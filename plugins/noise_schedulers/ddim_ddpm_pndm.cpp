// Samplers on the discrete training schedule: DDIM, DDPM and PNDM (PLMS).
#include "samplers.h"

#include <algorithm>
#include <cmath>

namespace sumi::sched {

namespace {
void check_count(const Config& c, int64_t n) {
  if (n < 1 || n > c.num_train_timesteps)
    fail(c, "num_inference_steps must be in [1, " + std::to_string(c.num_train_timesteps) + "], got " + std::to_string(n));
}
std::vector<double> as_double(const std::vector<int64_t>& v) { return std::vector<double>(v.begin(), v.end()); }
}  // namespace

// ------------------------------------------------------------------------------------ DDIM
Ddim::Ddim(Context& ctx) : Ddim(ctx, "ddim", kEta | kAlphaOne | kClip) {}
Ddim::Ddim(Context& ctx, const char* name, unsigned features) : Base(ctx, name, features) {}

void Ddim::set_timesteps(int64_t n) {
  check_count(cfg_, n);
  ts_ = discrete_timesteps(cfg_, n);
  num_steps_ = n;
}

Tensor Ddim::timesteps() {
  require_steps();
  return vec_tensor(as_double(ts_));
}

Tensor Ddim::sigmas() { return vec_tensor({}); }

Tensor Ddim::scale_model_input(const Tensor& sample, int64_t step_index) {
  require_index(step_index, static_cast<int64_t>(ts_.size()));
  return sample;
}

Tensor Ddim::predict_x0(const Tensor& model_output, const Tensor& sample, double acp) const {
  Tensor x0 = cfg_.v_prediction ? lin(sample, std::sqrt(acp), model_output, -std::sqrt(1 - acp))
                                : (sample - model_output * std::sqrt(1 - acp)) / std::sqrt(acp);
  if (cfg_.clip_sample) x0 = ops::clamp(x0, -cfg_.clip_sample_range, cfg_.clip_sample_range);
  return x0;
}

Tensor Ddim::step(const Tensor& model_output, int64_t step_index, const Tensor& sample, const Tensor& noise) {
  require_index(step_index, static_cast<int64_t>(ts_.size()));
  require_same_shape(model_output, "model_output", sample, "sample");
  const int64_t t = ts_[static_cast<size_t>(step_index)];
  const int64_t prev = t - cfg_.num_train_timesteps / num_steps_;
  const double a_t = acp_[static_cast<size_t>(t)];
  const double a_prev = prev >= 0 ? acp_[static_cast<size_t>(prev)] : (cfg_.set_alpha_to_one ? 1.0 : acp_[0]);
  const Tensor x0 = predict_x0(model_output, sample, a_t);
  const Tensor eps = cfg_.v_prediction ? lin(model_output, std::sqrt(a_t), sample, std::sqrt(1 - a_t)) : model_output;
  const double variance = (1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev);
  const double std_dev = cfg_.eta * std::sqrt(variance);
  Tensor prev_sample = lin(x0, std::sqrt(a_prev), eps, std::sqrt(1 - a_prev - std_dev * std_dev));
  if (cfg_.eta > 0) prev_sample = ops::add(prev_sample, require_noise(noise, sample, step_index), std_dev);
  return prev_sample;
}

// ------------------------------------------------------------------------------------ DDPM
Ddpm::Ddpm(Context& ctx) : Ddim(ctx, "ddpm", kClip) {}

Tensor Ddpm::step(const Tensor& model_output, int64_t step_index, const Tensor& sample, const Tensor& noise) {
  require_index(step_index, static_cast<int64_t>(ts_.size()));
  require_same_shape(model_output, "model_output", sample, "sample");
  const int64_t t = ts_[static_cast<size_t>(step_index)];
  const int64_t prev = t - cfg_.num_train_timesteps / num_steps_;
  const double a_t = acp_[static_cast<size_t>(t)];
  const double a_prev = prev >= 0 ? acp_[static_cast<size_t>(prev)] : 1.0;
  const double beta_t = 1 - a_t, beta_prev = 1 - a_prev;
  const double cur_alpha = a_t / a_prev, cur_beta = 1 - cur_alpha;
  const Tensor x0 = predict_x0(model_output, sample, a_t);
  // posterior mean of q(x_prev | x_t, x0), eq. (7) of Ho et al.
  Tensor prev_sample = lin(x0, std::sqrt(a_prev) * cur_beta / beta_t, sample, std::sqrt(cur_alpha) * beta_prev / beta_t);
  if (t > 0) {
    const double variance = std::max(beta_prev / beta_t * cur_beta, 1e-20);
    prev_sample = ops::add(prev_sample, require_noise(noise, sample, step_index), std::sqrt(variance));
  }
  return prev_sample;
}

// ------------------------------------------------------------------------------------ PNDM
Pndm::Pndm(Context& ctx) : Base(ctx, "pndm", kAlphaOne) {}

void Pndm::set_timesteps(int64_t n) {
  check_count(cfg_, n);
  auto asc = discrete_timesteps(cfg_, n);
  std::reverse(asc.begin(), asc.end());
  // PLMS repeats the second-to-last training-order timestep: its first step is a two-evaluation
  // (Heun-like) warm-up.
  std::vector<int64_t> plms(asc.begin(), asc.end() - 1);
  if (asc.size() >= 2) plms.push_back(asc[asc.size() - 2]);
  plms.push_back(asc.back());
  ts_.assign(plms.rbegin(), plms.rend());
  num_steps_ = n;
  ets_.clear();
  cur_sample_ = Tensor();
  counter_ = 0;
  next_ = -1;
}

Tensor Pndm::timesteps() {
  require_steps();
  return vec_tensor(as_double(ts_));
}

Tensor Pndm::sigmas() { return vec_tensor({}); }

Tensor Pndm::scale_model_input(const Tensor& sample, int64_t step_index) {
  require_index(step_index, static_cast<int64_t>(ts_.size()));
  return sample;
}

Tensor Pndm::step(const Tensor& model_output, int64_t step_index, const Tensor& sample_in, const Tensor&) {
  require_index(step_index, static_cast<int64_t>(ts_.size()));
  require_same_shape(model_output, "model_output", sample_in, "sample");
  if (enter(step_index)) {
    ets_.clear();
    cur_sample_ = Tensor();
    counter_ = 0;
  }
  const int64_t ratio = cfg_.num_train_timesteps / num_steps_;
  int64_t t = ts_[static_cast<size_t>(step_index)];
  int64_t prev = t - ratio;
  if (counter_ != 1) {
    while (ets_.size() > 3) ets_.pop_front();
    ets_.push_back(model_output);
  } else {
    prev = t;
    t = t + ratio;
  }
  Tensor mo = model_output, sample = sample_in;
  const size_t n = ets_.size();
  if (n == 1 && counter_ == 0) {
    cur_sample_ = sample;
  } else if (n == 1 && counter_ == 1) {
    mo = (model_output + ets_.back()) / 2.0;
    sample = cur_sample_;
    cur_sample_ = Tensor();
  } else if (n == 2) {
    mo = lin(ets_[1], 1.5, ets_[0], -0.5);
  } else if (n == 3) {
    mo = ops::add(lin(ets_[2], 23.0 / 12, ets_[1], -16.0 / 12), ets_[0], 5.0 / 12);
  } else {
    mo = ops::add(ops::add(lin(ets_[3], 55.0 / 24, ets_[2], -59.0 / 24), ets_[1], 37.0 / 24), ets_[0], -9.0 / 24);
  }
  // x_prev from x_t and an epsilon estimate: eq. (9) of Liu et al. (PNDM).
  const double a_t = acp_at(t);
  const double a_prev = prev >= 0 ? acp_at(prev) : (cfg_.set_alpha_to_one ? 1.0 : acp_[0]);
  const double b_t = 1 - a_t, b_prev = 1 - a_prev;
  if (cfg_.v_prediction) mo = lin(mo, std::sqrt(a_t), sample, std::sqrt(b_t));
  const double sample_coeff = std::sqrt(a_prev / a_t);
  const double denom = a_t * std::sqrt(b_prev) + std::sqrt(a_t * b_t * a_prev);
  ++counter_;
  return lin(sample, sample_coeff, mo, -(a_prev - a_t) / denom);
}

}  // namespace sumi::sched
