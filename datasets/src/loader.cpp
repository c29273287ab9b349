#include "sumi/datasets/loader.h"

#include <algorithm>
#include <stdexcept>

#include "sumi/datasets/random.h"

namespace sumi::datasets {

namespace {
constexpr std::uint64_t kLoaderStream = 0x6c6f6164;  // "load"
}

struct BatchLoader::Epoch {
  int epoch = 0;
  std::vector<GroupBatch> plan;
  std::size_t next_load = 0;  // first batch no worker has taken yet
  std::size_t next_take = 0;  // the batch next() returns
  std::vector<LoadedBatch> slots;
  std::vector<std::exception_ptr> errors;
  std::vector<char> ready;
};

BatchLoader::BatchLoader(const std::vector<Dataset>& datasets, std::uint64_t seed, unsigned workers, bool persistent,
                         const LatentStore* latents)
    : datasets_(datasets), latents_(latents), seed_(seed), persistent_(persistent) {
  workers_ = std::min(workers, std::max(1u, std::thread::hardware_concurrency()));
}

BatchLoader::~BatchLoader() { stop_workers(); }

LoadedBatch BatchLoader::load(int epoch, std::size_t index, const GroupBatch& gb) const {
  auto rng = derived_rng(seed_, kLoaderStream, (static_cast<std::uint64_t>(epoch) << 32) | index);
  const Dataset& ds = datasets_.at(gb.dataset);
  LoadedBatch out;
  out.dataset = gb.dataset;
  out.batch = gb.batch;
  for (std::size_t item : gb.batch.items) {
    if (!latents_) {
      out.images.push_back(ds.image(item, rng));
      continue;
    }
    const ImageItem& it = ds.items().at(item);
    const SubsetConfig& s = ds.config().subsets.at(it.subset);
    auto c = latents_->get(gb.dataset, item);
    TrainingImage ti;
    ti.flipped = s.flip_aug && uniform01(rng) < 0.5;  // kohya draws the flip first, once per item
    const Size bucket = it.bucket.bucket;
    ti.image.width = bucket.width;
    ti.image.height = bucket.height;
    ti.original = c->original;
    ti.crop = {(it.bucket.resized.width - bucket.width) / 2, (it.bucket.resized.height - bucket.height) / 2};
    ti.crop_ltrb = c->crop_ltrb;
    if (ti.flipped) {
      if (c->flipped.empty()) throw DatasetError(it.path.string() + ": cached latents have no flipped version for flip_aug");
      const double w = bucket.width;
      ti.crop_ltrb = {w - c->crop_ltrb.right, c->crop_ltrb.top, w - c->crop_ltrb.left, c->crop_ltrb.bottom};
    }
    if (!out.latent_shape.empty() && out.latent_shape != c->shape)
      throw DatasetError(it.path.string() + ": cached latents differ in shape from the rest of its batch");
    out.latent_shape = c->shape;
    // Aliasing pointers: the batch shares the cache's memory, no copy.
    out.latents.emplace_back(c, ti.flipped ? &c->flipped : &c->latents);
    out.images.push_back(std::move(ti));
  }
  return out;
}

void BatchLoader::start_workers() {
  stopping_ = false;
  for (unsigned i = 0; i < workers_; ++i) threads_.emplace_back([this] { worker_loop(); });
}

void BatchLoader::stop_workers() {
  {
    std::lock_guard<std::mutex> lk(mu_);
    stopping_ = true;
  }
  cv_.notify_all();
  for (auto& t : threads_) t.join();
  threads_.clear();
}

void BatchLoader::worker_loop() {
  const std::size_t ahead = 2 * static_cast<std::size_t>(workers_);  // torch's prefetch_factor 2 per worker
  std::unique_lock<std::mutex> lk(mu_);
  for (;;) {
    cv_.wait(lk, [&] {
      return stopping_ || (epoch_ && epoch_->next_load < epoch_->plan.size() && epoch_->next_load < epoch_->next_take + ahead);
    });
    if (stopping_) return;
    std::shared_ptr<Epoch> e = epoch_;
    const std::size_t i = e->next_load++;
    lk.unlock();
    LoadedBatch b;
    std::exception_ptr err;
    try {
      b = load(e->epoch, i, e->plan[i]);
    } catch (...) {
      err = std::current_exception();
    }
    lk.lock();
    e->slots[i] = std::move(b);
    e->errors[i] = err;
    e->ready[i] = 1;
    cv_.notify_all();
  }
}

void BatchLoader::start_epoch(int epoch, std::vector<GroupBatch> plan, std::size_t first) {
  if (workers_ > 0 && !persistent_) stop_workers();
  auto e = std::make_shared<Epoch>();
  e->epoch = epoch;
  e->plan = std::move(plan);
  e->next_load = e->next_take = std::min(first, e->plan.size());
  e->slots.resize(e->plan.size());
  e->errors.resize(e->plan.size());
  e->ready.assign(e->plan.size(), 0);
  {
    std::lock_guard<std::mutex> lk(mu_);
    epoch_ = std::move(e);
  }
  cv_.notify_all();
  if (workers_ > 0 && threads_.empty()) start_workers();
}

LoadedBatch BatchLoader::next() {
  std::shared_ptr<Epoch> e;
  {
    std::lock_guard<std::mutex> lk(mu_);
    e = epoch_;
  }
  if (!e || e->next_take >= e->plan.size()) throw std::logic_error("BatchLoader::next past the end of the epoch plan");
  const std::size_t i = e->next_take;
  if (workers_ == 0) {
    ++e->next_take;
    return load(e->epoch, i, e->plan[i]);
  }
  LoadedBatch b;
  std::exception_ptr err;
  {
    std::unique_lock<std::mutex> lk(mu_);
    cv_.wait(lk, [&] { return e->ready[i] != 0; });
    b = std::move(e->slots[i]);
    err = e->errors[i];
    ++e->next_take;
  }
  cv_.notify_all();
  // Non-persistent workers end with their epoch, as a torch DataLoader's do.
  if (!persistent_ && e->next_take == e->plan.size()) stop_workers();
  if (err) std::rethrow_exception(err);
  return b;
}

}  // namespace sumi::datasets
