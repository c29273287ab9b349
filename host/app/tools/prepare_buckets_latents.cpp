// `sumi prepare_buckets_latents`: kohya's finetune/prepare_buckets_latents.py. Each image of
// train_data_dir gets its aspect-ratio bucket (written to the metadata as "train_resolution",
// rounded down to multiples of 8) and its VAE latents in kohya's `<image stem>.npz` beside
// it (latents, original_size, crop_ltrb, latents_flipped with --flip_aug): the cache file
// `sumi train --cache_latents_to_disk` and kohya's fine_tune.py reuse. The VAE is the model
// plugin's (vae_encode), reached as the trainer reaches it.
#include "app/tools/tools.h"

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

}  // namespace

int cmd_prepare_buckets_latents(const std::vector<std::string>& argv) {
  ToolArgs args("prepare_buckets_latents",
                "Assigns each image its bucket (metadata train_resolution) and caches its VAE latents in <image stem>.npz "
                "(kohya finetune/prepare_buckets_latents.py).");
  args.positional("train_data_dir", "folder of the training images")
      .positional("in_json", "metadata file to read (from merge_captions_to_metadata / merge_dd_tags_to_metadata)")
      .positional("out_json", "metadata file to write")
      .positional("model_name_or_path", "checkpoint whose VAE encodes the latents (.safetensors / .ckpt / diffusers folder)")
      .flag("v2", "kohya keeps this flag for compatibility and does not use it; the model's family comes from the file")
      .flag("sdxl", "the checkpoint is SDXL (detected from the file when not given)")
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
  if (!args.parse(argv)) return 0;
  const std::string data_dir = args.str("train_data_dir"), in_json = args.str("in_json"), out_json = args.str("out_json"),
                    model_path = args.str("model_name_or_path");
  const int64_t batch_size = args.integer("batch_size");
  if (batch_size < 1) args.fail("--batch_size must be at least 1");
  if (args.str("mixed_precision") == "fp16")
    args.fail("--mixed_precision fp16: libtorch's CPU VAE has no fp16 kernels; use bf16 or no");
  const bool bf16 = args.str("mixed_precision") == "bf16", flip = args.on("flip_aug"), full_path = args.on("full_path");
  unsigned threads = std::max(1u, std::thread::hardware_concurrency());
  if (auto n = args.opt_integer("max_data_loader_n_workers")) {
    if (*n < 0) args.fail("--max_data_loader_n_workers must be 0 or more");
    threads = std::max<unsigned>(1u, static_cast<unsigned>(*n));
  }

  ds::BucketSettings bs;
  {
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
    bs.resolution = {w, h};
  }
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

  const auto images = kohya_glob_images(data_dir, args.on("recursive"), "train_data_dir");
  std::cout << "found " << images.size() << " images.\n";
  std::error_code ec;
  if (!fs::is_regular_file(in_json, ec))
    args.fail("in_json '" + in_json + "' does not exist (make it with merge_captions_to_metadata / merge_dd_tags_to_metadata)");
  std::cout << "loading existing metadata: " << in_json << "\n";
  MetadataJson metadata = read_metadata_json(in_json, "in_json");

  // The VAE, through the model plugin.
  std::string forced = args.on("sdxl") ? "sdxl" : "";
  const std::string family = model_family(model_path, "model_name_or_path", forced, "drop --sdxl for SD 1.x / 2.x checkpoints");
  auto pm = tool_plugin_manager(args.strs("plugin-dir"));
  host::Registry registry;
  PluginModel model(pm, registry, family, model_path, "vae");
  const double scale = model_latent_scale(model.component());
  const LatentEncoder encode = model_latent_encoder(model.component(), scale, bf16);

  std::map<ds::Size, std::vector<Pending>> pending;  // bucket -> images waiting for a batch
  std::map<ds::Size, int> bucket_counts;
  std::vector<double> ar_errors;
  size_t encoded = 0, skipped = 0;
  auto flush = [&](std::vector<Pending>& batch) {
    if (batch.empty()) return;
    std::vector<const ds::Image*> ptrs;
    for (const auto& p : batch) ptrs.push_back(&p.pixels.image);
    const at::Tensor x = ds::images_to_tensor(ptrs);
    const at::Tensor z = encode(x);
    const at::Tensor zf = flip ? encode(x.flip({3})) : at::Tensor();
    for (size_t k = 0; k < batch.size(); ++k) {
      const auto i = static_cast<int64_t>(k);
      if (!at::isfinite(z[i]).all().item<bool>() || (flip && !at::isfinite(zf[i]).all().item<bool>()))
        throw host::UserError("NaN detected in latents: " + batch[k].image +
                              " (the VAE overflowed; kohya stops here too): try --mixed_precision no or another VAE");
      ds::CachedLatents c;
      c.shape = z[i].sizes().vec();
      c.latents = floats(z[i]);
      if (flip) c.flipped = floats(zf[i]);
      c.original = batch[k].pixels.original;
      c.crop_ltrb = batch[k].pixels.crop_ltrb;
      ds::write_cached_latents(batch[k].npz, c);
      ++encoded;
    }
    batch.clear();
  };

  // Images are read and resized ahead on `threads` threads, a window at a time, in order.
  const size_t window = std::max<size_t>(threads * 2, static_cast<size_t>(batch_size));
  sumi_progress* bar = host::progress_begin("latents", static_cast<int64_t>(images.size()));
  try {
    for (size_t from = 0; from < images.size(); from += window) {
      const size_t n = std::min(window, images.size() - from);
      std::vector<ds::Size> sizes(n);
      std::vector<std::string> errors(n);
      std::vector<ds::BucketChoice> choices(n);
      std::vector<ds::TrainingImage> loaded(n);
      std::vector<bool> wanted(n, false);
      // Sizes and buckets first (cheap), so --skip_existing can avoid decoding.
      for (size_t k = 0; k < n; ++k) {
        const std::string& image = images[from + k];
        try {
          sizes[k] = ds::read_image_size(image);
          choices[k] = buckets->select(sizes[k]);
        } catch (const std::exception& e) {
          errors[k] = e.what();
          continue;
        }
        const fs::path npz = ds::latents_npz_path(image);
        if (args.on("skip_existing")) {
          // kohya checks only the latent size (and the flipped latents): a file of another
          // original size or crop is kept too, as kohya keeps it.
          const ds::Size b = choices[k].bucket;
          bool ok = false;
          try {
            const auto m = ds::read_npz(npz);
            const auto* lat = ds::find_member(m, "latents");
            const auto* fl = ds::find_member(m, "latents_flipped");
            ok = lat && ds::find_member(m, "original_size") && ds::find_member(m, "crop_ltrb") && lat->shape.size() == 3 &&
                 lat->shape[1] == b.height / 8 && lat->shape[2] == b.width / 8 &&
                 (!flip || (fl && fl->shape.size() == 3 && fl->shape[1] == lat->shape[1] && fl->shape[2] == lat->shape[2]));
          } catch (const ds::NpzError&) {
            ok = false;
          }
          if (ok) continue;
        }
        wanted[k] = true;
      }
      std::vector<std::thread> pool;
      auto work = [&](size_t first) {
        std::mt19937_64 unused;
        for (size_t k = first; k < n; k += threads) {
          if (!wanted[k]) continue;
          try {
            loaded[k] = ds::load_training_image(images[from + k], choices[k], ds::AugmentOptions{}, unused);
          } catch (const std::exception& e) {
            errors[k] = e.what();
          }
        }
      };
      for (unsigned t = 1; t < threads; ++t) pool.emplace_back(work, t);
      work(0);
      for (auto& t : pool) t.join();

      for (size_t k = 0; k < n; ++k) {
        const std::string& image = images[from + k];
        host::progress_update(bar, 1, nullptr);
        if (!errors[k].empty()) {
          std::cout << "Could not load image path: " << image << ", error: " << errors[k] << "\n";
          continue;
        }
        const std::string key = full_path ? image : path_stem(image);
        auto& entry = metadata[key];
        if (entry.is_null()) entry = MetadataJson::object();
        if (!entry.is_object()) throw host::UserError(in_json + ": the entry of \"" + key + "\" is not an object");
        const ds::Size b = choices[k].bucket;
        ar_errors.push_back(std::abs(choices[k].ar_error));
        ++bucket_counts[b];
        entry["train_resolution"] = {b.width - b.width % 8, b.height - b.height % 8};
        if (!wanted[k]) {
          ++skipped;
          continue;
        }
        auto& list = pending[b];
        list.push_back({image, ds::latents_npz_path(image), std::move(loaded[k])});
        if (static_cast<int64_t>(list.size()) >= batch_size) flush(list);
      }
    }
    for (auto& [b, list] : pending) flush(list);
  } catch (...) {
    host::progress_end(bar);
    throw;
  }
  host::progress_end(bar);

  // kohya's summary: bucket index in its sorted bucket list, then the mean aspect-ratio error.
  std::vector<ds::Size> resos = buckets->predefined();
  if (resos.empty())
    for (const auto& [b, c] : bucket_counts) resos.push_back(b);
  for (size_t i = 0; i < resos.size(); ++i) {
    auto it = bucket_counts.find(resos[i]);
    if (it != bucket_counts.end() && it->second > 0) std::cout << "bucket " << i << " " << py_tuple(resos[i]) << ": " << it->second << "\n";
  }
  double mean = 0;
  for (double e : ar_errors) mean += e;
  std::cout << "mean ar error: " << (ar_errors.empty() ? std::string("nan") : py_float(mean / static_cast<double>(ar_errors.size())))
            << "\n";
  std::cout << "latents: " << encoded << " encoded, " << skipped << " kept (--skip_existing)\n";
  std::cout << "writing metadata: " << out_json << "\n";
  write_metadata_json(out_json, metadata);
  std::cout << "done!\n";
  return 0;
}

}  // namespace sumi::app::tools
