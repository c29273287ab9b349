#include "app/train/optimizer_rules.h"

#include <algorithm>
#include <cctype>
#include <set>

#include "core/error.h"
#include "core/progress.h"

namespace sumi::app {

namespace {

bool param_true(const std::map<std::string, std::string>& params, const std::string& key, bool fallback) {
  const auto it = params.find(key);
  if (it == params.end()) return fallback;
  std::string v = it->second;
  std::transform(v.begin(), v.end(), v.begin(), [](unsigned char c) { return std::tolower(c); });
  return v == "true" || v == "1" || v == "yes";
}

std::string fmt(double v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%g", v);
  return buf;
}

}  // namespace

bool adapts_step_size(const std::string& optimizer) {
  return optimizer.rfind("dadapt", 0) == 0 || optimizer == "prodigy";
}

std::string scheduler_for(const std::string& optimizer, const std::map<std::string, std::string>& optimizer_params,
                          const std::string& scheduler) {
  if (optimizer == "adafactor") {
    // kohya: relative_step defaults to True, and warmup_init=True switches it back on.
    const bool relative = param_true(optimizer_params, "relative_step", true) || param_true(optimizer_params, "warmup_init", false);
    if (relative) {
      if (scheduler != "adafactor")
        host::log(SUMI_LOG_WARN, "train",
                  "Adafactor with relative_step computes its own learning rate: --learning_rate is only logged, "
                  "--unet_lr/--text_encoder_lr are ignored, and the lr_scheduler '" + scheduler +
                      "' is replaced by 'adafactor' (as kohya does; pass relative_step=False for a scheduled rate)");
      return "adafactor";
    }
    host::log(SUMI_LOG_INFO, "train",
              "Adafactor without relative_step: kohya advises --lr_scheduler constant_with_warmup, --max_grad_norm 0 "
              "and clip_threshold=1.0 (scale_parameter stays on unless scale_parameter=False)");
  } else if (scheduler == "adafactor") {
    throw host::UserError("the 'adafactor' lr_scheduler only works with --optimizer_type Adafactor (kohya asserts the same); "
                          "this run uses '" + optimizer + "': pick another --lr_scheduler, e.g. constant");
  }
  return scheduler;
}

void check_optimizer_lrs(const std::string& optimizer, const std::vector<std::string>& group_names,
                         const std::vector<double>& base_lrs, const std::vector<double>& first_lrs) {
  if (!adapts_step_size(optimizer) || base_lrs.empty()) return;
  if (base_lrs[0] <= 0.1)
    host::log(SUMI_LOG_WARN, "train",
              "learning rate is too low. If using D-Adaptation or Prodigy, set learning rate around 1.0 (kohya's "
              "advice): the rate multiplies the adapted step size d; lr=" + fmt(base_lrs[0]));
  const bool differ = std::any_of(base_lrs.begin(), base_lrs.end(), [&](double l) { return l != base_lrs[0]; });
  static const std::set<std::string> first_group_lr = {"dadaptadagrad", "dadaptadan", "dadaptadanip"};
  if (differ) {
    if (first_group_lr.count(optimizer)) {
      host::log(SUMI_LOG_WARN, "train",
                "when multiple learning rates are specified with dadaptation (e.g. for Text Encoder and U-Net), only the "
                "first one will take effect: " + optimizer + " uses lr=" + fmt(base_lrs[0]) + " (group '" + group_names[0] +
                    "') for every group");
    } else {
      const double top = *std::max_element(base_lrs.begin(), base_lrs.end());
      for (size_t g = 0; g < base_lrs.size(); ++g)
        if (base_lrs[g] != top && base_lrs[g] != 0)
          throw host::UserError(
              optimizer + " takes one learning rate for every parameter group (or 0 to leave a group untrained), but group '" +
              group_names[g] + "' has lr " + fmt(base_lrs[g]) + " and another " + fmt(top) +
              "; the reference raises \"Setting different lr values in different parameter groups is only supported for "
              "values of 0\" at its first step. Pass the same --unet_lr and --text_encoder_lr (kohya recommends 1.0 for "
              "both), or --text_encoder_lr 0");
    }
  }
  if (optimizer == "dadaptsgd" && std::all_of(first_lrs.begin(), first_lrs.end(), [](double l) { return l == 0; }))
    throw host::UserError(
        "dadaptsgd: the first step would run at learning rate 0 (an lr warm-up starts at 0), and D-Adapt SGD divides by the "
        "norm of the gradients of that step's groups with lr > 0, which is then 0 (kohya's run dies with ZeroDivisionError). "
        "Pass --lr_warmup_steps 0 (or a scheduler without warm-up) with DAdaptSGD");
}

}  // namespace sumi::app
