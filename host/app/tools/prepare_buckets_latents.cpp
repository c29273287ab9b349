// `sumi prepare_buckets_latents`: kohya's finetune/prepare_buckets_latents.py. Each image of
// train_data_dir gets its aspect-ratio bucket (written to the metadata as "train_resolution",
// rounded down to multiples of 8) and its VAE latents in kohya's `<image stem>.npz` beside
// it (latents, original_size, crop_ltrb, latents_flipped with --flip_aug): the cache file
// `sumi train --cache_latents_to_disk` and kohya's fine_tune.py reuse. The VAE is the model
// plugin's (vae_encode), reached as the trainer reaches it.
#include "app/tools/tools.h"

#include "app/model_description.h"
#include "app/model_file.h"
#include "app/tools/dataset_files.h"
#include "app/tools/kohya_files.h"
#include "app/tools/plugin_model.h"
#include "app/tools/tool_args.h"
#include "app/train/latent_cache.h"
#include "core/error.h"
#include "core/progress.h"

#include "batch_tensor.h"

#include <sumi/datasets/bucket.h>
#include <sumi/datasets/image.h>
#include <sumi/datasets/latent_cache.h>
#include <sumi/datasets/npz.h>

#include <ATen/ATen.h>

#include <cmath>
#include <filesystem>
#include <iostream>
#include <map>
#include <memory>
#include <random>
#include <thread>

namespace fs = std::filesystem;
namespace ds = sumi::datasets;

