// The training loss as kohya's train_network computes it: an element-wise loss (l2, l1, or the
// pseudo-Huber family with a per-timestep threshold, train_util.conditional_loss /
// get_huber_threshold_if_needed), averaged per sample, then weighted per timestep by the
// custom_train_functions options (min-SNR, v-pred scaling, v-pred-like loss, debiased
// estimation). SNR values come from `all_snr`: the DDPM schedule's (alpha / sigma)^2 in float32,
// taken before zero_terminal_snr rescales the betas, as kohya does.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <optional>
#include <string>

namespace sumi::app {

struct LossOptions {
  std::string loss_type = "l2";         // l2, l1, huber, smooth_l1
  std::string huber_schedule = "snr";   // constant, exponential, snr
  double huber_c = 0.1;
  double huber_scale = 1.0;
  std::optional<double> min_snr_gamma;
  bool scale_v_pred_loss_like_noise_pred = false;
  std::optional<double> v_pred_like_loss;
  bool debiased_estimation_loss = false;
  bool v_parameterization = false;
};

// Throws host::UserError for unknown names and kohya's invalid combinations
// (scale_v_pred_loss_like_noise_pred without v_parameterization, v_pred_like_loss with it).
void check_loss_options(const LossOptions& o);

// (sqrt(acp) / sqrt(1 - acp))^2 in float32, [num_train_timesteps].
at::Tensor snr_table(const at::Tensor& alphas_cumprod);

// The Huber threshold per sample ([B] float32), or an undefined tensor for l2 / l1.
at::Tensor huber_threshold(const LossOptions& o, const at::Tensor& timesteps, const at::Tensor& alphas_cumprod);

// Element-wise loss (reduction "none"); `huber_c` is [B] for huber / smooth_l1.
at::Tensor conditional_loss(const at::Tensor& pred, const at::Tensor& target, const std::string& loss_type,
                            const at::Tensor& huber_c);

// Per-sample weights of custom_train_functions, each [B] float32 for `timesteps`:
at::Tensor min_snr_weight(const at::Tensor& timesteps, const at::Tensor& all_snr, double gamma, bool v_prediction);
// snr / (snr + 1), snr clamped at 1000 (scale_v_prediction_loss_like_noise_prediction).
at::Tensor v_pred_scale(const at::Tensor& timesteps, const at::Tensor& all_snr);
// 1 / sqrt(snr) (eps) or 1 / (snr + 1) (v), snr clamped at 1000.
at::Tensor debiased_weight(const at::Tensor& timesteps, const at::Tensor& all_snr, bool v_prediction);

// train_network's post_process_loss on the per-sample loss [B], in kohya's order.
at::Tensor post_process_loss(const at::Tensor& loss, const at::Tensor& timesteps, const at::Tensor& all_snr,
                             const LossOptions& o);

}  // namespace sumi::app
