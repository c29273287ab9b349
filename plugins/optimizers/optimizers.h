// The built-in optimizers (stable tier): the classes exported by optimizers.cpp.
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

}  // namespace sumi::optim
