// Exports the built-in optimizers and the helpers they share.
#include "optimizers.h"

#include <algorithm>

namespace sumi::optim {

std::vector<Slot> make_slots(const std::string& group, const std::vector<Tensor>& params) {
  std::vector<Slot> slots;
  for (size_t i = 0; i < params.size(); ++i)
    slots.push_back({params[i], (group.empty() ? std::string("default") : group) + "." + std::to_string(i) + "."});
  return slots;
}

Scalar::Scalar(Context& ctx, const std::string& name, double init) {
  t_ = ctx.find_state(name);
  if (!t_.defined()) t_ = ctx.state(name, Tensor::from_data(std::vector<double>{init}, {}));
}

void Scalar::set(double v) const { fill(t_, v); }

void fill(const Tensor& t, double v) {
  static const Op op("aten::fill_", "Scalar");
  op({t, v});
}

double dot(const Tensor& a, const Tensor& b) {
  static const Op op("aten::dot");
  return op({ops::flatten(a), ops::flatten(b)}).item();
}

double abs_sum(const Tensor& a) { return ops::sum(ops::abs(a)).item(); }

Tensor sign(const Tensor& a) {
  static const Op op("aten::sign");
  return op({a});
}

Tensor rsqrt(const Tensor& a) {
  static const Op op("aten::rsqrt");
  return op({a});
}

void check_lrs(const char* name, const std::vector<double>& lrs, size_t groups) {
  if (lrs.size() != groups)
    throw Error(SUMI_ERR_INVALID_ARGUMENT, std::string(name) + ": got " + std::to_string(lrs.size()) +
                                               " learning rates for " + std::to_string(groups) + " groups");
}

void log_info(const std::string& msg) { api().log(SUMI_LOG_INFO, "optimizer", msg.c_str()); }
void log_warn(const std::string& msg) { api().log(SUMI_LOG_WARN, "optimizer", msg.c_str()); }

void bad_arg(const char* optimizer, const std::string& msg) {
  throw Error(SUMI_ERR_INVALID_ARGUMENT, std::string(optimizer) + ": " + msg);
}

void check_d_estimate(const char* optimizer, double d0, double growth_rate, int64_t log_every) {
  if (!(d0 > 0)) bad_arg(optimizer, "d0 must be > 0, got " + std::to_string(d0));
  if (!(growth_rate > 0)) bad_arg(optimizer, "growth_rate must be > 0 (inf = no limit), got " + std::to_string(growth_rate));
  if (log_every < 0) bad_arg(optimizer, "log_every must be >= 0, got " + std::to_string(log_every));
}

std::vector<double> betas(Context& ctx, const char* optimizer, size_t n) {
  const auto b = ctx.get_double_list("betas");
  if (b.size() != n)
    bad_arg(optimizer, "betas takes " + std::to_string(n) + " values (e.g. betas=" + (n == 2 ? "0.9,0.999" : "0.98,0.92,0.99") +
                           "), got " + std::to_string(b.size()));
  for (double v : b)
    if (!(v >= 0 && v < 1)) bad_arg(optimizer, "each beta must be in [0, 1), got " + std::to_string(v));
  return b;
}

double shared_lr(const char* optimizer, const std::vector<double>& lrs) {
  double lr = 0;
  for (double l : lrs) lr = std::max(lr, l);
  for (double l : lrs)
    if (l != lr && l != 0.0)
      throw Error(SUMI_ERR_INVALID_ARGUMENT,
                  std::string(optimizer) + ": parameter groups have different learning rates (" + std::to_string(l) + " and " +
                      std::to_string(lr) + "); this optimizer takes one lr for every group, or 0 to freeze a group (the "
                      "reference raises here too). Give --text_encoder_lr and --unet_lr the same value (1.0 is "
                      "recommended), or --text_encoder_lr 0");
  return lr;
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

SUMI_PLUGIN("sumi_optimizers", "0.3.0",
            sumi::component<sumi::optim::Sgd>("sgd", "Stochastic gradient descent, as torch.optim.SGD.", kSgdParams),
            sumi::component<sumi::optim::AdamW>("adamw", "Adam with decoupled weight decay, as torch.optim.AdamW.",
                                                kAdamWParams),
            sumi::optim::lion_component(), sumi::optim::prodigy_component(), sumi::optim::adafactor_component(),
            sumi::optim::dadapt_adam_component(), sumi::optim::dadapt_adam_preprint_component(),
            sumi::optim::dadapt_adagrad_component(), sumi::optim::dadapt_adan_component(),
            sumi::optim::dadapt_adan_ip_component(), sumi::optim::dadapt_lion_component(), sumi::optim::dadapt_sgd_component(),
            sumi::optim::adamw8bit_component(), sumi::optim::pagedadamw8bit_component(), sumi::optim::lion8bit_component(),
            sumi::optim::pagedlion8bit_component(), sumi::optim::sgdnesterov8bit_component())
