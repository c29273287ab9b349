// D-Adaptation Lion as dadaptation 3.1's DAdaptLion: Lion steps of size dlr = d*lr taken at once,
// parameter by parameter, while the estimate of d accumulates; the momentum carries dlr, the
// gradient does not. One lr for all groups (the largest; others may only be 0). Unlike the other
// D-adaptation optimizers the parameters have already moved when a step without signal returns.
#include "optimizers.h"

#include <limits>

#include <cmath>

namespace sumi::optim {
namespace {

class DAdaptLion : public Optimizer {
 public:
  explicit DAdaptLion(Context& ctx)
      : ctx_(ctx), weight_decay_(ctx.get_double("weight_decay")), d0_(ctx.get_double("d0")), log_every_(ctx.get_int("log_every")) {
    const auto b = betas(ctx, "dadaptlion", 2);
    beta1_ = b[0];
    beta2_ = b[1];
    check_d_estimate("dadaptlion", d0_, std::numeric_limits<double>::infinity(), log_every_);
    if (ctx.get_bool("fsdp_in_use"))
      bad_arg("dadaptlion", "fsdp_in_use=True is not supported: sumi does not shard parameters; leave it False");
  }

  void add_param_group(const std::string& group, std::vector<Tensor> params) override {
    if (!d_.defined()) {
      d_ = Scalar(ctx_, "d", d0_);
      k_ = Scalar(ctx_, "k", 0.0);
      numerator_weighted_ = Scalar(ctx_, "numerator_weighted", 0.0);
    }
    std::vector<Entry> entries;
    for (const auto& s : make_slots(group, params))
      entries.push_back({s.param, ctx_.state(s.prefix + "exp_avg", ops::zeros_like(s.param)),
                         ctx_.state(s.prefix + "s", ops::zeros_like(s.param))});
    groups_.push_back(std::move(entries));
  }

  void step(const std::vector<double>& lrs) override {
    check_lrs("dadaptlion", lrs, groups_.size());
    NoGradGuard no_grad;
    const double lr = shared_lr("dadaptlion", lrs);
    double d = d_.get();
    const double k = k_.get();
    const double dlr = d * lr;
    const double sqrt_beta2 = std::sqrt(beta2_);
    double numerator_acum = 0, sk_l1 = 0;
    for (auto& entries : groups_) {
      for (auto& e : entries) {
        const Tensor grad = e.param.grad();
        if (!grad.defined()) continue;
        ops::mul_(e.param, 1 - dlr * weight_decay_);
        Tensor update = ops::clone(e.exp_avg);
        ops::mul_(update, beta1_);
        ops::add_(update, grad, 1 - beta1_);
        update = sign(update);
        ops::add_(e.param, update, -dlr);
        ops::mul_(e.exp_avg, beta2_);
        ops::add_(e.exp_avg, grad, (1 - beta2_) * dlr);
        numerator_acum += dlr * dot(update, e.s);
        ops::mul_(e.s, sqrt_beta2);
        ops::add_(e.s, update, (1 - sqrt_beta2) * dlr);
        sk_l1 += abs_sum(e.s);
      }
    }
    const double numerator_weighted = sqrt_beta2 * numerator_weighted_.get() + (1 - sqrt_beta2) * numerator_acum;
    if (sk_l1 == 0) return;  // the parameters have moved; d, the numerator and k stay (as in the reference)
    double d_hat = d;
    if (lr > 0) {
      d_hat = numerator_weighted / ((1 - sqrt_beta2) * sk_l1);
      d = std::max(d, d_hat);
    }
    if (log_every_ > 0 && static_cast<int64_t>(k) % log_every_ == 0)
      log_info("dadaptlion: step " + std::to_string(static_cast<int64_t>(k)) + ", lr " + std::to_string(lr) + ", dlr " +
               std::to_string(dlr) + ", d_hat " + std::to_string(d_hat) + ", d " + std::to_string(d));
    numerator_weighted_.set(numerator_weighted);
    d_.set(d);
    k_.set(k + 1);
  }

 private:
  struct Entry {
    Tensor param, exp_avg, s;
  };
  Context ctx_;
  double beta1_ = 0.9, beta2_ = 0.99, weight_decay_, d0_;
  int64_t log_every_;
  Scalar d_, k_, numerator_weighted_;
  std::vector<std::vector<Entry>> groups_;
};

const sumi_param_spec kParams[] = {
    sumi::param("betas", SUMI_PARAM_DOUBLE_LIST, "0.9,0.99", "Lion's interpolation factors for the update's sign and the momentum."),
    sumi::param("weight_decay", SUMI_PARAM_DOUBLE, "0", "Decoupled weight decay: p <- p * (1 - dlr * weight_decay)."),
    sumi::param("d0", SUMI_PARAM_DOUBLE, "1e-6", "Initial estimate of d."),
    sumi::param("log_every", SUMI_PARAM_INT, "0", "Log d every this many steps (0 = never)."),
    sumi::param("fsdp_in_use", SUMI_PARAM_BOOL, "false", "Sharded parameters: not supported, must stay false."),
};

}  // namespace

sumi_component dadapt_lion_component() {
  return sumi::component<DAdaptLion>("dadaptlion", "D-Adaptation Lion, as dadaptation 3.1's DAdaptLion; use lr 1.0.", kParams);
}

}  // namespace sumi::optim
