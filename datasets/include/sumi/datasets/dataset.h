// One training dataset as kohya-ss sd-scripts builds it (library/train_util.py
// DreamBoothDataset, FineTuningDataset, ControlNetDataset, BaseDataset.make_buckets): the
// images of every subset with their raw captions and repeats, regularization images
// repeated to match the training count, each image's bucket, and per-epoch batch plans.
// Building checks every file up front (decode + caption), so a bad file stops the run
// before training, or is skipped when asked, never half-way through an epoch.
#pragma once

#include <cstdint>
#include <filesystem>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include "sumi/datasets/bucket.h"
#include "sumi/datasets/caption.h"
#include "sumi/datasets/config.h"
#include "sumi/datasets/image.h"

namespace sumi::datasets {

struct DatasetError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

struct ImageItem {
  std::filesystem::path path;
  std::filesystem::path conditioning_path;  // ControlNet only
  std::string caption;                      // before process_caption (file, metadata or class tokens)
  std::size_t subset = 0;                   // index into DatasetConfig::subsets
  bool is_reg = false;
  int num_repeats = 1;  // for regularization images, after matching the training count
  Size size;            // original pixel size
  BucketChoice bucket;
};

struct BuildOptions {
  bool decode_images = true;  // fully decode every image while checking (else header only)
  bool skip_bad = false;      // drop unreadable images/captions instead of refusing
  unsigned threads = 0;       // image checks in parallel; 0: one thread per core
};

struct Problem {
  std::filesystem::path path;
  std::string message;
};

struct BuildReport {
  std::vector<std::string> warnings;  // e.g. images without caption, empty subsets
  std::vector<Problem> skipped;       // files dropped with skip_bad
  long long num_train_images = 0;     // with repeats
  long long num_reg_images = 0;       // with the subsets' repeats, before matching
};

struct Batch {
  std::size_t bucket = 0;
  Size resolution;
  std::vector<std::size_t> items;  // indices into Dataset::items(); a repeated image appears more than once
};

class Dataset {
 public:
  // Lists, checks and buckets everything. Throws DatasetError listing every bad file (path and
  // reason) unless options.skip_bad; ConfigError for missing folders / metadata.
  static Dataset build(const DatasetConfig& config, const BuildOptions& options = {}, BuildReport* report = nullptr);

  const DatasetConfig& config() const { return config_; }
  const std::vector<ImageItem>& items() const { return items_; }
  // Bucket resolutions in kohya's order (sorted by width, then height) and their contents
  // (item indices, each repeated num_repeats times).
  const std::vector<Size>& bucket_resolutions() const { return bucket_resos_; }
  const std::vector<std::vector<std::size_t>>& buckets() const { return buckets_; }
  std::size_t batches_per_epoch() const;

  // The batches of one epoch: every bucket cut into batch_size pieces, the list of pieces and
  // the contents of each bucket shuffled with a generator derived from (seed, epoch), so any
  // epoch can be planned on its own (resume). Epochs are 1-based like kohya's.
  std::vector<Batch> epoch_plan(std::uint64_t seed, int epoch) const;

  // The caption of an item for a step (shuffle, dropout, warmup per its subset).
  std::string caption(std::size_t item, const CaptionStep& at, std::mt19937_64& rng) const;
  // The bucket-sized image of an item with its subset's augmentations.
  TrainingImage image(std::size_t item, std::mt19937_64& rng) const;
  double loss_weight(std::size_t item, double prior_loss_weight) const {
    return items_.at(item).is_reg ? prior_loss_weight : 1.0;
  }

 private:
  DatasetConfig config_;
  std::vector<ImageItem> items_;
  std::vector<Size> bucket_resos_;
  std::vector<std::vector<std::size_t>> buckets_;
};

// Several [[datasets]]: each keeps its own batch size and buckets; an epoch is all their
// batches in one shuffled order (as a shuffled DataLoader over kohya's DatasetGroup).
struct GroupBatch {
  std::size_t dataset = 0;
  Batch batch;
};
std::vector<GroupBatch> group_epoch_plan(const std::vector<Dataset>& datasets, std::uint64_t seed, int epoch);

// kohya's regularization matching: reg images take their subset's repeats in order until
// the training count is reached; if still short, each gets one more repeat in turn. Images
// never reached get 0. Exposed for tests.
std::vector<int> match_reg_repeats(const std::vector<int>& reg_repeats, long long num_train_images);

}  // namespace sumi::datasets
