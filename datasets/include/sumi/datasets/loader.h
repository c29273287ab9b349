// The training data loader (kohya's torch DataLoader with --max_data_loader_n_workers): the
// batches of an epoch plan are prepared in plan order, the next ones on worker threads while
// the current step runs. A batch's images (decode, resize, crop, color_aug, flip) or cached
// latents (flip choice) are a pure function of (seed, epoch, position in the plan): each batch
// draws from its own generator, so any number of workers, or none, gives bitwise the same
// batches, and a resumed run gets the same batches as an uninterrupted one.
// Captions are not made here: they depend on the step the batch is trained at (token warmup)
// and are drawn by the caller when it consumes the batch.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <exception>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "sumi/datasets/dataset.h"
#include "sumi/datasets/latent_cache.h"

namespace sumi::datasets {

struct LoadedBatch {
  std::size_t dataset = 0;
  Batch batch;
  // One per item. With cached latents the pixels are empty; width/height are the bucket's and
  // original / crop_ltrb / flipped are set (SDXL conditioning).
  std::vector<TrainingImage> images;
  // Cached latents (unscaled, kohya's), one [C, H/8, W/8] block per item; empty without a cache.
  std::vector<std::shared_ptr<const std::vector<float>>> latents;
  std::vector<std::int64_t> latent_shape;
};

class BatchLoader {
 public:
  // `datasets` and `latents` (nullable: no cache) must outlive the loader. `workers` 0 loads
  // on the caller's thread; more are capped at the core count. Persistent workers live as long
  // as the loader; otherwise they are started per epoch and joined when it ends.
  BatchLoader(const std::vector<Dataset>& datasets, std::uint64_t seed, unsigned workers, bool persistent,
              const LatentStore* latents = nullptr);
  ~BatchLoader();
  BatchLoader(const BatchLoader&) = delete;
  BatchLoader& operator=(const BatchLoader&) = delete;

  // Serve `plan` (the epoch's group_epoch_plan) from batch `first`. Drops what was prefetched
  // of the previous epoch.
  void start_epoch(int epoch, std::vector<GroupBatch> plan, std::size_t first = 0);
  // The next batch of the plan. Rethrows a worker's error (e.g. an image that became
  // unreadable) for the batch it happened in. Throws std::logic_error past the end.
  LoadedBatch next();

  // One batch, on the calling thread: what the workers run.
  LoadedBatch load(int epoch, std::size_t index, const GroupBatch& gb) const;
  unsigned workers() const { return workers_; }

 private:
  struct Epoch;
  void worker_loop();
  void stop_workers();
  void start_workers();

  const std::vector<Dataset>& datasets_;
  const LatentStore* latents_;
  std::uint64_t seed_;
  unsigned workers_;
  bool persistent_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::shared_ptr<Epoch> epoch_;
  bool stopping_ = false;
  std::vector<std::thread> threads_;
};

}  // namespace sumi::datasets
