// kohya-ss sd-scripts' latent cache (--cache_latents, --cache_latents_to_disk): the VAE latents
// of every training image computed once before training, kept in memory or in a file beside
// the image. The file is kohya's: `<image stem>.npz` holding `latents` (float32 [C, H/8, W/8],
// unscaled: the VAE posterior sample before the scaling factor), `original_size` ([w, h]),
// `crop_ltrb` ([l, t, r, b]) and, with flip_aug, `latents_flipped`; kohya reads sumi's files and
// sumi reads kohya's. A file is reused only when its latent size is the image's bucket / 8,
// its original size and crop are the image's, and it has the flipped latents flip_aug needs;
// otherwise (or when it is damaged) it is rebuilt.
// Also the data-loader options that travel with the dataset options (kohya's flag names).
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "sumi/datasets/bucket.h"
#include "sumi/datasets/config.h"
#include "sumi/datasets/dataset.h"

namespace sumi::datasets {

struct DataLoaderOptions {
  bool cache_latents = false;          // --cache_latents (implied by --cache_latents_to_disk, as kohya)
  bool cache_latents_to_disk = false;  // --cache_latents_to_disk: <image stem>.npz beside each image
  int vae_batch_size = 1;              // --vae_batch_size: images per VAE call while caching
  int workers = 8;                     // --max_data_loader_n_workers (kohya's default 8; capped at the core count)
  bool persistent_workers = false;     // --persistent_data_loader_workers
  // --cache_text_encoder_outputs (SDXL; implied by --cache_text_encoder_outputs_to_disk, as kohya)
  bool cache_text_encoder_outputs = false;
  bool cache_text_encoder_outputs_to_disk = false;  // <image stem>_te_outputs.npz beside each image
};

// Keys of `CliOptions` read by data_loader_options (and skipped by the dataset config).
bool is_data_loader_option(std::string_view key);
// Reads and checks them (types, vae_batch_size >= 1, workers >= 0). Throws ConfigError.
DataLoaderOptions data_loader_options(const CliOptions& cli);

// kohya refuses latent caching with per-step image augmentations (the latent is fixed):
// throws ConfigError naming the subset when color_aug or random_crop is on.
void check_latent_caching(const DatasetConfig& config);

// kohya's refusal of text-encoder output caching when captions change from step to step:
// throws ConfigError naming the subset and the option (shuffle_caption, caption_dropout_rate,
// caption_dropout_every_n_epochs, caption_tag_dropout_rate, token_warmup_step, enable_wildcard).
void check_text_encoder_caching(const DatasetConfig& config);

// kohya's cache file for an image: the image path with its extension replaced by ".npz".
std::filesystem::path latents_npz_path(const std::filesystem::path& image);

// What a cached entry must match: the bucket the image trains at, its original size, kohya's
// crop (get_crop_ltrb; latents are always centre-cropped) and whether flipped latents are needed.
struct LatentKey {
  Size bucket;
  Size original;
  CropLtrb crop_ltrb;
  bool flip = false;
};

struct CachedLatents {
  std::vector<std::int64_t> shape;  // [C, bucket.height / 8, bucket.width / 8]
  std::vector<float> latents;       // unscaled (kohya's), C order
  std::vector<float> flipped;       // the horizontally flipped image's latents; empty without flip_aug
  Size original;
  CropLtrb crop_ltrb{0, 0, 0, 0};
};

// The cached latents in `npz` when they match `want`; nullopt otherwise, with the reason in
// `why` ("no file", "latents are 64x64, the bucket needs 32x32", or the damage found).
std::optional<CachedLatents> read_cached_latents(const std::filesystem::path& npz, const LatentKey& want,
                                                 std::string* why = nullptr);
// Writes kohya's layout (temp file, then rename). Throws NpzError naming the file.
void write_cached_latents(const std::filesystem::path& npz, const CachedLatents& c);

// An item's key, and the image its latents are computed from: resized and centre-cropped to
// its bucket, no color_aug or flip (kohya's cache_batch_latents).
LatentKey latent_key(const Dataset& dataset, std::size_t item);
TrainingImage latent_source_image(const Dataset& dataset, std::size_t item);

// The latents of every item of several datasets: in memory (cache_latents) or the file to
// read at load time (cache_latents_to_disk, as kohya: the disk cache is not held in memory).
class LatentStore {
 public:
  struct Entry {
    std::shared_ptr<const CachedLatents> memory;
    std::filesystem::path file;
    LatentKey key;
  };
  explicit LatentStore(std::vector<std::size_t> items_per_dataset);
  Entry& at(std::size_t dataset, std::size_t item) { return entries_.at(dataset).at(item); }
  const Entry& at(std::size_t dataset, std::size_t item) const { return entries_.at(dataset).at(item); }
  // The latents of an item; reads its file when not in memory. Throws DatasetError naming
  // the file when it vanished or no longer matches.
  std::shared_ptr<const CachedLatents> get(std::size_t dataset, std::size_t item) const;

 private:
  std::vector<std::vector<Entry>> entries_;
};

}  // namespace sumi::datasets
