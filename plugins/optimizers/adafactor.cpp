// Adafactor (Shazeer & Stern 2018) as transformers.optimization.Adafactor (4.30), kohya's
// --optimizer_type Adafactor: a factored second moment for tensors of two or more dimensions
// (the last two are factored, leading dimensions are batch dimensions), update clipping by RMS,
// optional first moment, and a relative step size that ignores the scheduled learning rate.
#include "optimizers.h"

#include <cmath>

namespace sumi::optim {
namespace {

class Adafactor : public Optimizer {
 public:
  explicit Adafactor(Context& ctx)
      : ctx_(ctx),
        clip_threshold_(ctx.get_double("clip_threshold")),
        decay_rate_(ctx.get_double("decay_rate")),
        beta1_(ctx.get_double("beta1")),
        weight_decay_(ctx.get_double("weight_decay")),
        scale_parameter_(ctx.get_bool("scale_parameter")),
        relative_step_(ctx.get_bool("relative_step")),
        warmup_init_(ctx.get_bool("warmup_init")) {
    const auto eps = ctx.get_double_list("eps");
    if (eps.size() != 2) bad_arg("adafactor", "eps takes two values (e.g. eps=1e-30,1e-3: squared-gradient and parameter-scale floors), got " +
                                                  std::to_string(eps.size()));
    eps1_ = eps[0];
    eps2_ = eps[1];
    if (!(clip_threshold_ > 0)) bad_arg("adafactor", "clip_threshold must be > 0, got " + std::to_string(clip_threshold_));
    if (!(decay_rate_ < 0)) bad_arg("adafactor", "decay_rate must be < 0 (e.g. -0.8), got " + std::to_string(decay_rate_));
    if (!(beta1_ >= 0 && beta1_ < 1)) bad_arg("adafactor", "beta1 must be in [0, 1) (0 = no first moment), got " + std::to_string(beta1_));
    if (weight_decay_ < 0) bad_arg("adafactor", "weight_decay must be >= 0, got " + std::to_string(weight_decay_));
    if (warmup_init_ && !relative_step_) {
      // kohya: "warmup_init is true, so relative_step is set to true" (transformers would refuse).
      log_warn("adafactor: warmup_init=True needs relative_step=True; relative_step is set to True, as kohya does");
      relative_step_ = true;
    }
  }

  void add_param_group(const std::string& group, std::vector<Tensor> params) override {
    std::vector<Entry> entries;
    for (const auto& s : make_slots(group, params)) {
      Entry e;
      e.param = s.param;
      e.factored = s.param.dim() >= 2;
      e.step = ctx_.state(s.prefix + "step", ops::zeros({}, dtype::f64));
      // State in float32 whatever the parameter's dtype (transformers keeps it like the float32 gradient).
      const auto shape = s.param.sizes();
      if (beta1_ > 0) e.exp_avg = ctx_.state(s.prefix + "exp_avg", ops::zeros(shape, dtype::f32));
      if (e.factored) {
        auto row = shape, col = shape;
        row.pop_back();
        col.erase(col.end() - 2);
        e.row = ctx_.state(s.prefix + "exp_avg_sq_row", ops::zeros(row, dtype::f32));
        e.col = ctx_.state(s.prefix + "exp_avg_sq_col", ops::zeros(col, dtype::f32));
      } else {
        e.sq = ctx_.state(s.prefix + "exp_avg_sq", ops::zeros(shape, dtype::f32));
      }
      e.lr = ctx_.state(s.prefix + "lr", ops::zeros({}, dtype::f64));
      entries.push_back(std::move(e));
    }
    groups_.push_back(std::move(entries));
  }

