// D-Adaptation Adam (Defazio & Mishchenko 2023) as dadaptation 3.1: DAdaptAdam, and the
// preprint's variant dadaptation.experimental.DAdaptAdamPreprint (kohya's "DAdaptation").
// Both estimate d from the running sum s of dlr-weighted gradients; the moments carry dlr, so
// the update is m / (sqrt(v) + eps). dlr uses the d from before the step.
#include "optimizers.h"

#include <cmath>

namespace sumi::optim {
namespace {

struct AdamEntry {
  Tensor param, step, s, exp_avg, exp_avg_sq;
};

class DAdaptAdamBase : public Optimizer {
 public:
  DAdaptAdamBase(Context& ctx, const char* name, bool preprint)
      : ctx_(ctx),
        name_(name),
        preprint_(preprint),
        eps_(ctx.get_double("eps")),
        weight_decay_(ctx.get_double("weight_decay")),
        d0_(ctx.get_double("d0")),
        growth_rate_(ctx.get_double("growth_rate")),
        decouple_(ctx.get_bool("decouple")),
        log_every_(ctx.get_int("log_every")) {
    const auto b = betas(ctx, name, 2);
    beta1_ = b[0];
    beta2_ = b[1];
    if (!(eps_ > 0)) bad_arg(name, "eps must be > 0, got " + std::to_string(eps_));
    check_d_estimate(name, d0_, growth_rate_, log_every_);
    if (ctx.get_bool("fsdp_in_use"))
      bad_arg(name, "fsdp_in_use=True is not supported: sumi does not shard parameters; leave it False");
    if (decouple_) log_info(std::string(name) + ": using decoupled weight decay");
  }

  void add_param_group(const std::string& group, std::vector<Tensor> params) override {
    if (!d_.defined()) {
      d_ = Scalar(ctx_, "d", d0_);
      k_ = Scalar(ctx_, "k", 0.0);
      weighted_ = Scalar(ctx_, preprint_ ? "gsq_weighted" : "numerator_weighted", 0.0);
    }
    std::vector<AdamEntry> entries;
    for (const auto& s : make_slots(group, params)) {
      AdamEntry e;
      e.param = s.param;
      e.step = ctx_.state(s.prefix + "step", ops::zeros({}, dtype::f64));
      e.s = ctx_.state(s.prefix + "s", ops::zeros_like(s.param));
      e.exp_avg = ctx_.state(s.prefix + "exp_avg", ops::zeros_like(s.param));
      e.exp_avg_sq = ctx_.state(s.prefix + "exp_avg_sq", ops::zeros_like(s.param));
      entries.push_back(std::move(e));
    }
    groups_.push_back(std::move(entries));
  }

  void step(const std::vector<double>& lrs) override {
    check_lrs(name_, lrs, groups_.size());
    NoGradGuard no_grad;
    const double lr = shared_lr(name_, lrs);
    const double k = k_.get();
    double d = d_.get();
    const double bias_correction =
        use_bias_correction_ ? std::sqrt(1 - std::pow(beta2_, k + 1)) / (1 - std::pow(beta1_, k + 1)) : 1.0;
    const double dlr = d * lr * bias_correction;
    const double sqrt_beta2 = std::sqrt(beta2_);
    // DAdaptAdam: the numerator <g, s/(sqrt(v)+eps)> with the old s and v, s decays by sqrt(beta2).
    // Preprint: |g|^2 and |s|^2 weighted by the new v, s decays by beta2.
    double numerator_acum = 0, g_sq = 0, sksq_weighted = 0, sk_l1 = 0;
    for (size_t g = 0; g < groups_.size(); ++g) {
      for (auto& e : groups_[g]) {
        Tensor grad = e.param.grad();
        if (!grad.defined()) continue;
        if (weight_decay_ != 0 && !decouple_) ops::add_(grad, e.param, weight_decay_);
        if (!(lrs[g] > 0)) continue;
        if (!preprint_) {
          const Tensor denom = ops::add(ops::sqrt(e.exp_avg_sq), eps_);
          numerator_acum += dlr * dot(grad, ops::div(e.s, denom));
          ops::mul_(e.exp_avg, beta1_);
          ops::add_(e.exp_avg, grad, dlr * (1 - beta1_));
          ops::mul_(e.exp_avg_sq, beta2_);
          ops::addcmul_(e.exp_avg_sq, grad, grad, 1 - beta2_);
          ops::mul_(e.s, sqrt_beta2);
          ops::add_(e.s, grad, dlr * (1 - sqrt_beta2));
        } else {
          const Tensor grad_grad = ops::mul(grad, grad);
          ops::mul_(e.exp_avg, beta1_);
          ops::add_(e.exp_avg, grad, dlr * (1 - beta1_));
          ops::mul_(e.exp_avg_sq, beta2_);
          ops::add_(e.exp_avg_sq, grad_grad, 1 - beta2_);
          const Tensor denom = ops::add(ops::sqrt(e.exp_avg_sq), eps_);
          g_sq += ops::sum(ops::div(grad_grad, denom)).item();
          ops::mul_(e.s, beta2_);
          ops::add_(e.s, grad, dlr * (1 - beta2_));
          sksq_weighted += ops::sum(ops::div(ops::mul(e.s, e.s), denom)).item();
        }
        sk_l1 += abs_sum(e.s);
      }
    }
    double weighted = weighted_.get();
    if (!preprint_)
      weighted = sqrt_beta2 * weighted + (1 - sqrt_beta2) * numerator_acum;
    else
      weighted = beta2_ * weighted + g_sq * (dlr * dlr) * (1 - beta2_);
    if (sk_l1 == 0) return;  // no signal yet: nothing moves, k does not advance
    double d_hat = d;
    if (lr > 0) {
      d_hat = !preprint_ ? weighted / ((1 - sqrt_beta2) * sk_l1) : (sksq_weighted / (1 - beta2_) - weighted) / sk_l1;
      d = std::max(d, std::min(d_hat, d * growth_rate_));
    }
    if (log_every_ > 0 && static_cast<int64_t>(k) % log_every_ == 0)
      log_info(std::string(name_) + ": step " + std::to_string(static_cast<int64_t>(k)) + ", lr " + std::to_string(lr) + ", dlr " +
               std::to_string(dlr) + ", d_hat " + std::to_string(d_hat) + ", d " + std::to_string(d));
    weighted_.set(weighted);
    d_.set(d);
    for (size_t g = 0; g < groups_.size(); ++g) {
      for (auto& e : groups_[g]) {
        if (!e.param.grad().defined()) continue;
        ops::add_(e.step, ops::ones_like(e.step));
        const Tensor denom = ops::add(ops::sqrt(e.exp_avg_sq), eps_);
        // The preprint decays only groups with lr > 0; DAdaptAdam decays every group.
        if (weight_decay_ != 0 && decouple_ && (!preprint_ || lrs[g] > 0)) ops::add_(e.param, e.param, -weight_decay_ * dlr);
        ops::addcdiv_(e.param, e.exp_avg, denom, -1.0);
      }
    }
    k_.set(k + 1);
  }