namespace sumi::app::tools {

namespace {

std::string py_tuple(ds::Size s) { return "(" + std::to_string(s.width) + ", " + std::to_string(s.height) + ")"; }

struct Pending {
  std::string image;  // path as listed
  fs::path npz;
  ds::TrainingImage pixels;  // resized and centre-cropped to the bucket
};

std::vector<float> floats(const at::Tensor& t) {
  const at::Tensor c = t.contiguous();
  return std::vector<float>(c.data_ptr<float>(), c.data_ptr<float>() + c.numel());
}

ToolArgs declare_args() {
  ToolArgs args("prepare_buckets_latents",
                "Assigns each image its bucket (metadata train_resolution) and caches its VAE latents in <image stem>.npz "
                "(kohya finetune/prepare_buckets_latents.py).");
  args.positional("train_data_dir", "folder of the training images")
      .positional("in_json", "metadata file to read (from merge_captions_to_metadata / merge_dd_tags_to_metadata)")
      .positional("out_json", "metadata file to write")
      .positional("model_name_or_path", "checkpoint whose VAE encodes the latents (.safetensors / .ckpt / diffusers folder)")
      .flag(kKohyaV2, "kohya keeps this flag for compatibility and does not use it; the model's family comes from the file")
      .flag(kKohyaSdxl, "the checkpoint is SDXL (detected from the file when not given)")
      .value("batch_size", "images per VAE call", "1")
      .value("max_data_loader_n_workers", "threads reading and resizing the images (default: one per core)")
      .value("max_resolution", "maximum training resolution 'width,height'", "512,512")
      .value("min_bucket_reso", "smallest bucket side", "256")
      .value("max_bucket_reso", "largest bucket side", "1024")
      .value("bucket_reso_steps", "bucket sides are multiples of this", "64")
      .flag("bucket_no_upscale", "per-image buckets that never enlarge the image (min/max_bucket_reso then unused)")
      .value("mixed_precision", "VAE precision: no (float32) or bf16", "no", {"no", "fp16", "bf16"})
      .flag("full_path", "key the metadata by the image's path instead of its file name without extension")
      .flag("flip_aug", "also cache the latents of the horizontally flipped image (latents_flipped)")
      .flag("skip_existing", "keep an existing .npz whose latents already have the bucket's size")
      .flag("recursive", "also look in every folder below train_data_dir (kohya: use with --full_path)")
      .list("plugin-dir", "extra plugin folder (the model plugin)");
  return args;
}

// --max_resolution "width,height".
ds::Size max_resolution(const ToolArgs& args) {
  const std::string r = args.str("max_resolution");
  const auto comma = r.find(',');
  int w = 0, h = 0;
  try {
    size_t p1 = 0, p2 = 0;
    if (comma == std::string::npos || r.find(',', comma + 1) != std::string::npos) throw std::invalid_argument(r);
    w = std::stoi(r.substr(0, comma), &p1);
    h = std::stoi(r.substr(comma + 1), &p2);
    if (p1 != comma || p2 != r.size() - comma - 1 || w <= 0 || h <= 0) throw std::invalid_argument(r);
  } catch (const std::exception&) {
    args.fail("--max_resolution '" + r + "' is not 'width,height' (e.g. 512,512 or 1024,1024)");
  }
  return {w, h};
}

// kohya's bucket manager from the flags, with its notes on the settings.
std::unique_ptr<ds::BucketSelector> bucket_selector(const ToolArgs& args) {
  ds::BucketSettings bs;
  bs.resolution = max_resolution(args);
  bs.enable_bucket = true;
  bs.no_upscale = args.on("bucket_no_upscale");
  bs.min_bucket_reso = static_cast<int>(args.integer("min_bucket_reso"));
  bs.max_bucket_reso = static_cast<int>(args.integer("max_bucket_reso"));
  bs.reso_steps = static_cast<int>(args.integer("bucket_reso_steps"));
  if (bs.reso_steps < 1) args.fail("--bucket_reso_steps must be at least 1");
  if (bs.reso_steps % 8 > 0) std::cout << "resolution of buckets in training time is a multiple of 8\n";
  if (bs.reso_steps % 32 > 0) std::cout << "WARNING: bucket_reso_steps is not divisible by 32. It is not working with SDXL\n";
  std::unique_ptr<ds::BucketSelector> buckets;
  try {
    buckets = std::make_unique<ds::BucketSelector>(bs);
  } catch (const std::invalid_argument& e) {
    args.fail(std::string(e.what()) + " (--max_resolution, --min_bucket_reso, --max_bucket_reso, --bucket_reso_steps)");
  }
  if (bs.no_upscale)
    std::cout << "min_bucket_reso and max_bucket_reso are ignored if bucket_no_upscale is set, because bucket reso is "
                 "defined by image size automatically\n";
  return buckets;
}

// kohya's --skip_existing test: the file has the keys and latents of the bucket's size (and the
// flipped latents when asked for). kohya checks only the latent size: a file of another
// original size or crop is kept too, as kohya keeps it.
bool existing_latents_fit(const fs::path& npz, ds::Size bucket, bool flip, int64_t vae_factor) {
  try {
    const auto m = ds::read_npz(npz);
    const auto* lat = ds::find_member(m, "latents");
    const auto* fl = ds::find_member(m, "latents_flipped");
    return lat && ds::find_member(m, "original_size") && ds::find_member(m, "crop_ltrb") && lat->shape.size() == 3 &&
           lat->shape[1] == bucket.height / vae_factor && lat->shape[2] == bucket.width / vae_factor &&
           (!flip || (fl && fl->shape.size() == 3 && fl->shape[1] == lat->shape[1] && fl->shape[2] == lat->shape[2]));
  } catch (const ds::NpzError&) {
    return false;
  }
}

// The model plugin's VAE, writing each batch's latents to the images' .npz files.
class LatentWriter {
 public:
  LatentWriter(LatentEncoder encode, bool flip) : encode_(std::move(encode)), flip_(flip) {}
  void write(std::vector<Pending>& batch) {
    if (batch.empty()) return;
    std::vector<const ds::Image*> ptrs;
    for (const auto& p : batch) ptrs.push_back(&p.pixels.image);
    const at::Tensor x = ds::images_to_tensor(ptrs);
    const at::Tensor z = encode_(x);
    const at::Tensor zf = flip_ ? encode_(x.flip({3})) : at::Tensor();
    for (size_t k = 0; k < batch.size(); ++k) {
      const auto i = static_cast<int64_t>(k);
      if (!at::isfinite(z[i]).all().item<bool>() || (flip_ && !at::isfinite(zf[i]).all().item<bool>()))
        throw host::UserError("NaN detected in latents: " + batch[k].image +
                              " (the VAE overflowed; kohya stops here too): try --mixed_precision no or another VAE");
      ds::CachedLatents c;
      c.shape = z[i].sizes().vec();
      c.latents = floats(z[i]);
      if (flip_) c.flipped = floats(zf[i]);
      c.original = batch[k].pixels.original;
      c.crop_ltrb = batch[k].pixels.crop_ltrb;
      ds::write_cached_latents(batch[k].npz, c);
      ++encoded_;
    }
    batch.clear();
  }
  size_t encoded() const { return encoded_; }

