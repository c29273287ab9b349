// D-Adaptation Adan as dadaptation 3.1's DAdaptAdan, and dadaptation.experimental.DAdaptAdanIP
// (the inner-product estimate). Group 0's lr is used for every group (the reference ignores the
// others); the decay is proximal, p <- (p - update) / (1 + dlr*wd), unless no_prox.
//
// DAdaptAdanIP keeps the reference's swapped state names: its "exp_avg_diff" holds the average
// of the squared update n and its "exp_avg_sq" the gradient-difference average, so that a state
// saved by one reads like the other. Its numerator is a float32 tensor in the reference: d and
// numerator_weighted are rounded to float32 where the reference's become float32 tensors.
#include "optimizers.h"

#include <cmath>

namespace sumi::optim {
namespace {

double f32(double x) { return static_cast<double>(static_cast<float>(x)); }

class DAdaptAdanBase : public Optimizer {
 public:
  DAdaptAdanBase(Context& ctx, const char* name, bool ip)
      : ctx_(ctx),
        name_(name),
        ip_(ip),
        eps_(ctx.get_double("eps")),
        weight_decay_(ctx.get_double("weight_decay")),
        d0_(ctx.get_double("d0")),
        growth_rate_(ctx.get_double("growth_rate")),
        no_prox_(ctx.get_bool("no_prox")),
        log_every_(ctx.get_int("log_every")) {
    const auto b = betas(ctx, name, 3);
    beta1_ = b[0];
    beta2_ = b[1];
    beta3_ = b[2];
    if (!(eps_ > 0)) bad_arg(name, "eps must be > 0, got " + std::to_string(eps_));
    check_d_estimate(name, d0_, growth_rate_, log_every_);
  }

  void add_param_group(const std::string& group, std::vector<Tensor> params) override {
    if (!d_.defined()) {
      d_ = Scalar(ctx_, "d", d0_);
      k_ = Scalar(ctx_, "k", 0.0);
      weighted_ = Scalar(ctx_, ip_ ? "numerator_weighted" : "gsq_weighted", 0.0);
    }
    std::vector<Entry> entries;
    for (const auto& s : make_slots(group, params)) {
      Entry e;
      e.param = s.param;
      e.step = ctx_.state(s.prefix + "step", ops::zeros({}, dtype::f64));
      e.s = ctx_.state(s.prefix + "s", ops::zeros_like(s.param));
      e.exp_avg = ctx_.state(s.prefix + "exp_avg", ops::zeros_like(s.param));
      e.exp_avg_diff = ctx_.state(s.prefix + (ip_ ? "exp_avg_sq" : "exp_avg_diff"), ops::zeros_like(s.param));
      e.exp_avg_sq = ctx_.state(s.prefix + (ip_ ? "exp_avg_diff" : "exp_avg_sq"), ops::zeros_like(s.param));
      e.pre_grad = ctx_.state(s.prefix + "pre_grad", ops::zeros_like(s.param));
      entries.push_back(std::move(e));
    }
    groups_.push_back(std::move(entries));
  }

