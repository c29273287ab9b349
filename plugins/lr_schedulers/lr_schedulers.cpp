// Learning-rate schedules as multipliers of the base learning rate, with the same values as
// diffusers' get_scheduler (which kohya's scripts use): linear warm-up, then the named decay.
#include <sumi/plugin.hpp>

#include <algorithm>
#include <cmath>
#include <map>
#include <string>
#include <vector>

namespace {

constexpr double kPi = 3.14159265358979323846;

// Schedulers without a warm-up refuse one (kohya's get_scheduler_fix raises for them): names
// the scheduler, says why and that --lr_warmup_steps 0 is what they take.
void refuse_warmup(const sumi_lr_query& q, const char* scheduler, const std::string& why) {
  if (q.warmup_steps > 0)
    throw sumi::Error(SUMI_ERR_INVALID_ARGUMENT, std::string(scheduler) + " lr_scheduler: --lr_warmup_steps " +
                                                     std::to_string(q.warmup_steps) + " " + why + "; or pass --lr_warmup_steps 0");
}

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
  // kohya (get_scheduler_fix) raises "constant does not require `num_warmup_steps`" for a
  // warm-up with constant; refused the same way rather than silently ignored.
  double factor(const sumi_lr_query& q) override {
    refuse_warmup(q, "constant", "has no effect with it (kohya refuses it too); use --lr_scheduler constant_with_warmup for a warm-up");
    return 1.0;
  }
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

// diffusers' get_piecewise_constant_schedule: step_rules "m1:s1,m2:s2,...,m_last" means the
// multiplier m_i while step < s_i (absolute step indices, checked in increasing order), m_last
// from the largest s_i on. kohya passes it as --lr_scheduler_args "step_rules='1:3,0.5:7,0.05'".
class PiecewiseConstant : public sumi::LrScheduler {
 public:
  explicit PiecewiseConstant(sumi::Context& ctx) {
    const std::string rules = ctx.get_string("step_rules");
    auto bad = [&](const std::string& why) {
      throw sumi::Error(SUMI_ERR_INVALID_ARGUMENT, "piecewise_constant: step_rules '" + rules + "': " + why +
                                                       "; expected \"multiplier:step,...,last_multiplier\", e.g. "
                                                       "--lr_scheduler_args \"step_rules='1:10,0.1:20,0.01'\"");
    };
    std::vector<std::string> items;
    size_t start = 0;
    for (;;) {
      const size_t comma = rules.find(',', start);
      items.push_back(rules.substr(start, comma == std::string::npos ? std::string::npos : comma - start));
      if (comma == std::string::npos) break;
      start = comma + 1;
    }
    auto number = [&](const std::string& text, bool integer) {
      size_t pos = 0;
      double v = 0;
      try {
        v = integer ? static_cast<double>(std::stoll(text, &pos)) : std::stod(text, &pos);
      } catch (...) {
        pos = 0;
      }
      while (pos < text.size() && text[pos] == ' ') ++pos;
      if (text.empty() || pos != text.size()) bad("'" + text + "' is not " + (integer ? "an integer step" : "a number"));
      return v;
    };
    for (size_t i = 0; i + 1 < items.size(); ++i) {
      const size_t colon = items[i].find(':');
      if (colon == std::string::npos) bad("rule '" + items[i] + "' has no ':'");
      rules_[static_cast<int64_t>(number(items[i].substr(colon + 1), true))] = number(items[i].substr(0, colon), false);
    }
    last_ = number(items.back(), false);
  }
  double factor(const sumi_lr_query& q) override {
    for (const auto& [step, mult] : rules_)
      if (q.step < step) return mult;
    return last_;
  }

 private:
  std::map<int64_t, double> rules_;  // sorted by step, as diffusers sorts them
  double last_ = 1.0;
};

// kohya's "adafactor" scheduler (transformers' AdafactorSchedule): Adafactor with relative_step
// computes its own learning rate, so the scheduled rate is --learning_rate unchanged. Only for
// the adafactor optimizer, without warm-up (kohya refuses both); the trainer switches to it when
// Adafactor runs with relative_step, as kohya does.
class AdafactorSchedule : public sumi::LrScheduler {
 public:
  explicit AdafactorSchedule(sumi::Context&) {}
  double factor(const sumi_lr_query& q) override {
    refuse_warmup(q, "adafactor", "is not supported (Adafactor's relative step has its own warm-up, warmup_init=True)");
    return 1.0;
  }
};

const sumi_param_spec kPiecewiseParams[] = {
    sumi::param("step_rules", SUMI_PARAM_STRING, nullptr,
                "\"m1:s1,m2:s2,...,m_last\": multiplier m_i while step < s_i (absolute steps), m_last afterwards."),
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
            sumi::component<Polynomial>("polynomial", "Linear warm-up, then polynomial decay to lr_end.", kPolyParams),
            sumi::component<PiecewiseConstant>("piecewise_constant", "Constant multipliers between absolute steps (diffusers).",
                                               kPiecewiseParams),
            sumi::component<AdafactorSchedule>("adafactor", "For Adafactor with relative_step: the optimizer sets its own rate."))
