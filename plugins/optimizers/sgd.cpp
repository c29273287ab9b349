// SGD with the exact update order of torch.optim.SGD (PyTorch 1.13 single-tensor path).
#include "optimizers.h"

namespace sumi::optim {

Sgd::Sgd(Context& ctx)
    : ctx_(ctx),
      momentum_(ctx.get_double("momentum")),
      dampening_(ctx.get_double("dampening")),
      weight_decay_(ctx.get_double("weight_decay")),
      nesterov_(ctx.get_bool("nesterov")) {
  if (momentum_ < 0) throw Error(SUMI_ERR_INVALID_ARGUMENT, "sgd: momentum must be >= 0, got " + std::to_string(momentum_));
  if (nesterov_ && (momentum_ <= 0 || dampening_ != 0))
    throw Error(SUMI_ERR_INVALID_ARGUMENT, "sgd: nesterov needs momentum > 0 and dampening 0");
}

void Sgd::add_param_group(const std::string& group, std::vector<Tensor> params) {
  std::vector<Entry> entries;
  for (const auto& s : make_slots(group, params)) {
    Entry e;
    e.param = s.param;
    if (momentum_ != 0) {
      e.buf = ctx_.state(s.prefix + "momentum_buffer", ops::zeros_like(s.param));
      e.steps = ctx_.state(s.prefix + "step", ops::zeros({}, dtype::f64));
    }
    entries.push_back(std::move(e));
  }
  groups_.push_back(std::move(entries));
}

void Sgd::step(const std::vector<double>& lrs) {
  if (lrs.size() != groups_.size())
    throw Error(SUMI_ERR_INVALID_ARGUMENT, "sgd: got " + std::to_string(lrs.size()) + " learning rates for " +
                                               std::to_string(groups_.size()) + " groups");
  NoGradGuard no_grad;
  for (size_t g = 0; g < groups_.size(); ++g) {
    for (auto& e : groups_[g]) {
      Tensor d_p = e.param.grad();
      if (!d_p.defined()) continue;
      if (weight_decay_ != 0) d_p = ops::add(d_p, e.param, weight_decay_);
      if (momentum_ != 0) {
        const bool first = e.steps.item() == 0;
        if (first) {
          ops::copy_(e.buf, d_p);
        } else {
          ops::mul_(e.buf, momentum_);
          ops::add_(e.buf, d_p, 1 - dampening_);
        }
        ops::add_(e.steps, ops::ones_like(e.steps));
        d_p = nesterov_ ? ops::add(d_p, e.buf, momentum_) : e.buf;
      }
      ops::add_(e.param, d_p, -lrs[g]);
    }
  }
}

}  // namespace sumi::optim
