// AutoencoderKL of SD 1.x / 2.x / XL as diffusers computes it: images in [-1, 1] to the
// diagonal-Gaussian latent distribution and latents back to images. Scaling by
// config().scaling_factor is the caller's business (the goldens and diffusers' encode/decode
// work on unscaled latents). Parameter names are diffusers' (`encoder.down_blocks.0.resnets.0...`).
#pragma once

#include <ATen/ATen.h>
#include <torch/nn/module.h>

#include <memory>

#include "vae_config.h"

namespace sumi::nn {

struct VaeEncoder;
struct VaeDecoder;
struct Conv2d;

struct LatentDistribution {
  at::Tensor moments;  // quant_conv output [B, 2 * latent, h, w] = [mean | logvar], unclamped
  at::Tensor mean;
  at::Tensor logvar;   // clamped to [-30, 20]
  at::Tensor std;      // exp(logvar / 2)
  // mean + std * noise; pass a generator for reproducible draws.
  at::Tensor sample(c10::optional<at::Generator> generator = c10::nullopt) const;
};

class AutoencoderKL : public torch::nn::Module {
 public:
  explicit AutoencoderKL(VaeConfig config);

  LatentDistribution encode(const at::Tensor& image) const;  // [B, 3, H, W] -> H/8 x W/8 latents
  at::Tensor decode(const at::Tensor& latent) const;          // unscaled latents -> image

  const VaeConfig& config() const { return config_; }

 private:
  VaeConfig config_;
  std::shared_ptr<VaeEncoder> encoder_;
  std::shared_ptr<VaeDecoder> decoder_;
  std::shared_ptr<Conv2d> quant_conv_, post_quant_conv_;
};

}  // namespace sumi::nn
