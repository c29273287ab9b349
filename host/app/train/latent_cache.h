// Training batches for the trainer: kohya's latent caching (--cache_latents, in memory, or
// --cache_latents_to_disk, `<image stem>.npz` beside each image, reused while it matches) and
// the threaded data loader (--max_data_loader_n_workers, --persistent_data_loader_workers).
// The dataset layer does the files and the threads (sumi/datasets/latent_cache.h, loader.h);
// this adds the VAE: encoding for the cache, and the latents of a batch either way.
#pragma once

#include <sumi/datasets/latent_cache.h>
#include <sumi/datasets/loader.h>

#include <ATen/ATen.h>
#include <sumi/sumi.h>

#include <filesystem>
#include <functional>
#include <map>
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

// The VAE scaling factor of the loaded model (its describe's "scaling_factor": SD1/SD2 0.18215,
// SDXL 0.13025), which kohya applies to cached latents. Throws UserError naming the model when
// it does not say (a model plugin built for an ABI before 1.2).
double model_latent_scale(host::Component& model);

// A model plugin's VAE as a LatentEncoder: vae_encode with sampling, no grad, bf16 autocast
// when `bf16`, divided by `scale` (model_latent_scale) to give kohya's unscaled latents.
LatentEncoder model_latent_encoder(host::Component& model, double scale, bool bf16);

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
              double latent_scale, LatentEncoder encode);
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

// kohya's --cache_text_encoder_outputs (SDXL only, as in kohya): every caption's conditioning
// (`cond` [L, C], `pooled` [P]) computed once before training, when the text encoders are not
// trained and captions do not change per step. In memory by caption, or with
// --cache_text_encoder_outputs_to_disk in kohya's `<image stem>_te_outputs.npz` beside each
// image (hidden_state1 = cond's first C - P channels, hidden_state2 = the last P, pool2), plus
// the caption it was made from, so a changed caption rebuilds the file.
class TextEncoderCache {
 public:
  // nullptr when `args` does not ask for it. Throws UserError for a model whose describe does
  // not offer the cache (`supported`: text_encoder_output_cache; kohya has it for SDXL) or when
  // the run trains through the text encoders (`trains_text_encoder`; `mode` is the training
  // mode, "network", "dreambooth" or "textual_inversion", and picks the hint), ConfigError for
  // per-step captions.
  static std::unique_ptr<TextEncoderCache> create(const std::vector<datasets::Dataset>& data, const datasets::CliOptions& args,
                                                  bool supported, bool trains_text_encoder, host::Component& model,
                                                  bool bf16, const std::string& mode = "network");
  // The conditioning of a batch [cond, pooled] for the items' captions, on the model's device.
  std::pair<at::Tensor, at::Tensor> lookup(std::size_t dataset, const std::vector<std::size_t>& items,
                                           const std::vector<std::string>& captions) const;
  const std::string& summary() const { return summary_; }

  // kohya's file for an image: `<stem>_te_outputs.npz`.
  static std::filesystem::path npz_path(const std::filesystem::path& image);

 private:
  struct Entry {
    at::Tensor cond, pooled;  // in memory
  };
  std::pair<at::Tensor, at::Tensor> read(const std::filesystem::path& file, const std::string& caption, std::string* why) const;
  bool to_disk_ = false;
  c10::Device device_{c10::kCPU};  // where lookup hands the rows (the model's)
  std::map<std::string, Entry> by_caption_;
  std::vector<std::vector<std::filesystem::path>> files_;
  std::string summary_;
};

}  // namespace sumi::app
