// D-Adaptation AdaGrad as dadaptation 3.1's DAdaptAdaGrad (dense gradients): the parameter is
// rebuilt from its initial value at every step, z = x0 - sk / (sqrt(alpha) + eps), with optional
// momentum towards z. The lr is group 0's for every group (the reference ignores the others).
#include "optimizers.h"

#include <cmath>

namespace sumi::optim {
namespace {

class DAdaptAdaGrad : public Optimizer {
 public:
  explicit DAdaptAdaGrad(Context& ctx)
      : ctx_(ctx),
        momentum_(ctx.get_double("momentum")),
        eps_(ctx.get_double("eps")),
        weight_decay_(ctx.get_double("weight_decay")),
        d0_(ctx.get_double("d0")),
        growth_rate_(ctx.get_double("growth_rate")),
        log_every_(ctx.get_int("log_every")) {
    if (!(eps_ > 0))
      bad_arg("dadaptadagrad", "eps must be > 0, got " + std::to_string(eps_) +
                                   " (dadaptation 3.1's default eps=0.0 fails its own check, which is why kohya's "
                                   "--optimizer_type DAdaptAdaGrad without eps crashes); pass e.g. --optimizer_args eps=1e-6");
    if (momentum_ < 0) bad_arg("dadaptadagrad", "momentum must be >= 0, got " + std::to_string(momentum_));
    check_d_estimate("dadaptadagrad", d0_, growth_rate_, log_every_);
  }

  void add_param_group(const std::string& group, std::vector<Tensor> params) override {
    if (!d_.defined()) {
      d_ = Scalar(ctx_, "d", d0_);
      k_ = Scalar(ctx_, "k", 0.0);
      gsq_weighted_ = Scalar(ctx_, "gsq_weighted", 0.0);
      sksq_weighted_ = Scalar(ctx_, "sksq_weighted", 0.0);
      skl1_ = Scalar(ctx_, "skl1", 0.0);
    }
    std::vector<Entry> entries;
    for (const auto& s : make_slots(group, params)) {
      Entry e;
      e.param = s.param;
      e.alphak = ctx_.state(s.prefix + "alphak", ops::add(ops::zeros_like(s.param), 1e-6));
      e.sk = ctx_.state(s.prefix + "sk", ops::zeros_like(s.param));
      e.x0 = ctx_.state(s.prefix + "x0", ops::detach(s.param));
      entries.push_back(std::move(e));
    }
    groups_.push_back(std::move(entries));
  }

  void step(const std::vector<double>& lrs) override {
    check_lrs("dadaptadagrad", lrs, groups_.size());
    NoGradGuard no_grad;
    const double lr = lrs.empty() ? 0.0 : lrs[0];
    const double ck = 1 - momentum_;
    double d = d_.get();
    const double k = k_.get();
    const double dlr = d * lr;
    double g_sq = 0, sksq_change = 0, skl1_change = 0;
    auto weighted_sq = [&](const Tensor& a, const Tensor& alphak) {
      return ops::sum(ops::div(ops::mul(a, a), ops::add(ops::sqrt(alphak), eps_))).item();
    };
    for (auto& entries : groups_) {
      for (auto& e : entries) {
        Tensor grad = e.param.grad();
        if (!grad.defined()) continue;
        if (weight_decay_ != 0) ops::add_(grad, e.param, weight_decay_);
        const double old_sksq = weighted_sq(e.sk, e.alphak);
        const double old_skl1 = abs_sum(e.sk);
        ops::add_(e.alphak, ops::mul(grad, grad));
        g_sq += weighted_sq(grad, e.alphak);
        ops::add_(e.sk, grad, dlr);
        sksq_change += weighted_sq(e.sk, e.alphak) - old_sksq;
        skl1_change += abs_sum(e.sk) - old_skl1;
      }
    }
    const double sksq_weighted = sksq_weighted_.get() + sksq_change;
    const double skl1 = skl1_.get() + skl1_change;
    if (skl1 == 0) return;  // no signal yet (alphak already holds this step's g^2, as in the reference)
    const double gsq_weighted = gsq_weighted_.get() + dlr * dlr * g_sq;
    double d_hat = d;
    if (lr > 0) {
      d_hat = (sksq_weighted - gsq_weighted) / skl1;
      d = std::max(d, std::min(d_hat, d * growth_rate_));
    }
    if (log_every_ > 0 && static_cast<int64_t>(k) % log_every_ == 0)
      log_info("dadaptadagrad: step " + std::to_string(static_cast<int64_t>(k)) + ", d_hat " + std::to_string(d_hat) + ", d " +
               std::to_string(d) + ", lr " + std::to_string(lr));
    gsq_weighted_.set(gsq_weighted);
    skl1_.set(skl1);
    sksq_weighted_.set(sksq_weighted);
    d_.set(d);
    for (auto& entries : groups_) {
      for (auto& e : entries) {
        if (!e.param.grad().defined()) continue;
        const Tensor z = ops::sub(e.x0, ops::div(e.sk, ops::add(ops::sqrt(e.alphak), eps_)));
        if (momentum_ != 0) {
          ops::mul_(e.param, 1 - ck);
          ops::add_(e.param, z, ck);
        } else {
          ops::copy_(e.param, z);
        }
      }
    }
    k_.set(k + 1);
  }

 private:
  struct Entry {
    Tensor param, alphak, sk, x0;
  };
  Context ctx_;
  double momentum_, eps_, weight_decay_, d0_, growth_rate_;
  int64_t log_every_;
  Scalar d_, k_, gsq_weighted_, sksq_weighted_, skl1_;
  std::vector<std::vector<Entry>> groups_;
};

const sumi_param_spec kParams[] = {
    sumi::param("momentum", SUMI_PARAM_DOUBLE, "0", "Momentum towards the AdaGrad point z (p <- momentum*p + (1-momentum)*z)."),
    sumi::param("eps", SUMI_PARAM_DOUBLE, "0",
                "Denominator term; must be given and > 0, e.g. eps=1e-6 (the default 0.0 is dadaptation 3.1's, which "
                "refuses it: kohya's DAdaptAdaGrad without eps crashes; sumi refuses at start-up)."),
    sumi::param("weight_decay", SUMI_PARAM_DOUBLE, "0", "L2 penalty added to the gradient."),
    sumi::param("d0", SUMI_PARAM_DOUBLE, "1e-6", "Initial estimate of d."),
    sumi::param("growth_rate", SUMI_PARAM_DOUBLE, "inf", "Largest factor d may grow by in one step (inf = no limit)."),
    sumi::param("log_every", SUMI_PARAM_INT, "0", "Log d every this many steps (0 = never)."),
};

}  // namespace

sumi_component dadapt_adagrad_component() {
  return sumi::component<DAdaptAdaGrad>("dadaptadagrad",
                                        "D-Adaptation AdaGrad, as dadaptation 3.1's DAdaptAdaGrad; uses the first group's lr for all.",
                                        kParams);
}

}  // namespace sumi::optim
