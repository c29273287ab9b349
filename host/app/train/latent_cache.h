// Training batches for the trainer: kohya's latent caching (--cache_latents, in memory, or
// --cache_latents_to_disk, `<image stem>.npz` beside each image, reused while it matches) and
// the threaded data loader (--max_data_loader_n_workers, --persistent_data_loader_workers).
// The dataset layer does the files and the threads (sumi/datasets/latent_cache.h, loader.h);
// this adds the VAE: encoding for the cache, and the latents of a batch either way.
#pragma once

#include <sumi/datasets/latent_cache.h>
#include <sumi/datasets/loader.h>

#include <ATen/ATen.h>

#include <functional>
#include <memory>
#include <string>
#include <vector>

namespace sumi::host {
class Component;
}

namespace sumi::app {

// Images [B,3,H,W] in [-1, 1] -> unscaled float latents [B,C,H/8,W/8] (a posterior sample,
// as kohya caches them).
using LatentEncoder = std::function<at::Tensor(const at::Tensor& images)>;

// The VAE scaling factor kohya applies to latents for a family (SD1/SD2 0.18215, SDXL 0.13025).
double vae_scale_factor(const std::string& family);

// A model plugin's VAE as a LatentEncoder: vae_encode with sampling, no grad, bf16 autocast
// when `bf16`, divided by the family's scaling factor.
LatentEncoder model_latent_encoder(host::Component& model, const std::string& family, bool bf16);

// Fills `store` for every item of `data`: with to_disk, a matching `<stem>.npz` is reused and
// a missing, stale or damaged one is (re)written; without, latents are computed into memory.
// Items are encoded per dataset, bucket by bucket, in item order, `vae_batch_size` at a time
// (flipped latents right after their batch), as kohya's cache_latents does. Returns a line
// for the log. Throws UserError for NaN latents, naming the image.
std::string cache_latents(const std::vector<datasets::Dataset>& data, const datasets::DataLoaderOptions& options,
                          const LatentEncoder& encode, datasets::LatentStore& store);

// The batches of a training run in plan order, prefetched on worker threads.
class BatchSource {
 public:
  // Reads the loader options from `args` (kohya names); with latent caching, checks the
  // datasets allow it (no color_aug / random_crop) and fills the cache.
  BatchSource(const std::vector<datasets::Dataset>& data, const datasets::CliOptions& args, std::uint64_t seed,
              const std::string& family, LatentEncoder encode);
  void start_epoch(int epoch, std::vector<datasets::GroupBatch> plan, std::size_t first);

  struct Batch {
    std::vector<datasets::TrainingImage> images;  // SDXL sizes; no pixels when latents are cached
    at::Tensor latents;                           // scaled, float [B, C, H/8, W/8]
  };
  // The next batch; without a cache its images are encoded here (on the calling thread, so
  // the sampling draws stay in order with the rest of the step's random numbers).
  Batch next();
  const datasets::DataLoaderOptions& options() const { return options_; }

 private:
  datasets::DataLoaderOptions options_;
  double scale_;
  LatentEncoder encode_;
  std::unique_ptr<datasets::LatentStore> store_;
  std::unique_ptr<datasets::BatchLoader> loader_;
};

}  // namespace sumi::app
