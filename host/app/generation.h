// Image sampling over plugin components: a model (text encoders, denoiser, VAE) and a noise
// scheduler, classifier-free guidance, and seeds that reproduce PyTorch's CPU stream
// (torch.manual_seed(seed); torch.randn(latent shape); ancestral noise drawn from the same
// generator right after, step by step, as sd-scripts' gen_img does). Text-to-image, img2img,
// inpainting for ordinary (non-inpainting) models by latent blending, and gen_img's highres fix.
// Several requests of one size denoise together as one batch (gen_img's --batch_size): their
// prompts and negative prompts are encoded in one call (so they share one chunk count) and each
// image keeps its own seed's stream, so a batch gives the images its requests give one by one.
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
  // img2img: the start image [1, 3, height, width] in [-1, 1] (or already-encoded latents
  // [1, 4, height/8, width/8]; these win), as gen_img does it: encoded to a VAE posterior sample
  // drawn from torch's global RNG where gen_img's seeding loop leaves it, noised with the draw
  // after the seed's start latents and step noises, to timesteps[-init_timestep] with
  // init_timestep = min(int(steps * strength) + 1, steps); sampling runs the last
  // int(steps * strength) timesteps (at most steps - 1). docs/generation.md.
  at::Tensor init_image, init_latents;
  double strength = 0.8;
  // Inpainting (needs an init image): [1, 1, height, width] in [0, 1], 1 = repaint.
  at::Tensor mask;
};

// gen_img's highres fix: a first pass at scale x the size (rounded down to a multiple of 32) with
// `steps` steps, upscaled to the full size, then img2img at the request's strength with the
// seed + 1 and no mask (as gen_img runs its second stage).
struct HighresFix {
  double scale = 0.5;
  int64_t steps = 28;
  double first_strength = 0.8;    // first pass strength when the request is img2img itself
  bool latents_upscaling = false;  // bilinear in latent space; else bicubic on the decoded image
};

struct ImageResult {
  at::Tensor latents;  // final latents [1, 4, H/8, W/8]
  at::Tensor image;    // decoded [1, 3, H, W] in [-1, 1]
};

class Generator {
 public:
  // `vae_batch_size`: decode at most this many images at once (0 = the whole batch).
  // The model must be loaded: its describe gives the latent shape and the added conditioning.
  Generator(host::Component& model, host::Component& scheduler, int64_t vae_batch_size = 0);
  ImageResult run(const ImageRequest& r, bool progress = true);
  // One denoising batch: cond and uncond of every request in one denoise call [2B, ...]. The
  // requests must share size, steps, strength, and whether they are img2img / inpainting;
  // prompts, negative prompts, seeds, scales, start images and masks may differ.
  std::vector<ImageResult> run_batch(const std::vector<ImageRequest>& rs, bool progress = true);
  // Both passes; returns the second's result. `first` (if given) receives the first pass's.
  ImageResult run_highres(const ImageRequest& r, const HighresFix& h, bool progress = true,
                          ImageResult* first = nullptr);
  std::vector<ImageResult> run_highres_batch(const std::vector<ImageRequest>& rs, const HighresFix& h,
                                             bool progress = true, std::vector<ImageResult>* first = nullptr);

 private:
  // run_batch's parts, in order (generation.cpp).
  struct Batch;
  void encode_prompts(Batch& b);
  void plan_timesteps(Batch& b);
  void draw_noises(Batch& b);
  at::Tensor encode_start_images(Batch& b);
  void start_latents(Batch& b);
  at::Tensor noised(Batch& b, int64_t index);
  void denoise(Batch& b, bool progress);
  at::Tensor decode(const at::Tensor& latents);

  host::Component& model_;
  host::Component& scheduler_;
  int64_t vae_batch_size_ = 0;
  int64_t latent_channels_ = 4, vae_factor_ = 8;
  int64_t noises_per_step_ = 1;  // the sampler's describe: gen_img's scheduler_num_noises_per_step
  std::vector<std::string> added_conditioning_;
};

// The loaded model's description (the ABI 1.2 describe slot) as JSON text; "{}" for a model
// built for an older ABI.
std::string describe_model(host::Component& model);

// Where a sampler's settings come from: the model's own scheduler config (a folder's file, or the
// family's standard config for a single file: the same model samples alike in either form), or
// gen_img's construction (the sampler's class defaults over SD's training betas, only the
// prediction type taken from the model).
enum class SchedulerSource { model, gen_img };
SchedulerSource scheduler_source_from_string(const std::string& name);

// The sampler's settings for `model` (text values for the keys the sampler declares).
std::map<std::string, std::string> scheduler_config_of(host::Component& model, const sumi_component& sampler,
                                                       SchedulerSource source = SchedulerSource::model);

// HxWxC 8-bit (read_image) -> [1, 3, height, width] in [-1, 1], resized with antialiased bicubic.
at::Tensor to_model_image(const at::Tensor& hwc, int64_t width, int64_t height);
// HxWxC 8-bit -> [1, 1, height, width] in [0, 1] (channel mean; white = 1).
at::Tensor to_mask(const at::Tensor& hwc, int64_t width, int64_t height);

// [1, 3, H, W] in [-1, 1] -> HxWx3 8-bit, as A1111/diffusers: round(clamp(x / 2 + 0.5, 0, 1) * 255).
at::Tensor to_uint8_hwc(const at::Tensor& image);

}  // namespace sumi::app
