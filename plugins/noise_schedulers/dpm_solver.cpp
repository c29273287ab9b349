// DPM-Solver (noise prediction) and DPM-Solver++ (data prediction), multistep and singlestep,
// with the midpoint solver type, on the discrete schedule: like diffusers 0.21 they step between
// integer timesteps and use alpha_t = sqrt(acp[t]), sigma_t = sqrt(1 - acp[t]) and
// lambda_t = log(alpha_t / sigma_t), Karras sigmas only choosing the (rounded) timesteps.
#include "samplers.h"

#include <algorithm>
#include <cmath>
#include <set>

namespace sumi::sched {

DpmSolver::DpmSolver(Context& ctx, const char* name, bool singlestep)
    : Base(ctx, name, kKarras | kSolver), singlestep_(singlestep) {}

double DpmSolver::alpha(int64_t t) const { return std::sqrt(acp_at(t)); }
double DpmSolver::sigma(int64_t t) const { return std::sqrt(1 - acp_at(t)); }
double DpmSolver::lambda(int64_t t) const { return std::log(alpha(t)) - std::log(sigma(t)); }

void DpmSolver::set_timesteps(int64_t n) {
  const int64_t N = cfg_.num_train_timesteps;
  if (n < 1 || n > N) fail(cfg_, "num_inference_steps must be in [1, " + std::to_string(N) + "], got " + std::to_string(n));
  std::vector<int64_t> ts;
  if (cfg_.karras) {
    // the Karras ramp between the training extremes, mapped back to rounded timesteps
    const auto table = sigma_table(acp_);
    std::vector<double> logs;
    for (double s : table) logs.push_back(static_cast<double>(static_cast<float>(std::log(s))));
    for (double s : karras(table.front(), table.back(), n)) ts.push_back(static_cast<int64_t>(std::nearbyint(sigma_to_t(s, logs))));
    std::reverse(ts.begin(), ts.end());
  } else if (cfg_.spacing == "linspace") {
    // n + 1 points over [0, N - 1], the last (0) dropped
    const double step = static_cast<double>(N - 1) / static_cast<double>(n);
    for (int64_t i = n; i >= 1; --i)
      ts.push_back(static_cast<int64_t>(std::nearbyint(i == n ? static_cast<double>(N - 1) : static_cast<double>(i) * step)));
  } else if (cfg_.spacing == "leading") {
    const int64_t ratio = N / (n + 1);
    for (int64_t i = n; i >= 1; --i) ts.push_back(i * ratio + cfg_.steps_offset);
  } else {
    for (int64_t t : discrete_timesteps(cfg_, n)) ts.push_back(t);
  }
  for (int64_t t : ts)
    if (t < 0 || t >= N)
      fail(cfg_, std::to_string(n) + " steps with timestep_spacing " + cfg_.spacing + " and steps_offset " +
                     std::to_string(cfg_.steps_offset) + " give timestep " + std::to_string(t) + ", outside [0, " +
                     std::to_string(N - 1) + "]");
  if (!singlestep_) {
    // many steps can round to the same timestep; diffusers keeps the first of each
    std::set<int64_t> seen;
    std::vector<int64_t> unique;
    for (int64_t t : ts)
      if (seen.insert(t).second) unique.push_back(t);
    ts = unique;
  }
  ts_ = ts;
  num_steps_ = static_cast<int64_t>(ts_.size());
  outputs_.assign(static_cast<size_t>(cfg_.solver_order), Tensor());
  single_sample_ = Tensor();
  lower_order_nums_ = 0;
  next_ = -1;
  if (singlestep_) {
    const int64_t order = cfg_.solver_order, steps = num_steps_;
    // diffusers forces lower_order_final when the steps do not divide evenly
    const bool lof = cfg_.lower_order_final || steps % order != 0;
    std::vector<int> o;
    auto rep = [&](std::initializer_list<int> pat, int64_t times) {
      for (int64_t k = 0; k < times; ++k) o.insert(o.end(), pat);
    };
    if (order == 1) rep({1}, steps);
    else if (order == 2) {
      rep({1, 2}, steps / 2);
      if (lof && steps % 2) o.push_back(1);
    } else if (!lof) {
      rep({1, 2, 3}, steps / 3);
    } else if (steps % 3 == 0) {
      rep({1, 2, 3}, steps / 3 - 1);
      o.insert(o.end(), {1, 2, 1});
    } else {
      rep({1, 2, 3}, steps / 3);
      if (steps % 3 == 1) o.push_back(1);
      else o.insert(o.end(), {1, 2});
    }
    order_list_ = o;
  }
}

Tensor DpmSolver::timesteps() {
  require_steps();
  return vec_tensor(std::vector<double>(ts_.begin(), ts_.end()));
}

// The sigmas the steps move between: sigma_t / alpha_t at each timestep, then at timestep 0
// where the last step lands.
Tensor DpmSolver::sigmas() {
  require_steps();
  std::vector<double> s;
  for (int64_t t : ts_) s.push_back(sigma(t) / alpha(t));
  s.push_back(sigma(0) / alpha(0));
  return vec_tensor(s);
}

Tensor DpmSolver::scale_model_input(const Tensor& sample, int64_t step_index) {
  require_index(step_index, num_steps_);
  return sample;
}

Tensor DpmSolver::convert(const Tensor& mo, int64_t t, const Tensor& sample) const {
  const double a = alpha(t), s = sigma(t);
  if (cfg_.dpmsolver_pp) {  // data prediction x0
    if (cfg_.v_prediction) return lin(sample, a, mo, -s);
    return (sample - mo * s) / a;
  }
  if (cfg_.v_prediction) return lin(mo, a, sample, s);  // noise prediction
  return mo;
}

// One update to `prev_t` from the sample at ts.front() using outputs at `ts` (oldest first).
Tensor DpmSolver::update(int order, const std::vector<int64_t>& ts, int64_t prev_t, const Tensor& sample) const {
  const bool pp = cfg_.dpmsolver_pp;
  const size_t n_out = outputs_.size();
  auto out = [&](size_t back) -> const Tensor& { return outputs_[n_out - 1 - back]; };  // 0 = newest
  const int64_t s_first = singlestep_ ? ts.front() : ts.back();  // where `sample` lives
  const double lt = lambda(prev_t), at = alpha(prev_t), st = sigma(prev_t);
  const double h = lt - lambda(s_first);
  const double base = pp ? st / sigma(s_first) : at / alpha(s_first);
  const double c1 = pp ? -at * (std::exp(-h) - 1.0) : -st * (std::exp(h) - 1.0);
  if (order == 1) return lin(sample, base, out(0), c1);
  if (!singlestep_) {
    const double ls0 = lambda(ts[ts.size() - 1]), ls1 = lambda(ts[ts.size() - 2]);
    const double r0 = (ls0 - ls1) / h;
    const Tensor D0 = out(0), D1 = (out(0) - out(1)) * (1.0 / r0);
    if (order == 2) return ops::add(lin(sample, base, D0, c1), D1, 0.5 * c1);
    const double ls2 = lambda(ts[ts.size() - 3]);
    const double r1 = (ls1 - ls2) / h;
    const Tensor D1_1 = (out(1) - out(2)) * (1.0 / r1);
    const Tensor D1f = ops::add(D1, D1 - D1_1, r0 / (r0 + r1));
    const Tensor D2 = (D1 - D1_1) * (1.0 / (r0 + r1));
    const double c2 = pp ? at * ((std::exp(-h) - 1.0) / h + 1.0) : -st * ((std::exp(h) - 1.0) / h - 1.0);
    const double c3 = pp ? -at * ((std::exp(-h) - 1.0 + h) / (h * h) - 0.5) : -st * ((std::exp(h) - 1.0 - h) / (h * h) - 0.5);
    return ops::add(ops::add(lin(sample, base, D0, c1), D1f, c2), D2, c3);
  }
  if (order == 2) {
    // singlestep: the sample sits at ts[-2] (= s1), the newest output at s0
    const double ls0 = lambda(ts[1]), ls1 = lambda(ts[0]);
    const double r0 = (ls0 - ls1) / h;
    const Tensor D0 = out(1), D1 = (out(0) - out(1)) * (1.0 / r0);
    return ops::add(lin(sample, base, D0, c1), D1, 0.5 * c1);
  }
  const double ls0 = lambda(ts[2]), ls2 = lambda(ts[0]);
  // the midpoint variant uses only the newest and the oldest output
  const double r0 = (ls0 - ls2) / h;
  const Tensor D0 = out(2);
  const Tensor D1_1 = (out(0) - out(2)) * (1.0 / r0);
  const double c2 = pp ? at * ((std::exp(-h) - 1.0) / h + 1.0) : -st * ((std::exp(h) - 1.0) / h - 1.0);
  return ops::add(lin(sample, base, D0, c1), D1_1, c2);
}

Tensor DpmSolver::step(const Tensor& model_output, int64_t step_index, const Tensor& sample, const Tensor&) {
  require_index(step_index, num_steps_);
  require_same_shape(model_output, "model_output", sample, "sample");
  if (enter(step_index)) {
    outputs_.assign(static_cast<size_t>(cfg_.solver_order), Tensor());
    single_sample_ = Tensor();
    lower_order_nums_ = 0;
  }
  const auto i = static_cast<size_t>(step_index);
  const int64_t t = ts_[i];
  const bool last = step_index == num_steps_ - 1;
  const int64_t prev_t = last ? 0 : ts_[i + 1];
  outputs_.pop_front();
  outputs_.push_back(convert(model_output, t, sample));

  if (singlestep_) {
    int order = order_list_[i];
    while (!outputs_[outputs_.size() - static_cast<size_t>(order)].defined()) --order;
    if (order == 1) single_sample_ = sample;
    std::vector<int64_t> ts;
    for (int k = order - 1; k >= 0; --k) ts.push_back(ts_[i - static_cast<size_t>(k)]);
    return update(order, ts, prev_t, single_sample_);
  }

  // with few steps the last steps drop to lower order, which is more stable there
  const bool few = cfg_.lower_order_final && num_steps_ < 15;
  const bool lower_final = last && few, lower_second = step_index == num_steps_ - 2 && few;
  int order;
  if (cfg_.solver_order == 1 || lower_order_nums_ < 1 || lower_final) order = 1;
  else if (cfg_.solver_order == 2 || lower_order_nums_ < 2 || lower_second) order = 2;
  else order = 3;
  std::vector<int64_t> ts;
  for (int k = order - 1; k >= 0; --k) ts.push_back(ts_[i - static_cast<size_t>(k)]);
  if (lower_order_nums_ < cfg_.solver_order) ++lower_order_nums_;
  return update(order, ts, prev_t, sample);
}

}  // namespace sumi::sched