 private:
  LatentEncoder encode_;
  bool flip_;
  size_t encoded_ = 0;
};

// One run over the images: buckets into the metadata, latents into .npz files.
class BucketRun {
 public:
  BucketRun(const ToolArgs& args, const ds::BucketSelector& buckets, MetadataJson& metadata, LatentWriter& writer,
            int64_t vae_factor, unsigned threads)
      : buckets_(buckets), metadata_(metadata), writer_(writer), in_json_(args.str("in_json")), vae_factor_(vae_factor),
        batch_size_(args.integer("batch_size")), threads_(threads), flip_(args.on("flip_aug")),
        full_path_(args.on("full_path")), skip_existing_(args.on("skip_existing")) {}

  // Images are read and resized ahead on `threads` threads, a window at a time, in order.
  void run(const std::vector<std::string>& images) {
    const size_t window = std::max<size_t>(threads_ * 2, static_cast<size_t>(batch_size_));
    sumi_progress* bar = host::progress_begin("latents", static_cast<int64_t>(images.size()));
    try {
      for (size_t from = 0; from < images.size(); from += window) {
        const size_t n = std::min(window, images.size() - from);
        Window w = choose_buckets(std::vector<std::string>(images.begin() + static_cast<std::ptrdiff_t>(from),
                                                           images.begin() + static_cast<std::ptrdiff_t>(from + n)));
        load_images(w);
        record(w, bar);
      }
      for (auto& [b, list] : pending_) writer_.write(list);
    } catch (...) {
      host::progress_end(bar);
      throw;
    }
    host::progress_end(bar);
  }

  // kohya's summary: bucket index in its sorted bucket list, then the mean aspect-ratio error.
  void print_summary() const {
    std::vector<ds::Size> resos = buckets_.predefined();
    if (resos.empty())
      for (const auto& [b, c] : bucket_counts_) resos.push_back(b);
    for (size_t i = 0; i < resos.size(); ++i) {
      auto it = bucket_counts_.find(resos[i]);
      if (it != bucket_counts_.end() && it->second > 0)
        std::cout << "bucket " << i << " " << py_tuple(resos[i]) << ": " << it->second << "\n";
    }
    double mean = 0;
    for (double e : ar_errors_) mean += e;
    std::cout << "mean ar error: "
              << (ar_errors_.empty() ? std::string("nan") : py_float(mean / static_cast<double>(ar_errors_.size()))) << "\n";
    std::cout << "latents: " << writer_.encoded() << " encoded, " << skipped_ << " kept (--skip_existing)\n";
  }

 private:
  struct Window {
    std::vector<std::string> images;
    std::vector<std::string> errors;
    std::vector<ds::BucketChoice> choices;
    std::vector<ds::TrainingImage> loaded;
    std::vector<bool> wanted;
  };

  // Sizes and buckets first (cheap), so --skip_existing can avoid decoding.
  Window choose_buckets(std::vector<std::string> images) const {
    const size_t n = images.size();
    Window w{std::move(images), std::vector<std::string>(n), std::vector<ds::BucketChoice>(n),
             std::vector<ds::TrainingImage>(n), std::vector<bool>(n, false)};
    for (size_t k = 0; k < n; ++k) {
      try {
        w.choices[k] = buckets_.select(ds::read_image_size(w.images[k]));
      } catch (const std::exception& e) {
        w.errors[k] = e.what();
        continue;
      }
      w.wanted[k] = !(skip_existing_ && existing_latents_fit(ds::latents_npz_path(w.images[k]), w.choices[k].bucket, flip_,
                                                             vae_factor_));
    }
    return w;
  }

  void load_images(Window& w) const {
    auto work = [&](size_t first) {
      std::mt19937_64 unused;
      for (size_t k = first; k < w.images.size(); k += threads_) {
        if (!w.wanted[k]) continue;
        try {
          w.loaded[k] = ds::load_training_image(w.images[k], w.choices[k], ds::AugmentOptions{}, unused);
        } catch (const std::exception& e) {
          w.errors[k] = e.what();
        }
      }
    };
    std::vector<std::thread> pool;
    for (unsigned t = 1; t < threads_; ++t) pool.emplace_back(work, t);
    work(0);
    for (auto& t : pool) t.join();
  }

