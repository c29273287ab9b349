// D-Adaptation SGD as dadaptation 3.1's DAdaptSGD: z = x0 - s with s the dlr-weighted sum of
// gradients, dlr = d*lr / |g_0| (the first step's gradient norm, without weight decay), and
// momentum towards z. Weight decay and momentum are group 0's for every group; one lr for all
// groups (the largest; others may only be 0).
#include "optimizers.h"

#include <cmath>

namespace sumi::optim {
namespace {

class DAdaptSGD : public Optimizer {
 public:
  explicit DAdaptSGD(Context& ctx)
      : ctx_(ctx),
        momentum_(ctx.get_double("momentum")),
        weight_decay_(ctx.get_double("weight_decay")),
        d0_(ctx.get_double("d0")),
        growth_rate_(ctx.get_double("growth_rate")),
        log_every_(ctx.get_int("log_every")) {
    if (momentum_ < 0 || momentum_ >= 1) bad_arg("dadaptsgd", "momentum must be in [0, 1), got " + std::to_string(momentum_));
    check_d_estimate("dadaptsgd", d0_, growth_rate_, log_every_);
    if (ctx.get_bool("fsdp_in_use"))
      bad_arg("dadaptsgd", "fsdp_in_use=True is not supported: sumi does not shard parameters; leave it False");
  }

  void add_param_group(const std::string& group, std::vector<Tensor> params) override {
    if (!d_.defined()) {
      d_ = Scalar(ctx_, "d", d0_);
      k_ = Scalar(ctx_, "k", 0.0);
      numerator_weighted_ = Scalar(ctx_, "numerator_weighted", 0.0);
      g0_norm_ = Scalar(ctx_, "g0_norm", 0.0);
    }
    std::vector<Entry> entries;
    for (const auto& s : make_slots(group, params))
      entries.push_back({s.param, ctx_.state(s.prefix + "z", ops::detach(s.param)), ctx_.state(s.prefix + "s", ops::zeros_like(s.param)),
                         ctx_.state(s.prefix + "x0", ops::detach(s.param))});
    groups_.push_back(std::move(entries));
  }

  void step(const std::vector<double>& lrs) override {
    check_lrs("dadaptsgd", lrs, groups_.size());
    NoGradGuard no_grad;
    const double lr = shared_lr("dadaptsgd", lrs);
    const double ck = 1 - momentum_;
    const double k = k_.get();
    double d = d_.get();
    if (k == 0) {
      double g_sq = 0;
      for (size_t g = 0; g < groups_.size(); ++g)
        for (auto& e : groups_[g]) {
          const Tensor grad = e.param.grad();
          if (grad.defined() && lrs[g] > 0) g_sq += ops::sum(ops::mul(grad, grad)).item();
        }
      g0_norm_.set(std::sqrt(g_sq));
    }
    const double g0_norm = g0_norm_.get();
    if (g0_norm == 0)
      throw Error(SUMI_ERR_INVALID_ARGUMENT,
                  "dadaptsgd: the first step's gradient norm is 0 (every lr is 0, e.g. the first step of an lr warm-up, "
                  "or all gradients are zero); D-Adapt SGD divides by it (dadaptation raises ZeroDivisionError). "
                  "Use no --lr_warmup_steps with DAdaptSGD");
    const double dlr = d * lr / g0_norm;
    double numerator_weighted = numerator_weighted_.get(), sk_sq = 0;
    for (size_t g = 0; g < groups_.size(); ++g) {
      for (auto& e : groups_[g]) {
        Tensor grad = e.param.grad();
        if (!grad.defined()) continue;
        if (weight_decay_ != 0) ops::add_(grad, e.param, weight_decay_);
        if (lrs[g] > 0) {
          numerator_weighted += dlr * dot(grad, e.s);
          ops::add_(e.s, grad, dlr);
          sk_sq += ops::sum(ops::mul(e.s, e.s)).item();
        }
      }
    }
    double d_hat = d;
    if (lr > 0) {
      d_hat = 2 * numerator_weighted / std::sqrt(sk_sq);
      d = std::max(d, std::min(d_hat, d * growth_rate_));
    }
    if (sk_sq == 0) return;  // no signal: nothing moves, k does not advance
    if (log_every_ > 0 && static_cast<int64_t>(k) % log_every_ == 0)
      log_info("dadaptsgd: step " + std::to_string(static_cast<int64_t>(k)) + ", dlr " + std::to_string(dlr) + ", d_hat " +
               std::to_string(d_hat) + ", d " + std::to_string(d) + ", g0_norm " + std::to_string(g0_norm));
    numerator_weighted_.set(numerator_weighted);
    d_.set(d);
    for (auto& entries : groups_) {
      for (auto& e : entries) {
        if (!e.param.grad().defined()) continue;
        ops::copy_(e.z, ops::sub(e.x0, e.s));
        ops::mul_(e.param, 1 - ck);
        ops::add_(e.param, e.z, ck);
      }
    }
    k_.set(k + 1);
  }

 private:
  struct Entry {
    Tensor param, z, s, x0;
  };
  Context ctx_;
  double momentum_, weight_decay_, d0_, growth_rate_;
  int64_t log_every_;
  Scalar d_, k_, numerator_weighted_, g0_norm_;
  std::vector<std::vector<Entry>> groups_;
};

const sumi_param_spec kParams[] = {
    sumi::param("momentum", SUMI_PARAM_DOUBLE, "0", "Momentum towards z (p <- momentum*p + (1-momentum)*z)."),
    sumi::param("weight_decay", SUMI_PARAM_DOUBLE, "0", "L2 penalty added to the gradient (group 0's applies to all)."),
    sumi::param("d0", SUMI_PARAM_DOUBLE, "1e-6", "Initial estimate of d."),
    sumi::param("growth_rate", SUMI_PARAM_DOUBLE, "inf", "Largest factor d may grow by in one step (inf = no limit)."),
    sumi::param("log_every", SUMI_PARAM_INT, "0", "Log d every this many steps (0 = never)."),
    sumi::param("fsdp_in_use", SUMI_PARAM_BOOL, "false", "Sharded parameters: not supported, must stay false."),
};

}  // namespace

sumi_component dadapt_sgd_component() {
  return sumi::component<DAdaptSGD>("dadaptsgd", "D-Adaptation SGD, as dadaptation 3.1's DAdaptSGD; use lr 1.0, no lr warm-up.", kParams);
}

}  // namespace sumi::optim
