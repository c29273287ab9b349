// Text-to-image sampling over plugin components: a model (text encoders, denoiser, VAE) and a
// noise scheduler, classifier-free guidance, and seeds that reproduce PyTorch's CPU stream
// (torch.manual_seed(seed); torch.randn(latent shape); ancestral noise drawn from the same
// generator right after, step by step, as sd-scripts' gen_img does).
// Used by `sumi generate` and by sample images during training.
#pragma once

#include "core/component.h"

#include <ATen/ATen.h>

#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace sumi::app {

struct ImageRequest {
  std::string prompt;
  std::string negative_prompt;
  int64_t width = 512, height = 512;
  int64_t steps = 30;
  double scale = 7.5;
  uint64_t seed = 0;
  bool zero_empty_negative = false;  // SDXL: an empty negative prompt is zero conditioning (diffusers)
};

struct ImageResult {
  at::Tensor latents;  // final latents [1, 4, H/8, W/8]
  at::Tensor image;    // decoded [1, 3, H, W] in [-1, 1]
};

class Generator {
 public:
  Generator(host::Component& model, host::Component& scheduler) : model_(model), scheduler_(scheduler) {}
  ImageResult run(const ImageRequest& r, bool progress = true);

 private:
  host::Component& model_;
  host::Component& scheduler_;
};

// The noise-scheduler settings a diffusers folder carries (<model>/scheduler/scheduler_config.json),
// as text values for the keys the sampler's schema declares; {} for single files.
std::map<std::string, std::string> scheduler_config_of(const std::string& model_path, const sumi_component& sampler);

// [1, 3, H, W] in [-1, 1] -> HxWx3 8-bit, as A1111/diffusers: round(clamp(x / 2 + 0.5, 0, 1) * 255).
at::Tensor to_uint8_hwc(const at::Tensor& image);

}  // namespace sumi::app