  // Each image's train_resolution into the metadata; its pixels into its bucket's next batch.
  void record(Window& w, sumi_progress* bar) {
    for (size_t k = 0; k < w.images.size(); ++k) {
      const std::string& image = w.images[k];
      host::progress_update(bar, 1, nullptr);
      if (!w.errors[k].empty()) {
        std::cout << "Could not load image path: " << image << ", error: " << w.errors[k] << "\n";
        continue;
      }
      const std::string key = full_path_ ? image : path_stem(image);
      auto& entry = metadata_[key];
      if (entry.is_null()) entry = MetadataJson::object();
      if (!entry.is_object()) throw host::UserError(in_json_ + ": the entry of \"" + key + "\" is not an object");
      const ds::Size b = w.choices[k].bucket;
      ar_errors_.push_back(std::abs(w.choices[k].ar_error));
      ++bucket_counts_[b];
      entry["train_resolution"] = {b.width - b.width % 8, b.height - b.height % 8};
      if (!w.wanted[k]) {
        ++skipped_;
        continue;
      }
      auto& list = pending_[b];
      list.push_back({image, ds::latents_npz_path(image), std::move(w.loaded[k])});
      if (static_cast<int64_t>(list.size()) >= batch_size_) writer_.write(list);
    }
  }

  const ds::BucketSelector& buckets_;
  MetadataJson& metadata_;
  LatentWriter& writer_;
  std::string in_json_;
  int64_t vae_factor_, batch_size_;
  unsigned threads_;
  bool flip_, full_path_, skip_existing_;
  std::map<ds::Size, std::vector<Pending>> pending_;  // bucket -> images waiting for a batch
  std::map<ds::Size, int> bucket_counts_;
  std::vector<double> ar_errors_;
  size_t skipped_ = 0;
};

}  // namespace

int cmd_prepare_buckets_latents(const std::vector<std::string>& argv) {
  ToolArgs args = declare_args();
  if (!args.parse(argv)) return 0;
  const std::string data_dir = args.str("train_data_dir"), in_json = args.str("in_json"), out_json = args.str("out_json"),
                    model_path = args.str("model_name_or_path");
  if (args.integer("batch_size") < 1) args.fail("--batch_size must be at least 1");
  if (args.str("mixed_precision") == "fp16")
    args.fail("--mixed_precision fp16: libtorch's CPU VAE has no fp16 kernels; use bf16 or no");
  unsigned threads = std::max(1u, std::thread::hardware_concurrency());
  if (auto n = args.opt_integer("max_data_loader_n_workers")) {
    if (*n < 0) args.fail("--max_data_loader_n_workers must be 0 or more");
    threads = std::max<unsigned>(1u, static_cast<unsigned>(*n));
  }
  const std::unique_ptr<ds::BucketSelector> buckets = bucket_selector(args);

  const auto images = kohya_glob_images(data_dir, args.on("recursive"), "train_data_dir");
  std::cout << "found " << images.size() << " images.\n";
  std::error_code ec;
  if (!fs::is_regular_file(in_json, ec))
    args.fail("in_json '" + in_json + "' does not exist (make it with merge_captions_to_metadata / merge_dd_tags_to_metadata)");
  std::cout << "loading existing metadata: " << in_json << "\n";
  MetadataJson metadata = read_metadata_json(in_json, "in_json");

  // The VAE, through the model plugin that loads the file (--v2 is unused, as in kohya).
  auto pm = tool_plugin_manager(args.strs("plugin-dir"));
  const std::string component = tool_model_component(
      pm, model_path, "model_name_or_path", args.on(kKohyaSdxl) ? std::vector<std::string>{kKohyaSdxl} : std::vector<std::string>{});
  host::Registry registry;
  PluginModel model(pm, registry, component, model_path, "vae");
  const double scale = model_latent_scale(model.component());
  LatentWriter writer(model_latent_encoder(model.component(), scale, args.str("mixed_precision") == "bf16"), args.on("flip_aug"));

  BucketRun run(args, *buckets, metadata, writer, describe(model.component()).vae_scale_factor, threads);
  run.run(images);
  run.print_summary();
  std::cout << "writing metadata: " << out_json << "\n";
  write_metadata_json(out_json, metadata);
  std::cout << "done!\n";
  return 0;
}

}  // namespace sumi::app::tools
