// Lion (Chen et al. 2023) as lion-pytorch 0.0.6, kohya's --optimizer_type Lion: decoupled decay
// on the old parameter, the sign of the interpolation of the old momentum and the gradient, then
// the momentum update. Interpolations are lerps, as in the library.
#include "optimizers.h"

namespace sumi::optim {
namespace {

class Lion : public Optimizer {
 public:
  explicit Lion(Context& ctx) : ctx_(ctx), weight_decay_(ctx.get_double("weight_decay")) {
    const auto b = betas(ctx, "lion", 2);
    beta1_ = b[0];
    beta2_ = b[1];
    if (weight_decay_ < 0) bad_arg("lion", "weight_decay must be >= 0, got " + std::to_string(weight_decay_));
  }

  void add_param_group(const std::string& group, std::vector<Tensor> params) override {
    std::vector<Entry> entries;
    for (const auto& s : make_slots(group, params))
      entries.push_back({s.param, ctx_.state(s.prefix + "exp_avg", ops::zeros_like(s.param))});
    groups_.push_back(std::move(entries));
  }

  void step(const std::vector<double>& lrs) override {
    check_lrs("lion", lrs, groups_.size());
    NoGradGuard no_grad;
    for (size_t g = 0; g < groups_.size(); ++g) {
      const double lr = lrs[g];
      for (auto& e : groups_[g]) {
        const Tensor grad = e.param.grad();
        if (!grad.defined()) continue;
        ops::mul_(e.param, 1 - lr * weight_decay_);
        Tensor update = ops::clone(e.exp_avg);
        ops::lerp_(update, grad, 1 - beta1_);
        ops::add_(e.param, sign(update), -lr);
        ops::lerp_(e.exp_avg, grad, 1 - beta2_);
      }
    }
  }

 private:
  struct Entry {
    Tensor param, exp_avg;
  };
  Context ctx_;
  double beta1_ = 0.9, beta2_ = 0.99, weight_decay_ = 0;
  std::vector<std::vector<Entry>> groups_;
};

const sumi_param_spec kParams[] = {
    sumi::param("betas", SUMI_PARAM_DOUBLE_LIST, "0.9,0.99",
                "beta1 interpolates momentum and gradient for the update's sign, beta2 the momentum itself."),
    sumi::param("weight_decay", SUMI_PARAM_DOUBLE, "0", "Decoupled weight decay: p <- p * (1 - lr * weight_decay)."),
};

}  // namespace

sumi_component lion_component() {
  return sumi::component<Lion>("lion", "Lion, as lion-pytorch 0.0.6 (kohya's Lion): sign of interpolated momentum.", kParams);
}

}  // namespace sumi::optim
