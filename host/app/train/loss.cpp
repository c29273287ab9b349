#include "loss.h"

#include "core/error.h"

#include <cmath>

namespace sumi::app {

void check_loss_options(const LossOptions& o) {
  if (o.loss_type != "l2" && o.loss_type != "l1" && o.loss_type != "huber" && o.loss_type != "smooth_l1")
    throw host::UserError("[train] loss_type: expected l2, l1, huber or smooth_l1, got '" + o.loss_type + "'");
  if (o.huber_schedule != "constant" && o.huber_schedule != "exponential" && o.huber_schedule != "snr")
    throw host::UserError("[train] huber_schedule: expected constant, exponential or snr, got '" + o.huber_schedule + "'");
  if (!(o.huber_c > 0 && o.huber_c <= 1))
    throw host::UserError("[train] huber_c must be in (0, 1], got " + std::to_string(o.huber_c));
  if (o.min_snr_gamma && !(*o.min_snr_gamma > 0))
    throw host::UserError("[train] min_snr_gamma must be > 0, got " + std::to_string(*o.min_snr_gamma));
  if (o.scale_v_pred_loss_like_noise_pred && !o.v_parameterization)
    throw host::UserError("[train] scale_v_pred_loss_like_noise_pred can be enabled only with v_parameterization");
  if (o.v_pred_like_loss && *o.v_pred_like_loss != 0 && o.v_parameterization)
    throw host::UserError("[train] v_pred_like_loss cannot be enabled with v_parameterization");
}

at::Tensor snr_table(const at::Tensor& alphas_cumprod) {
  const at::Tensor acp = alphas_cumprod.to(at::kFloat);
  return (acp.sqrt() / (1.0 - acp).sqrt()).pow(2);
}

at::Tensor huber_threshold(const LossOptions& o, const at::Tensor& timesteps, const at::Tensor& alphas_cumprod) {
  if (o.loss_type != "huber" && o.loss_type != "smooth_l1") return {};
  const int64_t n = alphas_cumprod.size(0);
  if (o.huber_schedule == "exponential") {
    const double alpha = -std::log(o.huber_c) / static_cast<double>(n);
    return at::exp(-alpha * timesteps.to(at::kFloat)) * o.huber_scale;
  }
  if (o.huber_schedule == "snr") {
    const at::Tensor acp = alphas_cumprod.to(at::kFloat).index_select(0, timesteps);
    const at::Tensor sigmas = ((1.0 - acp) / acp).pow(0.5);
    return (1 - o.huber_c) / (1 + sigmas).pow(2) + o.huber_c;
  }
  return at::full({timesteps.size(0)}, o.huber_c * o.huber_scale, at::kFloat);
}

at::Tensor conditional_loss(const at::Tensor& pred, const at::Tensor& target, const std::string& loss_type,
                            const at::Tensor& huber_c) {
  const at::Tensor d = pred - target;
  if (loss_type == "l2") return d.pow(2);
  if (loss_type == "l1") return d.abs();
  std::vector<int64_t> shape(static_cast<size_t>(pred.dim()), 1);
  shape[0] = -1;
  const at::Tensor c = huber_c.to(pred.device(), pred.scalar_type()).view(shape);
  const at::Tensor root = (d.pow(2) + c.pow(2)).sqrt() - c;
  if (loss_type == "huber") return 2 * c * root;
  if (loss_type == "smooth_l1") return 2 * root;
  throw host::UserError("[train] loss_type: unsupported '" + loss_type + "'");
}

at::Tensor min_snr_weight(const at::Tensor& timesteps, const at::Tensor& all_snr, double gamma, bool v_prediction) {
  const at::Tensor snr = all_snr.index_select(0, timesteps);
  const at::Tensor capped = at::clamp_max(snr, gamma);
  return v_prediction ? capped / (snr + 1) : capped / snr;
}

at::Tensor v_pred_scale(const at::Tensor& timesteps, const at::Tensor& all_snr) {
  const at::Tensor snr = at::clamp_max(all_snr.index_select(0, timesteps), 1000.0);
  return snr / (snr + 1);
}

at::Tensor debiased_weight(const at::Tensor& timesteps, const at::Tensor& all_snr, bool v_prediction) {
  const at::Tensor snr = at::clamp_max(all_snr.index_select(0, timesteps), 1000.0);
  return v_prediction ? 1 / (snr + 1) : 1 / snr.sqrt();
}

at::Tensor post_process_loss(const at::Tensor& loss, const at::Tensor& timesteps, const at::Tensor& all_snr,
                             const LossOptions& o) {
  at::Tensor l = loss;
  if (o.min_snr_gamma) l = l * min_snr_weight(timesteps, all_snr, *o.min_snr_gamma, o.v_parameterization);
  if (o.scale_v_pred_loss_like_noise_pred) l = l * v_pred_scale(timesteps, all_snr);
  if (o.v_pred_like_loss && *o.v_pred_like_loss != 0)
    l = l + l / v_pred_scale(timesteps, all_snr) * *o.v_pred_like_loss;
  if (o.debiased_estimation_loss) l = l * debiased_weight(timesteps, all_snr, o.v_parameterization);
  return l;
}

}  // namespace sumi::app
