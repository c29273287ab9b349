// Exports the built-in optimizers.
#include "optimizers.h"

namespace sumi::optim {

std::vector<Slot> make_slots(const std::string& group, const std::vector<Tensor>& params) {
  std::vector<Slot> slots;
  for (size_t i = 0; i < params.size(); ++i)
    slots.push_back({params[i], (group.empty() ? std::string("default") : group) + "." + std::to_string(i) + "."});
  return slots;
}

}  // namespace sumi::optim

static const sumi_param_spec kSgdParams[] = {
    sumi::param("momentum", SUMI_PARAM_DOUBLE, "0", "Momentum factor."),
    sumi::param("dampening", SUMI_PARAM_DOUBLE, "0", "Dampening for momentum."),
    sumi::param("weight_decay", SUMI_PARAM_DOUBLE, "0", "L2 penalty added to the gradient."),
    sumi::param("nesterov", SUMI_PARAM_BOOL, "false", "Nesterov momentum (needs momentum > 0, dampening 0)."),
};

static const sumi_param_spec kAdamWParams[] = {
    sumi::param("betas", SUMI_PARAM_DOUBLE_LIST, "0.9,0.999", "Coefficients of the running averages of the gradient and its square."),
    sumi::param("eps", SUMI_PARAM_DOUBLE, "1e-8", "Term added to the denominator for numerical stability."),
    sumi::param("weight_decay", SUMI_PARAM_DOUBLE, "0.01", "Decoupled weight decay."),
    sumi::param("amsgrad", SUMI_PARAM_BOOL, "false", "Use the AMSGrad variant."),
};

SUMI_PLUGIN("sumi_optimizers", "0.1.0",
            sumi::component<sumi::optim::Sgd>("sgd", "Stochastic gradient descent, as torch.optim.SGD.", kSgdParams),
            sumi::component<sumi::optim::AdamW>("adamw", "Adam with decoupled weight decay, as torch.optim.AdamW.",
                                                kAdamWParams))