 protected:
  Context ctx_;
  const char* name_;
  bool preprint_;
  bool use_bias_correction_ = false;
  double beta1_ = 0.9, beta2_ = 0.999, eps_, weight_decay_, d0_, growth_rate_;
  bool decouple_;
  int64_t log_every_;
  Scalar d_, k_, weighted_;
  std::vector<std::vector<AdamEntry>> groups_;
};

class DAdaptAdam : public DAdaptAdamBase {
 public:
  explicit DAdaptAdam(Context& ctx) : DAdaptAdamBase(ctx, "dadaptadam", false) {
    use_bias_correction_ = ctx.get_bool("use_bias_correction");
  }
};

class DAdaptAdamPreprint : public DAdaptAdamBase {
 public:
  explicit DAdaptAdamPreprint(Context& ctx) : DAdaptAdamBase(ctx, "dadaptadampreprint", true) {}
};

#define SUMI_DADAPT_ADAM_COMMON                                                                                            \
  sumi::param("betas", SUMI_PARAM_DOUBLE_LIST, "0.9,0.999", "Coefficients of the running averages of the gradient and its square."), \
      sumi::param("eps", SUMI_PARAM_DOUBLE, "1e-8", "Term added to the denominator (must be > 0)."),                     \
      sumi::param("weight_decay", SUMI_PARAM_DOUBLE, "0", "Weight decay: added to the gradient, or decoupled with decouple=true."), \
      sumi::param("decouple", SUMI_PARAM_BOOL, "false", "AdamW-style decoupled weight decay."),                            \
      sumi::param("d0", SUMI_PARAM_DOUBLE, "1e-6", "Initial estimate of d."),                                              \
      sumi::param("growth_rate", SUMI_PARAM_DOUBLE, "inf", "Largest factor d may grow by in one step (inf = no limit)."),  \
      sumi::param("log_every", SUMI_PARAM_INT, "0", "Log d and dlr every this many steps (0 = never)."),                  \
      sumi::param("fsdp_in_use", SUMI_PARAM_BOOL, "false", "Sharded parameters: not supported, must stay false.")

const sumi_param_spec kAdamParams[] = {
    SUMI_DADAPT_ADAM_COMMON,
    sumi::param("use_bias_correction", SUMI_PARAM_BOOL, "false", "Adam's bias correction in the step size."),
};
const sumi_param_spec kPreprintParams[] = {SUMI_DADAPT_ADAM_COMMON};

}  // namespace

sumi_component dadapt_adam_component() {
  return sumi::component<DAdaptAdam>("dadaptadam", "D-Adaptation Adam, as dadaptation 3.1's DAdaptAdam; use lr 1.0.", kAdamParams);
}

sumi_component dadapt_adam_preprint_component() {
  return sumi::component<DAdaptAdamPreprint>(
      "dadaptadampreprint",
      "D-Adaptation Adam of the preprint, as dadaptation.experimental.DAdaptAdamPreprint (kohya's DAdaptation); use lr 1.0.",
      kPreprintParams);
}

}  // namespace sumi::optim
