// Prodigy (Mishchenko & Defazio 2023) as prodigyopt 1.0, kohya's --optimizer_type Prodigy: Adam
// whose step size d is estimated from the distance travelled, <g, p0 - p> over |s|_1.
//
// Reference semantics kept on purpose: one lr for all groups (the largest; other groups may only
// be 0), d from before the step scales the update (dlr) while the new d enters the eps term, the
// per-tensor reductions are float32 turned into doubles, and a step with no signal (|s|_1 = 0, e.g.
// the first step of an lr warm-up) returns before anything moves or k advances.
#include "optimizers.h"

#include <cmath>
#include <limits>

namespace sumi::optim {
namespace {

class Prodigy : public Optimizer {
 public:
  explicit Prodigy(Context& ctx)
      : ctx_(ctx),
        eps_(ctx.get_double("eps")),
        weight_decay_(ctx.get_double("weight_decay")),
        d0_(ctx.get_double("d0")),
        d_coef_(ctx.get_double("d_coef")),
        growth_rate_(ctx.get_double("growth_rate")),
        decouple_(ctx.get_bool("decouple")),
        use_bias_correction_(ctx.get_bool("use_bias_correction")),
        safeguard_warmup_(ctx.get_bool("safeguard_warmup")),
        log_every_(ctx.get_int("log_every")) {
    const auto b = betas(ctx, "prodigy", 2);
    beta1_ = b[0];
    beta2_ = b[1];
    const double beta3 = ctx.get_double("beta3");
    if (beta3 < 0 || beta3 >= 1) bad_arg("prodigy", "beta3 must be in [0, 1) (0 = sqrt(beta2), prodigyopt's None), got " + std::to_string(beta3));
    beta3_ = beta3 == 0 ? std::sqrt(beta2_) : beta3;
    if (eps_ < 0) bad_arg("prodigy", "eps must be >= 0, got " + std::to_string(eps_));
    check_d_estimate("prodigy", d0_, growth_rate_, log_every_);
    if (weight_decay_ < 0) bad_arg("prodigy", "weight_decay must be >= 0, got " + std::to_string(weight_decay_));
    if (ctx.get_int("slice_p") != 1)
      bad_arg("prodigy", "slice_p=" + std::to_string(ctx.get_int("slice_p")) +
                             " is not supported: sumi implements prodigyopt 1.0, which estimates d from every element "
                             "(slice_p came with prodigyopt 1.1); leave it at 1");
    if (ctx.get_bool("fsdp_in_use"))
      bad_arg("prodigy", "fsdp_in_use=True is not supported: sumi does not shard parameters; leave it False");
    if (decouple_ && weight_decay_ > 0) log_info("prodigy: using decoupled weight decay");
  }

  void add_param_group(const std::string& group, std::vector<Tensor> params) override {
    if (!d_.defined()) {
      d_ = Scalar(ctx_, "d", d0_);
      d_max_ = Scalar(ctx_, "d_max", d0_);
      d_numerator_ = Scalar(ctx_, "d_numerator", 0.0);
      d_denom_ = Scalar(ctx_, "d_denom", 0.0);
      d_hat_ = Scalar(ctx_, "d_hat", 0.0);
      k_ = Scalar(ctx_, "k", 0.0);
    }
    std::vector<Entry> entries;
    for (const auto& s : make_slots(group, params)) {
      Entry e;
      e.param = s.param;
      e.step = ctx_.state(s.prefix + "step", ops::zeros({}, dtype::f64));
      e.s = ctx_.state(s.prefix + "s", ops::zeros_like(s.param));
      e.p0 = ctx_.state(s.prefix + "p0", ops::detach(s.param));
      e.exp_avg = ctx_.state(s.prefix + "exp_avg", ops::zeros_like(s.param));
      e.exp_avg_sq = ctx_.state(s.prefix + "exp_avg_sq", ops::zeros_like(s.param));
      entries.push_back(std::move(e));
    }
    groups_.push_back(std::move(entries));
  }

