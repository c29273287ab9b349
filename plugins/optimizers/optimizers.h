// The built-in optimizers (stable tier). AdamW and SGD are declared here; the others live in
// one file each and hand optimizers.cpp their component through a *_component() function.
#pragma once

#include <sumi/plugin.hpp>

#include <string>
#include <vector>

namespace sumi::optim {

// Parameters of one group and their state slots, named "<group>.<index>.<slot>" in the registry
// so a resumed run finds them again.
struct Slot {
  Tensor param;
  std::string prefix;
};
std::vector<Slot> make_slots(const std::string& group, const std::vector<Tensor>& params);

// A Python-float scalar of an optimizer (D-adaptation's d, a step counter, ...) kept in the
// registry as a 0-d float64 tensor, so --save_state / --resume restore it bit for bit.
// Every optimizer creates all its state in add_param_group: resume overwrites what exists.
class Scalar {
 public:
  Scalar() = default;
  Scalar(Context& ctx, const std::string& name, double init);
  double get() const { return t_.item(); }
  void set(double v) const;
  bool defined() const { return t_.defined(); }

 private:
  Tensor t_;
};

// Sets every element of `t` (a 0-d float64 scalar state: exact for any double).
void fill(const Tensor& t, double v);

// Float32 reductions turned into a double, as the Python references' `.item()` does.
double dot(const Tensor& a, const Tensor& b);  // torch.dot over the flattened tensors
double abs_sum(const Tensor& a);               // a.abs().sum()
Tensor sign(const Tensor& a);
Tensor rsqrt(const Tensor& a);

// The learning rates of one step: one per group, as the host passes them.
void check_lrs(const char* name, const std::vector<double>& lrs, size_t groups);
// Logs through the host (SUMI_LOG_INFO / WARN).
void log_info(const std::string& msg);
void log_warn(const std::string& msg);
// A refusal of a constructor argument: names it, says what was expected and what was found.
[[noreturn]] void bad_arg(const char* optimizer, const std::string& msg);
// betas with exactly `n` values, each in [0, 1).
std::vector<double> betas(Context& ctx, const char* optimizer, size_t n);

// The D-adaptation / Prodigy estimate's arguments: d0 > 0, growth_rate > 0 (inf = no limit),
// log_every >= 0; refused by name otherwise.
void check_d_estimate(const char* optimizer, double d0, double growth_rate, int64_t log_every);

// D-adaptation and Prodigy: the one lr of a step, max(lrs); any other group lr must be 0 (the
// references raise "Setting different lr values in different parameter groups is only supported
// for values of 0" at the first step; sumi's trainer refuses such a run before it starts).
double shared_lr(const char* optimizer, const std::vector<double>& lrs);

// torch.optim.SGD: momentum, dampening, weight decay, Nesterov.
class Sgd : public Optimizer {
 public:
  explicit Sgd(Context& ctx);
  void add_param_group(const std::string& group, std::vector<Tensor> params) override;
  void step(const std::vector<double>& lrs) override;

 private:
  Context ctx_;
  double momentum_, dampening_, weight_decay_;
  bool nesterov_;
  struct Entry {
    Tensor param, buf, steps;
  };
  std::vector<std::vector<Entry>> groups_;
};

// torch.optim.AdamW (decoupled weight decay, optional AMSGrad).
class AdamW : public Optimizer {
 public:
  explicit AdamW(Context& ctx);
  void add_param_group(const std::string& group, std::vector<Tensor> params) override;
  void step(const std::vector<double>& lrs) override;

 private:
  Context ctx_;
  double beta1_, beta2_, eps_, weight_decay_;
  bool amsgrad_;
  struct Entry {
    Tensor param, exp_avg, exp_avg_sq, max_exp_avg_sq, steps;
  };
  std::vector<std::vector<Entry>> groups_;
};

// The components defined in their own files (lion.cpp, prodigy.cpp, adafactor.cpp, dadapt_*.cpp, bnb8bit.cpp).
sumi_component lion_component();
sumi_component prodigy_component();
sumi_component adafactor_component();
sumi_component dadapt_adam_component();
sumi_component dadapt_adam_preprint_component();
sumi_component dadapt_adagrad_component();
sumi_component dadapt_adan_component();
sumi_component dadapt_adan_ip_component();
sumi_component dadapt_lion_component();
sumi_component dadapt_sgd_component();
// bitsandbytes' 8-bit optimizers (bnb8bit.cpp).
sumi_component adamw8bit_component();
sumi_component pagedadamw8bit_component();
sumi_component lion8bit_component();
sumi_component pagedlion8bit_component();
sumi_component sgdnesterov8bit_component();

}  // namespace sumi::optim
