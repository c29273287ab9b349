// AutoencoderKL of SD 1.x / 2.x / XL as diffusers computes it: images in [-1, 1] to the
// diagonal-Gaussian latent distribution and latents back to images. Scaling by
// config().scaling_factor is the caller's business (the goldens and diffusers' encode/decode
// work on unscaled latents). Parameter names are diffusers' (`encoder.down_blocks.0.resnets.0...`).
// For large images, set_tiling runs encoder and decoder on overlapping tiles blended at the seams
// and set_slicing one batch item at a time, as diffusers' enable_tiling / enable_slicing do.
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

  // Tiles of config().sample_size pixels (sample_size / 8 latents) overlapping by a quarter,
  // each blended linearly into its upper and left neighbours over a quarter tile; only inputs
  // larger than a tile are tiled. Not exact: seams differ slightly from the whole-image result.
  void set_tiling(bool enabled) { tiling_ = enabled; }
  // One batch item at a time through encoder and decoder; the same numbers, less peak memory.
  void set_slicing(bool enabled) { slicing_ = enabled; }
  bool tiling() const { return tiling_; }
  bool slicing() const { return slicing_; }
  int64_t tile_sample_size() const { return config_.sample_size; }
  int64_t tile_latent_size() const;

 private:
  at::Tensor encode_moments(const at::Tensor& image) const;
  at::Tensor decode_one(const at::Tensor& latent) const;

  VaeConfig config_;
  bool tiling_ = false, slicing_ = false;
  std::shared_ptr<VaeEncoder> encoder_;
  std::shared_ptr<VaeDecoder> decoder_;
  std::shared_ptr<Conv2d> quant_conv_, post_quant_conv_;
};

}  // namespace sumi::nn
