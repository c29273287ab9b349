// Learning-rate schedules as multipliers of the base learning rate, with the same values as
// diffusers' get_scheduler (which kohya's scripts use): linear warm-up, then the named decay.
#include <sumi/plugin.hpp>

#include <algorithm>
#include <cmath>

namespace {

constexpr double kPi = 3.14159265358979323846;

double warmup(const sumi_lr_query& q) {
  return static_cast<double>(q.step) / static_cast<double>(std::max<int64_t>(1, q.warmup_steps));
}

// Fraction of the post-warm-up span completed.
double progress(const sumi_lr_query& q) {
  return static_cast<double>(q.step - q.warmup_steps) / static_cast<double>(std::max<int64_t>(1, q.total_steps - q.warmup_steps));
}

class Constant : public sumi::LrScheduler {
 public:
  explicit Constant(sumi::Context&) {}
  double factor(const sumi_lr_query&) override { return 1.0; }
};

class ConstantWithWarmup : public sumi::LrScheduler {
 public:
  explicit ConstantWithWarmup(sumi::Context&) {}
  double factor(const sumi_lr_query& q) override { return q.step < q.warmup_steps ? warmup(q) : 1.0; }
};

class Linear : public sumi::LrScheduler {
 public:
  explicit Linear(sumi::Context&) {}
  double factor(const sumi_lr_query& q) override {
    if (q.step < q.warmup_steps) return warmup(q);
    return std::max(0.0, static_cast<double>(q.total_steps - q.step) /
                             static_cast<double>(std::max<int64_t>(1, q.total_steps - q.warmup_steps)));
  }
};

class Cosine : public sumi::LrScheduler {
 public:
  explicit Cosine(sumi::Context& ctx) : cycles_(ctx.get_double("num_cycles")) {}
  double factor(const sumi_lr_query& q) override {
    if (q.step < q.warmup_steps) return warmup(q);
    return std::max(0.0, 0.5 * (1.0 + std::cos(kPi * cycles_ * 2.0 * progress(q))));
  }

 private:
  double cycles_;
};

class CosineWithRestarts : public sumi::LrScheduler {
 public:
  explicit CosineWithRestarts(sumi::Context& ctx) : cycles_(ctx.get_double("num_cycles")) {}
  double factor(const sumi_lr_query& q) override {
    if (q.step < q.warmup_steps) return warmup(q);
    const double p = progress(q);
    if (p >= 1.0) return 0.0;
    return std::max(0.0, 0.5 * (1.0 + std::cos(kPi * std::fmod(cycles_ * p, 1.0))));
  }

 private:
  double cycles_;
};

class Polynomial : public sumi::LrScheduler {
 public:
  explicit Polynomial(sumi::Context& ctx) : lr_end_(ctx.get_double("lr_end")), power_(ctx.get_double("power")) {}
  double factor(const sumi_lr_query& q) override {
    const double lr_init = q.base_lr;
    if (!(lr_init > lr_end_))
      throw sumi::Error(SUMI_ERR_INVALID_ARGUMENT, "polynomial: lr_end (" + std::to_string(lr_end_) +
                                                       ") must be smaller than the learning rate (" +
                                                       std::to_string(lr_init) + ")");
    if (q.step < q.warmup_steps) return warmup(q);
    if (q.step > q.total_steps) return lr_end_ / lr_init;
    const double range = lr_init - lr_end_;
    const double decay_steps = static_cast<double>(q.total_steps - q.warmup_steps);
    const double remaining = 1.0 - static_cast<double>(q.step - q.warmup_steps) / decay_steps;
    return (range * std::pow(remaining, power_) + lr_end_) / lr_init;
  }

 private:
  double lr_end_, power_;
};

const sumi_param_spec kCosineParams[] = {
    sumi::param("num_cycles", SUMI_PARAM_DOUBLE, "0.5", "Number of cosine waves (0.5 = decay from max to 0 once)."),
};
const sumi_param_spec kRestartParams[] = {
    sumi::param("num_cycles", SUMI_PARAM_DOUBLE, "1", "Number of hard restarts."),
};
const sumi_param_spec kPolyParams[] = {
    sumi::param("power", SUMI_PARAM_DOUBLE, "1.0", "Power of the polynomial decay."),
    sumi::param("lr_end", SUMI_PARAM_DOUBLE, "1e-7", "Learning rate reached at the end."),
};

}  // namespace

SUMI_PLUGIN("sumi_lr_schedulers", "0.1.0",
            sumi::component<Constant>("constant", "Constant learning rate."),
            sumi::component<ConstantWithWarmup>("constant_with_warmup", "Linear warm-up, then constant."),
            sumi::component<Linear>("linear", "Linear warm-up, then linear decay to 0."),
            sumi::component<Cosine>("cosine", "Linear warm-up, then cosine decay.", kCosineParams),
            sumi::component<CosineWithRestarts>("cosine_with_restarts",
                                                "Linear warm-up, then cosine decay with hard restarts.", kRestartParams),
            sumi::component<Polynomial>("polynomial", "Linear warm-up, then polynomial decay to lr_end.", kPolyParams))
