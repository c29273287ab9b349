#include "noise.h"

#include "core/error.h"

#include <sumi/datasets/random.h>

#include <algorithm>
#include <cmath>
#include <string>

namespace sumi::app {

void check_noise_options(const NoiseOptions& o) {
  if (o.adaptive_noise_scale && o.noise_offset == 0)
    throw host::UserError("[train] adaptive_noise_scale needs noise_offset (kohya: 'adaptive_noise_scale requires "
                          "noise_offset'); set noise_offset too");
  if (o.noise_offset < 0) throw host::UserError("[train] noise_offset must be >= 0, got " + std::to_string(o.noise_offset));
  if (o.multires_noise_iterations < 0)
    throw host::UserError("[train] multires_noise_iterations must be >= 0, got " + std::to_string(o.multires_noise_iterations));
  if (o.ip_noise_gamma < 0) throw host::UserError("[train] ip_noise_gamma must be >= 0, got " + std::to_string(o.ip_noise_gamma));
  if (o.min_timestep < 0 || o.max_timestep > 1000 || o.min_timestep >= o.max_timestep)
    throw host::UserError("[train] need 0 <= min_timestep < max_timestep <= 1000, got " + std::to_string(o.min_timestep) +
                          " and " + std::to_string(o.max_timestep));
}

at::Tensor apply_noise_offset(const at::Tensor& latents, const at::Tensor& noise, const at::Tensor& noise_offset,
                              std::optional<double> adaptive_noise_scale) {
  at::Tensor offset = noise_offset;
  if (adaptive_noise_scale) {
    const at::Tensor latent_mean = latents.mean({2, 3}, /*keepdim=*/true).abs();
    offset = at::clamp_min(offset + *adaptive_noise_scale * latent_mean, 0.0);
  }
  return noise + offset * at::randn({latents.size(0), latents.size(1), 1, 1}, latents.options());
}

at::Tensor pyramid_noise_like(const at::Tensor& noise, int64_t iterations, double discount, std::mt19937_64& ratio_rng) {
  const int64_t b = noise.size(0), c = noise.size(1), h = noise.size(2), w = noise.size(3);
  at::Tensor out = noise.clone();
  for (int64_t i = 0; i < iterations; ++i) {
    // Portable draw (std:: distributions differ between standard libraries).
    const double r = datasets::uniform01(ratio_rng) * 2 + 2;  // rather than always halving: a ratio in [2, 4)
    const double div = std::pow(r, static_cast<double>(i));
    const int64_t hn = std::max<int64_t>(1, static_cast<int64_t>(static_cast<double>(h) / div));
    const int64_t wn = std::max<int64_t>(1, static_cast<int64_t>(static_cast<double>(w) / div));
    const at::Tensor level = at::randn({b, c, hn, wn}, noise.options());
    out = out + at::upsample_bilinear2d(level, {h, w}, /*align_corners=*/false) * std::pow(discount, static_cast<double>(i));
    if (hn == 1 || wn == 1) break;  // the coarsest level is one pixel
  }
  return out / out.std();
}

TrainingNoise draw_training_noise(const NoiseOptions& o, const at::Tensor& latents, std::mt19937_64& ratio_rng) {
  TrainingNoise t;
  t.noise = at::randn_like(latents);
  if (o.noise_offset > 0) {
    const at::Tensor offset = o.noise_offset_random_strength ? at::rand({1}, latents.options()) * o.noise_offset
                                                             : at::scalar_tensor(o.noise_offset, latents.options());
    t.noise = apply_noise_offset(latents, t.noise, offset, o.adaptive_noise_scale);
  }
  if (o.multires_noise_iterations > 0)
    t.noise = pyramid_noise_like(t.noise, o.multires_noise_iterations, o.multires_noise_discount, ratio_rng);
  t.timesteps = at::randint(o.min_timestep, o.max_timestep, {latents.size(0)}, at::kLong);
  if (o.ip_noise_gamma > 0) {
    const at::Tensor strength = o.ip_noise_gamma_random_strength ? at::rand({1}, latents.options()) * o.ip_noise_gamma
                                                                 : at::scalar_tensor(o.ip_noise_gamma, latents.options());
    t.input_noise = t.noise + strength * at::randn_like(latents);
  } else {
    t.input_noise = t.noise;
  }
  return t;
}

}  // namespace sumi::app
