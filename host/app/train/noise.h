// The training noise of kohya's train_util.get_noise_noisy_latents_and_timesteps: Gaussian
// noise, optionally with offset noise (fixed or random strength, adaptive to the latents' channel
// means), multi-resolution ("pyramid") noise, timesteps uniform in [min, max), and input
// perturbation noise (ip_noise_gamma) that goes into the noisy latents but not into the target.
// Draws from PyTorch's default CPU generator in kohya's order, so a seed reproduces a run.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <optional>
#include <random>

namespace sumi::app {

struct NoiseOptions {
  double noise_offset = 0;                      // --noise_offset (0: off)
  bool noise_offset_random_strength = false;    // offset strength uniform in [0, noise_offset)
  std::optional<double> adaptive_noise_scale;   // + scale * |channel mean of the latents|
  int64_t multires_noise_iterations = 0;        // pyramid noise levels (0: off)
  double multires_noise_discount = 0.3;         // weight of level i: discount^i
  double ip_noise_gamma = 0;                    // input perturbation strength (0: off)
  bool ip_noise_gamma_random_strength = false;  // strength uniform in [0, ip_noise_gamma)
  int64_t min_timestep = 0, max_timestep = 1000;
};

// Throws host::UserError for kohya's invalid combinations (adaptive_noise_scale without
// noise_offset) and out-of-range values.
void check_noise_options(const NoiseOptions& o);

// custom_train_functions.apply_noise_offset: noise + offset * randn(B, C, 1, 1), where offset
// is `noise_offset` (a number or a [1] tensor) plus, with `adaptive_noise_scale`,
// adaptive_noise_scale * |mean of each latent channel|, clamped at 0.
at::Tensor apply_noise_offset(const at::Tensor& latents, const at::Tensor& noise, const at::Tensor& noise_offset,
                              std::optional<double> adaptive_noise_scale);

// custom_train_functions.pyramid_noise_like: adds `iterations` levels of bilinearly upsampled
// noise, level i drawn at size / r^i (r uniform in [2, 4) from `ratio_rng`, the stream
// Python's `random` plays in kohya) and weighted discount^i, stopping at a 1-pixel level;
// the sum is divided by its standard deviation.
at::Tensor pyramid_noise_like(const at::Tensor& noise, int64_t iterations, double discount, std::mt19937_64& ratio_rng);

struct TrainingNoise {
  at::Tensor noise;          // the target noise (what an eps model should predict)
  at::Tensor input_noise;    // what goes into add_noise: noise, plus ip_noise_gamma * randn
  at::Tensor timesteps;      // [B] int64 in [min_timestep, max_timestep)
};

// The whole draw for one batch of latents, in kohya's order.
TrainingNoise draw_training_noise(const NoiseOptions& o, const at::Tensor& latents, std::mt19937_64& ratio_rng);

}  // namespace sumi::app