  void step(const std::vector<double>& lrs) override {
    check_lrs(name_, lrs, groups_.size());
    NoGradGuard no_grad;
    const double lr = lrs.empty() ? 0.0 : lrs[0];
    double d = d_.get();
    const double k = k_.get();
    const double dlr = d * lr;
    double g_sq = 0, sksq_weighted = 0, sk_l1 = 0, numerator_acum = 0;
    for (auto& entries : groups_) {
      for (auto& e : entries) {
        const Tensor grad = e.param.grad();
        if (!grad.defined()) continue;
        if (e.step.item() == 0) ops::copy_(e.pre_grad, grad);
        const Tensor grad_diff = ops::sub(grad, e.pre_grad);
        const Tensor update = ops::add(grad, ops::mul(grad_diff, beta2_));
        if (ip_) {
          const Tensor denom = ops::add(ops::sqrt(e.exp_avg_sq), eps_);
          numerator_acum = f32(numerator_acum + f32(f32(dlr) * dot(grad, ops::div(e.s, denom))));
        }
        ops::mul_(e.exp_avg, beta1_);
        ops::add_(e.exp_avg, grad, dlr * (1. - beta1_));
        ops::mul_(e.exp_avg_diff, beta2_);
        ops::add_(e.exp_avg_diff, grad_diff, dlr * (1. - beta2_));
        ops::mul_(e.exp_avg_sq, beta3_);
        ops::add_(e.exp_avg_sq, ops::mul(update, update), 1. - beta3_);
        if (!ip_) {
          const Tensor denom = ops::add(ops::sqrt(e.exp_avg_sq), eps_);
          g_sq += ops::sum(ops::div(ops::mul(grad, grad), denom)).item();
        }
        ops::mul_(e.s, beta3_);
        ops::add_(e.s, grad, dlr * (1. - beta3_));
        if (!ip_) {
          const Tensor denom = ops::add(ops::sqrt(e.exp_avg_sq), eps_);
          sksq_weighted += ops::sum(ops::div(ops::mul(e.s, e.s), denom)).item();
        }
        sk_l1 += abs_sum(e.s);
      }
    }
    double weighted = weighted_.get();
    if (!ip_)
      weighted = beta3_ * weighted + g_sq * (dlr * dlr) * (1 - beta3_);
    else
      weighted = f32(beta3_ * weighted + (1 - beta3_) * numerator_acum);
    if (sk_l1 == 0) return;  // no signal yet (the moments already hold this step, as in the reference)
    double d_hat = d;
    if (lr > 0) {
      d_hat = !ip_ ? (sksq_weighted / (1 - beta3_) - weighted) / sk_l1 : f32(2 * (beta3_ / (1 - beta3_)) * weighted / sk_l1);
      d = std::max(d, std::min(d_hat, d * growth_rate_));
    }
    if (log_every_ > 0 && static_cast<int64_t>(k) % log_every_ == 0)
      log_info(std::string(name_) + ": step " + std::to_string(static_cast<int64_t>(k)) + ", lr " + std::to_string(lr) + ", dlr " +
               std::to_string(dlr) + ", d_hat " + std::to_string(d_hat) + ", d " + std::to_string(d));
    weighted_.set(weighted);
    d_.set(d);
    for (auto& entries : groups_) {
      for (auto& e : entries) {
        const Tensor grad = e.param.grad();
        if (!grad.defined()) continue;
        ops::add_(e.step, ops::ones_like(e.step));
        const Tensor denom = ops::add(ops::sqrt(e.exp_avg_sq), eps_);
        const Tensor update = ops::div(ops::add(e.exp_avg, ops::mul(e.exp_avg_diff, beta2_)), denom);
        if (no_prox_) {
          ops::mul_(e.param, 1 - dlr * weight_decay_);
          ops::add_(e.param, update, -1.0);
        } else {
          ops::add_(e.param, update, -1.0);
          static const Op div_("aten::div_", "Scalar");
          div_({e.param, 1 + dlr * weight_decay_});
        }
        ops::copy_(e.pre_grad, grad);
      }
    }
    k_.set(k + 1);
  }

 private:
  struct Entry {
    Tensor param, step, s, exp_avg, exp_avg_diff, exp_avg_sq, pre_grad;
  };
  Context ctx_;
  const char* name_;
  bool ip_;
  double beta1_ = 0.98, beta2_ = 0.92, beta3_ = 0.99, eps_, weight_decay_, d0_, growth_rate_;
  bool no_prox_;
  int64_t log_every_;
  Scalar d_, k_, weighted_;
  std::vector<std::vector<Entry>> groups_;
};

class DAdaptAdan : public DAdaptAdanBase {
 public:
  explicit DAdaptAdan(Context& ctx) : DAdaptAdanBase(ctx, "dadaptadan", false) {}
};

class DAdaptAdanIP : public DAdaptAdanBase {
 public:
  explicit DAdaptAdanIP(Context& ctx) : DAdaptAdanBase(ctx, "dadaptadanip", true) {}
};

const sumi_param_spec kParams[] = {
    sumi::param("betas", SUMI_PARAM_DOUBLE_LIST, "0.98,0.92,0.99",
                "Coefficients of the gradient, gradient-difference and squared-update averages."),
    sumi::param("eps", SUMI_PARAM_DOUBLE, "1e-8", "Term added to the denominator (must be > 0)."),
    sumi::param("weight_decay", SUMI_PARAM_DOUBLE, "0.02", "Decoupled weight decay (proximal unless no_prox)."),
    sumi::param("no_prox", SUMI_PARAM_BOOL, "false", "Decay as p*(1 - dlr*wd) before the update instead of the proximal division."),
    sumi::param("d0", SUMI_PARAM_DOUBLE, "1e-6", "Initial estimate of d."),
    sumi::param("growth_rate", SUMI_PARAM_DOUBLE, "inf", "Largest factor d may grow by in one step (inf = no limit)."),
    sumi::param("log_every", SUMI_PARAM_INT, "0", "Log d every this many steps (0 = never)."),
};

}  // namespace

sumi_component dadapt_adan_component() {
  return sumi::component<DAdaptAdan>("dadaptadan", "D-Adaptation Adan, as dadaptation 3.1's DAdaptAdan; uses the first group's lr for all.",
                                     kParams);
}

sumi_component dadapt_adan_ip_component() {
  return sumi::component<DAdaptAdanIP>(
      "dadaptadanip", "D-Adaptation Adan (inner-product estimate), as dadaptation.experimental.DAdaptAdanIP; first group's lr for all.",
      kParams);
}

}  // namespace sumi::optim