  void step(const std::vector<double>& lrs) override {
    check_lrs("adafactor", lrs, groups_.size());
    static const Op clamp_min("aten::clamp_min");
    static const Op unsqueeze("aten::unsqueeze");
    NoGradGuard no_grad;
    for (size_t g = 0; g < groups_.size(); ++g) {
      for (auto& e : groups_[g]) {
        Tensor grad = e.param.grad();
        if (!grad.defined()) continue;
        // bf16/fp16 parameters (full_bf16): computed in float32 and copied back, as transformers does.
        const bool low = e.param.dtype() != dtype::f32;
        if (grad.dtype() != dtype::f32) grad = ops::to(grad, dtype::f32);
        const Tensor param = low ? ops::to(e.param, dtype::f32) : e.param;
        ops::add_(e.step, ops::ones_like(e.step));
        const double step = e.step.item();
        const double numel = static_cast<double>(param.numel());
        const Tensor rms = ops::div(ops::norm(param), std::sqrt(numel));  // of the parameter before this update
        // transformers' _get_lr: a float32 value when RMS (a float32 tensor) wins over eps2.
        double rel = lrs[g];
        if (relative_step_) rel = std::min(warmup_init_ ? 1e-6 * step : 1e-2, 1.0 / std::sqrt(step));
        double lr = rel;
        bool lr_f32 = false;
        if (scale_parameter_) {
          const double r = rms.item();
          if (eps2_ >= r) {
            lr = eps2_ * rel;
          } else {
            lr = static_cast<double>(static_cast<float>(r) * static_cast<float>(rel));
            lr_f32 = true;
          }
        }
        const double beta2t = 1.0 - std::pow(step, decay_rate_);
        const Tensor sq = ops::add(ops::pow(grad, 2.0), eps1_);
        Tensor update;
        if (e.factored) {
          ops::mul_(e.row, beta2t);
          ops::add_(e.row, ops::mean(sq, {-1}), 1.0 - beta2t);
          ops::mul_(e.col, beta2t);
          ops::add_(e.col, ops::mean(sq, {-2}), 1.0 - beta2t);
          const Tensor r_factor = unsqueeze({rsqrt(ops::div(e.row, ops::mean(e.row, {-1}, true))), int64_t{-1}});
          const Tensor c_factor = rsqrt(unsqueeze({e.col, int64_t{-2}}));
          update = ops::mul(r_factor, c_factor);
          ops::mul_(update, grad);
        } else {
          ops::mul_(e.sq, beta2t);
          ops::add_(e.sq, sq, 1.0 - beta2t);
          update = ops::mul(rsqrt(e.sq), grad);
        }
        const Tensor ratio = ops::div(ops::div(ops::norm(update), std::sqrt(numel)), clip_threshold_);
        update = ops::div(update, clamp_min({ratio, 1.0}));
        ops::mul_(update, lr);
        if (beta1_ > 0) {
          ops::mul_(e.exp_avg, beta1_);
          ops::add_(e.exp_avg, update, 1 - beta1_);
          update = e.exp_avg;
        }
        if (weight_decay_ != 0) {
          const double alpha = lr_f32 ? static_cast<double>(static_cast<float>(-weight_decay_) * static_cast<float>(lr))
                                      : -weight_decay_ * lr;
          ops::add_(param, param, alpha);
        }
        ops::add_(param, update, -1.0);
        if (low) ops::copy_(e.param, param);
        fill(e.lr, lr);
      }
    }
  }

 private:
  struct Entry {
    Tensor param, step, exp_avg, row, col, sq, lr;
    bool factored = false;
  };
  Context ctx_;
  double eps1_ = 1e-30, eps2_ = 1e-3, clip_threshold_, decay_rate_, beta1_, weight_decay_;
  bool scale_parameter_, relative_step_, warmup_init_;
  std::vector<std::vector<Entry>> groups_;
};

const sumi_param_spec kParams[] = {
    sumi::param("eps", SUMI_PARAM_DOUBLE_LIST, "1e-30,1e-3",
                "eps1 added to the squared gradient, eps2 the floor of the parameter scale (scale_parameter)."),
    sumi::param("clip_threshold", SUMI_PARAM_DOUBLE, "1.0", "Updates are scaled down to at most this RMS."),
    sumi::param("decay_rate", SUMI_PARAM_DOUBLE, "-0.8", "Second-moment decay: beta2 at step t is 1 - t^decay_rate."),
    sumi::param("beta1", SUMI_PARAM_DOUBLE, "0",
                "First-moment coefficient; 0 = no first moment (transformers' beta1=None; the update is the same)."),
    sumi::param("weight_decay", SUMI_PARAM_DOUBLE, "0", "Decoupled weight decay, scaled by the step's lr."),
    sumi::param("scale_parameter", SUMI_PARAM_BOOL, "true", "Multiply the lr by max(eps2, RMS of the parameter)."),
    sumi::param("relative_step", SUMI_PARAM_BOOL, "true",
                "Compute the lr from the step (min(1e-2, 1/sqrt(step))) and ignore --learning_rate; needs the "
                "'adafactor' lr_scheduler (kohya switches to it)."),
    sumi::param("warmup_init", SUMI_PARAM_BOOL, "false", "relative_step starts at 1e-6*step (turns relative_step on, as kohya does)."),
};

}  // namespace

sumi_component adafactor_component() {
  return sumi::component<Adafactor>("adafactor", "Adafactor, as transformers.optimization.Adafactor (kohya's Adafactor).", kParams);
}

}  // namespace sumi::optim
