// Lion (Chen et al. 2023, "Symbolic Discovery of Optimization Algorithms"), the optimizer kohya
// users pick with --optimizer_type Lion, as a stand-alone sumi plugin. It links no libtorch:
// every tensor operation runs inside the host through the stable ABI.
#include <sumi/plugin.hpp>

namespace {

class Lion : public sumi::Optimizer {
 public:
  explicit Lion(sumi::Context& ctx) : ctx_(ctx), weight_decay_(ctx.get_double("weight_decay")) {
    const auto betas = ctx.get_double_list("betas");
    if (betas.size() != 2) throw sumi::Error(SUMI_ERR_INVALID_ARGUMENT, "lion: betas takes two values");
    beta1_ = betas[0];
    beta2_ = betas[1];
  }

  void add_param_group(const std::string& group, std::vector<sumi::Tensor> params) override {
    std::vector<Entry> entries;
    for (size_t i = 0; i < params.size(); ++i) {
      const std::string name = (group.empty() ? "default" : group) + "." + std::to_string(i) + ".exp_avg";
      entries.push_back({params[i], ctx_.state(name, sumi::ops::zeros_like(params[i]))});
    }
    groups_.push_back(std::move(entries));
  }

  void step(const std::vector<double>& lrs) override {
    // aten::sign is not among the skin's named ops: resolve it by schema name once.
    static const sumi::Op sign("aten::sign");
    sumi::NoGradGuard no_grad;
    for (size_t g = 0; g < groups_.size(); ++g) {
      for (auto& e : groups_[g]) {
        const sumi::Tensor grad = e.param.grad();
        if (!grad.defined()) continue;
        sumi::ops::mul_(e.param, 1 - lrs[g] * weight_decay_);
        const sumi::Tensor update = sign({e.exp_avg * beta1_ + grad * (1 - beta1_)});
        sumi::ops::add_(e.param, update, -lrs[g]);
        sumi::ops::lerp_(e.exp_avg, grad, 1 - beta2_);
      }
    }
  }

 private:
  struct Entry {
    sumi::Tensor param, exp_avg;
  };
  sumi::Context ctx_;
  double beta1_ = 0.9, beta2_ = 0.99, weight_decay_ = 0;
  std::vector<std::vector<Entry>> groups_;
};

const sumi_param_spec kParams[] = {
    sumi::param("betas", SUMI_PARAM_DOUBLE_LIST, "0.9,0.99", "Interpolation factors for the update and the momentum."),
    sumi::param("weight_decay", SUMI_PARAM_DOUBLE, "0", "Decoupled weight decay."),
};

}  // namespace

SUMI_PLUGIN("sumi_lion", "1.0.0", sumi::component<Lion>("lion_example", "Lion (the out-of-tree example): sign of interpolated momentum.", kParams))