  void step(const std::vector<double>& lrs) override {
    check_lrs("prodigy", lrs, groups_.size());
    NoGradGuard no_grad;
    const double lr = shared_lr("prodigy", lrs);
    const double k = k_.get();
    double d = d_.get();
    double d_max = d_max_.get();
    const double bias_correction =
        use_bias_correction_ ? std::sqrt(1 - std::pow(beta2_, k + 1)) / (1 - std::pow(beta1_, k + 1)) : 1.0;
    const double dlr = d * lr * bias_correction;

    double d_numerator = d_numerator_.get() * beta3_;
    double d_denom = 0;
    for (size_t g = 0; g < groups_.size(); ++g) {
      for (auto& e : groups_[g]) {
        Tensor grad = e.param.grad();
        if (!grad.defined()) continue;
        if (weight_decay_ != 0 && !decouple_) ops::add_(grad, e.param, weight_decay_);
        if (lrs[g] > 0) {
          d_numerator += (d / d0_) * dlr * dot(grad, e.p0 - e.param);
          ops::mul_(e.exp_avg, beta1_);
          ops::add_(e.exp_avg, grad, d * (1 - beta1_));
          ops::mul_(e.exp_avg_sq, beta2_);
          ops::addcmul_(e.exp_avg_sq, grad, grad, d * d * (1 - beta2_));
          ops::mul_(e.s, beta3_);
          ops::add_(e.s, grad, safeguard_warmup_ ? (d / d0_) * d : (d / d0_) * dlr);
          d_denom += abs_sum(e.s);
        }
      }
    }
    if (d_denom == 0) return;  // no signal yet: nothing moves, k does not advance

    double d_hat = d;
    if (lr > 0) {
      d_hat = d_coef_ * d_numerator / d_denom;
      if (d == d0_) d = std::max(d, d_hat);
      d_max = std::max(d_max, d_hat);
      d = std::min(d_max, d * growth_rate_);
    }
    d_numerator_.set(d_numerator);
    d_denom_.set(d_denom);
    d_.set(d);
    d_max_.set(d_max);
    d_hat_.set(d_hat);

    for (auto& entries : groups_) {
      for (auto& e : entries) {
        const Tensor grad = e.param.grad();
        if (!grad.defined()) continue;
        ops::add_(e.step, ops::ones_like(e.step));
        const Tensor denom = ops::add(ops::sqrt(e.exp_avg_sq), d * eps_);
        if (weight_decay_ != 0 && decouple_) ops::add_(e.param, e.param, -weight_decay_ * dlr);
        ops::addcdiv_(e.param, e.exp_avg, denom, -dlr);
      }
    }
    k_.set(k + 1);
    if (log_every_ > 0 && static_cast<int64_t>(k) % log_every_ == 0)
      log_info("prodigy: step " + std::to_string(static_cast<int64_t>(k)) + ", d=" + std::to_string(d) + ", dlr=" +
               std::to_string(dlr) + ", d_hat=" + std::to_string(d_hat));
  }

 private:
  struct Entry {
    Tensor param, step, s, p0, exp_avg, exp_avg_sq;
  };
  Context ctx_;
  double beta1_ = 0.9, beta2_ = 0.999, beta3_ = 0;
  double eps_, weight_decay_, d0_, d_coef_, growth_rate_;
  bool decouple_, use_bias_correction_, safeguard_warmup_;
  int64_t log_every_;
  Scalar d_, d_max_, d_numerator_, d_denom_, d_hat_, k_;
  std::vector<std::vector<Entry>> groups_;
};

const sumi_param_spec kParams[] = {
    sumi::param("betas", SUMI_PARAM_DOUBLE_LIST, "0.9,0.999", "Adam's coefficients of the running averages of the gradient and its square."),
    sumi::param("beta3", SUMI_PARAM_DOUBLE, "0", "Decay of the numerator and of s; 0 = sqrt(beta2) (prodigyopt's None)."),
    sumi::param("eps", SUMI_PARAM_DOUBLE, "1e-8", "Denominator term, multiplied by d."),
    sumi::param("weight_decay", SUMI_PARAM_DOUBLE, "0", "Weight decay (decoupled unless decouple=false)."),
    sumi::param("decouple", SUMI_PARAM_BOOL, "true", "AdamW-style decoupled weight decay; false adds it to the gradient."),
    sumi::param("use_bias_correction", SUMI_PARAM_BOOL, "false", "Adam's bias correction in the step size (slows d early on)."),
    sumi::param("safeguard_warmup", SUMI_PARAM_BOOL, "false", "Leave lr out of the s update (for lr warm-up schedules)."),
    sumi::param("d0", SUMI_PARAM_DOUBLE, "1e-6", "Initial estimate of d."),
    sumi::param("d_coef", SUMI_PARAM_DOUBLE, "1.0", "Multiplier of the estimated d (>1 larger steps)."),
    sumi::param("growth_rate", SUMI_PARAM_DOUBLE, "inf", "Largest factor d may grow by in one step (inf = no limit)."),
    sumi::param("log_every", SUMI_PARAM_INT, "0", "Log d and dlr every this many steps (0 = never)."),
    sumi::param("slice_p", SUMI_PARAM_INT, "1", "prodigyopt >= 1.1's sliced estimate: not supported, must stay 1."),
    sumi::param("fsdp_in_use", SUMI_PARAM_BOOL, "false", "Sharded parameters: not supported, must stay false."),
};

}  // namespace

sumi_component prodigy_component() {
  return sumi::component<Prodigy>("prodigy", "Prodigy, as prodigyopt 1.0 (kohya's Prodigy): Adam with a learned step size d; use lr 1.0.",
                                  kParams);
}

}  // namespace sumi::optim
