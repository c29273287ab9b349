// AdamW with the exact update order of torch.optim.AdamW (PyTorch 1.13 single-tensor path):
// decay the weights, update the moments, then step by lr / bias_correction1 over
// sqrt(v) / sqrt(bias_correction2) + eps.
#include "optimizers.h"

#include <cmath>

namespace sumi::optim {

AdamW::AdamW(Context& ctx)
    : ctx_(ctx), eps_(ctx.get_double("eps")), weight_decay_(ctx.get_double("weight_decay")), amsgrad_(ctx.get_bool("amsgrad")) {
  const auto betas = ctx.get_double_list("betas");
  if (betas.size() != 2)
    throw Error(SUMI_ERR_INVALID_ARGUMENT, "adamw: betas takes two values (e.g. \"0.9,0.999\"), got " +
                                               std::to_string(betas.size()));
  beta1_ = betas[0];
  beta2_ = betas[1];
  for (double b : betas)
    if (b < 0 || b >= 1) throw Error(SUMI_ERR_INVALID_ARGUMENT, "adamw: each beta must be in [0, 1), got " + std::to_string(b));
  if (eps_ < 0) throw Error(SUMI_ERR_INVALID_ARGUMENT, "adamw: eps must be >= 0");
}

void AdamW::add_param_group(const std::string& group, std::vector<Tensor> params) {
  std::vector<Entry> entries;
  for (const auto& s : make_slots(group, params)) {
    Entry e;
    e.param = s.param;
    e.exp_avg = ctx_.state(s.prefix + "exp_avg", ops::zeros_like(s.param));
    e.exp_avg_sq = ctx_.state(s.prefix + "exp_avg_sq", ops::zeros_like(s.param));
    if (amsgrad_) e.max_exp_avg_sq = ctx_.state(s.prefix + "max_exp_avg_sq", ops::zeros_like(s.param));
    e.steps = ctx_.state(s.prefix + "step", ops::zeros({}, dtype::f64));
    entries.push_back(std::move(e));
  }
  groups_.push_back(std::move(entries));
}

void AdamW::step(const std::vector<double>& lrs) {
  if (lrs.size() != groups_.size())
    throw Error(SUMI_ERR_INVALID_ARGUMENT, "adamw: got " + std::to_string(lrs.size()) + " learning rates for " +
                                               std::to_string(groups_.size()) + " groups");
  NoGradGuard no_grad;
  for (size_t g = 0; g < groups_.size(); ++g) {
    const double lr = lrs[g];
    for (auto& e : groups_[g]) {
      const Tensor grad = e.param.grad();
      if (!grad.defined()) continue;
      ops::add_(e.steps, ops::ones_like(e.steps));
      const double step = e.steps.item();
      ops::mul_(e.param, 1 - lr * weight_decay_);
      ops::mul_(e.exp_avg, beta1_);
      ops::add_(e.exp_avg, grad, 1 - beta1_);
      ops::mul_(e.exp_avg_sq, beta2_);
      ops::addcmul_(e.exp_avg_sq, grad, grad, 1 - beta2_);
      const double bias_correction1 = 1 - std::pow(beta1_, step);
      const double bias_correction2 = 1 - std::pow(beta2_, step);
      const double step_size = lr / bias_correction1;
      const double bc2_sqrt = std::sqrt(bias_correction2);
      Tensor denom;
      if (amsgrad_) {
        ops::copy_(e.max_exp_avg_sq, ops::maximum(e.max_exp_avg_sq, e.exp_avg_sq));
        denom = ops::add(ops::sqrt(e.max_exp_avg_sq) / bc2_sqrt, eps_);
      } else {
        denom = ops::add(ops::sqrt(e.exp_avg_sq) / bc2_sqrt, eps_);
      }
      ops::addcdiv_(e.param, e.exp_avg, denom, -step_size);
    }
  }
}

}  // namespace sumi::optim
