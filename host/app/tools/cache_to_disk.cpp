// `sumi cache_latents` and `sumi cache_text_encoder_outputs`: kohya's tools/cache_latents.py and
// tools/cache_text_encoder_outputs.py. They take a training command line (train_network.py's
// flags, --dataset_config, --config_file, a recipe), build the datasets as `sumi train` does
// and write the disk caches `sumi train --cache_latents_to_disk` /
// `--cache_text_encoder_outputs_to_disk` then reuse: `<image stem>.npz` and
// `<image stem>_te_outputs.npz` beside each image. The model is the recipe's [model], loaded
// through its plugin like the trainer's.
#include "app/tools/tools.h"

#include "app/app.h"
#include "app/model_description.h"
#include "app/model_file.h"
#include "app/train/latent_cache.h"
#include "app/train/dataset_options.h"
#include "core/error.h"
#include "core/progress.h"
#include "core/runtime.h"
#include "core/typed_plugins.h"

#include "batch_tensor.h"

#include <sumi/datasets/config.h>
#include <sumi/datasets/dataset.h>
#include <sumi/datasets/latent_cache.h>
#include <sumi/datasets/npz.h>
#include <sumi/recipe/load.h>
#include <sumi/recipe/value.h>

#include <ATen/ATen.h>

#include <algorithm>
#include <iostream>
#include <map>
#include <thread>

namespace ds = sumi::datasets;

namespace sumi::app::tools {

namespace {

// What both scripts set up: the flags kohya's two scripts add to the training ones, the
// datasets and the model.
struct CacheRun {
  bool sdxl = false, no_half_vae = false, skip_existing = false;
  CommonOptions common;
  recipe::Value root;
  ds::CliOptions cli;
  std::vector<ds::Dataset> data;
  std::string mixed_precision;
  int64_t vae_factor = 8;  // the model's (describe's vae_scale_factor)
  host::PluginManager pm;
  host::Registry registry;
  std::unique_ptr<host::Component> model;
};

// Returns false for --help (usage printed).
bool setup(const std::string& prog, const std::string& usage, const std::vector<std::string>& argv, CacheRun& r,
           const char* required_flag) {
  std::vector<std::string> rest;
  for (const auto& a : argv) {
    if (a == "--sdxl") r.sdxl = true;
    else if (a == "--no_half_vae") r.no_half_vae = true;
    else if (a == "--skip_existing") r.skip_existing = true;
    else rest.push_back(a);
  }
  std::string help;
  if (!parse_common(rest, r.common, help)) {
    std::cout << usage << help;
    return false;
  }
  host::init_runtime(r.common.threads);
  r.registry.set_device(run_device(r.common.device));
  r.pm = make_plugin_manager(r.common);
  r.root = load_recipe_tree(r.common);
  if (r.no_half_vae) recipe::set_override(r.root, "model.no_half_vae", "true", "--no_half_vae");
  const recipe::Value* model = r.root.find("model");
  if (!model || !model->find("path"))
    throw host::UserError("sumi " + prog + ": no model: give --pretrained_model_name_or_path (the checkpoint to encode with)");
  const std::string path = model->find("path")->as_string();
  if (!model->find("type")) {
    // The model plugins are asked which loads the file; --v2 / --sdxl must name that one.
    const recipe::Value* v2 = model->find("v2");
    std::vector<std::string> flags;
    if (v2 && v2->as_bool()) flags.push_back(kKohyaV2);
    if (r.sdxl) flags.push_back(kKohyaSdxl);
    const std::string component = find_model_component(r.pm, path, flags);
    recipe::set_override(r.root, "model.type", "\"" + component + "\"", "detected from the model file");
  }
  std::string dataset_config;
  r.cli = dataset_options(r.root, dataset_config);
  const auto it = r.cli.find(required_flag);
  if (it == r.cli.end() || !std::holds_alternative<bool>(it->second) || !std::get<bool>(it->second))
    throw host::UserError("sumi " + prog + ": --" + required_flag + " is required (kohya's script asserts it): the cache is "
                          "written to disk beside each image");
  const recipe::Value* train = r.root.find("train");
  const recipe::Value* mp = train ? train->find("mixed_precision") : nullptr;
  r.mixed_precision = mp ? mp->as_string() : "no";
  const ds::DatasetGroupConfig group =
      dataset_config.empty() ? ds::config_from_arguments(r.cli) : ds::load_dataset_config(dataset_config, r.cli);
  for (const auto& dc : group.datasets) {
    ds::BuildReport report;
    r.data.push_back(ds::Dataset::build(dc, {}, &report));
    for (const auto& w : report.warnings) host::log(SUMI_LOG_WARN, "datasets", w);
  }
  const auto schemas = plugin_schemas(r.root, r.pm);
  const auto m = resolve(r.root, "model", schemas);
  r.model = instantiate(SUMI_KIND_MODEL, m, r.pm, r.registry);
  // A model.type the recipe names: --sdxl must name it too (the model says which flags do).
  if (r.sdxl) {
    const auto flags = describe(*r.model).kohya_flags;
    if (std::find(flags.begin(), flags.end(), kKohyaSdxl) == flags.end())
      throw host::UserError("sumi " + prog + ": --sdxl, but the model is " + m.get_string("type") + " (" + path +
                            "), which kohya's --sdxl does not name; drop --sdxl or use a checkpoint of a model it names");
  }
  host::ModelPlugin(*r.model).load(path);
  r.vae_factor = describe(*r.model).vae_scale_factor;
  return true;
}

std::vector<float> floats(const at::Tensor& t) {
  const at::Tensor c = t.contiguous();
  return std::vector<float>(c.data_ptr<float>(), c.data_ptr<float>() + c.numel());
}

// kohya's is_disk_cached_latents_is_expected: the keys are there and the latents (and flipped
// latents when needed) have the bucket's size.
bool latents_size_ok(const std::filesystem::path& npz, ds::Size bucket, bool flip, int64_t vae_factor) {
  std::error_code ec;
  if (!std::filesystem::is_regular_file(npz, ec)) return false;
  try {
    const auto m = ds::read_npz(npz);
    const auto *lat = ds::find_member(m, "latents"), *fl = ds::find_member(m, "latents_flipped");
    auto sized = [&](const ds::NpyArray* a) {
      return a && a->shape.size() == 3 && a->shape[1] == bucket.height / vae_factor && a->shape[2] == bucket.width / vae_factor;
    };
    return sized(lat) && ds::find_member(m, "original_size") && ds::find_member(m, "crop_ltrb") && (!flip || sized(fl));
  } catch (const ds::NpzError&) {
    return false;
  }
}

}  // namespace

int cmd_cache_latents(const std::vector<std::string>& argv) {
  CacheRun r;
  if (!setup("cache_latents",
             "usage: sumi cache_latents --pretrained_model_name_or_path M (--dataset_config F | --train_data_dir D [--in_json J]) "
             "--cache_latents_to_disk [training flags] [--sdxl] [--no_half_vae] [--skip_existing]\n"
             "Writes every training image's VAE latents to <image stem>.npz (kohya tools/cache_latents.py).\n\n",
             argv, r, "cache_latents_to_disk"))
    return 0;
  const ds::DataLoaderOptions o = ds::data_loader_options(r.cli);
  for (const auto& d : r.data) ds::check_latent_caching(d.config());
  // kohya: the VAE runs in the training precision unless --no_half_vae; sumi's CPU VAE has bf16
  // kernels, not fp16 ones, and so encodes fp16 runs in float32 as `sumi train` does.
  const bool bf16 = r.mixed_precision == "bf16" && !r.no_half_vae;
  const double scale = model_latent_scale(*r.model);
  const LatentEncoder encode = model_latent_encoder(*r.model, scale, bf16);
  const unsigned threads = std::max(1u, std::min<unsigned>(static_cast<unsigned>(std::max(1, o.workers)), std::thread::hardware_concurrency()));

  size_t total = 0, skipped = 0, encoded = 0;
  for (const auto& d : r.data) total += d.items().size();
  sumi_progress* bar = host::progress_begin("latents", static_cast<int64_t>(total));
  try {
    for (const ds::Dataset& d : r.data) {
      std::map<std::pair<ds::Size, bool>, std::vector<size_t>> todo;  // kohya's order: by bucket
      for (size_t i = 0; i < d.items().size(); ++i) {
        const ds::LatentKey key = ds::latent_key(d, i);
        const auto npz = ds::latents_npz_path(d.items()[i].path);
        if (r.skip_existing && latents_size_ok(npz, key.bucket, key.flip, r.vae_factor)) {
          std::cout << "Skipping " << npz.string() << " because it already exists.\n";
          ++skipped;
          host::progress_update(bar, 1, nullptr);
          continue;
        }
        todo[{key.bucket, key.flip}].push_back(i);
      }
      for (const auto& [bucket_flip, items] : todo) {
        const bool flip = bucket_flip.second;
        const size_t step = static_cast<size_t>(o.vae_batch_size);
        for (size_t from = 0; from < items.size(); from += step) {
          const std::vector<size_t> chunk(items.begin() + static_cast<std::ptrdiff_t>(from),
                                          items.begin() + static_cast<std::ptrdiff_t>(std::min(items.size(), from + step)));
          std::vector<ds::TrainingImage> imgs(chunk.size());
          std::vector<std::exception_ptr> errors(chunk.size());
          auto work = [&](size_t first) {
            for (size_t k = first; k < chunk.size(); k += threads) try {
                imgs[k] = ds::latent_source_image(d, chunk[k]);
              } catch (...) {
                errors[k] = std::current_exception();
              }
          };
          std::vector<std::thread> pool;
          for (unsigned t = 1; t < std::min<size_t>(threads, chunk.size()); ++t) pool.emplace_back(work, t);
          work(0);
          for (auto& t : pool) t.join();
          for (auto& e : errors)
            if (e) std::rethrow_exception(e);
          std::vector<const ds::Image*> ptrs;
          for (const auto& t : imgs) ptrs.push_back(&t.image);
          const at::Tensor x = ds::images_to_tensor(ptrs);
          const at::Tensor z = encode(x);
          const at::Tensor zf = flip ? encode(x.flip({3})) : at::Tensor();
          for (size_t k = 0; k < chunk.size(); ++k) {
            const auto i = static_cast<int64_t>(k);
            const auto& path = d.items()[chunk[k]].path;
            if (!at::isfinite(z[i]).all().item<bool>() || (flip && !at::isfinite(zf[i]).all().item<bool>()))
              throw host::UserError("NaN detected in latents: " + path.string() + " (the VAE overflowed): try --no_half_vae");
            ds::CachedLatents c;
            c.shape = z[i].sizes().vec();
            c.latents = floats(z[i]);
            if (flip) c.flipped = floats(zf[i]);
            c.original = imgs[k].original;
            c.crop_ltrb = imgs[k].crop_ltrb;
            ds::write_cached_latents(ds::latents_npz_path(path), c);
            ++encoded;
            host::progress_update(bar, 1, nullptr);
          }
        }
      }
    }
  } catch (...) {
    host::progress_end(bar);
    throw;
  }
  host::progress_end(bar);
  std::cout << "Finished caching latents: " << encoded << " encoded, " << skipped << " skipped (--skip_existing).\n";
  return 0;
}

int cmd_cache_text_encoder_outputs(const std::vector<std::string>& argv) {
  CacheRun r;
  if (!setup("cache_text_encoder_outputs",
             "usage: sumi cache_text_encoder_outputs --pretrained_model_name_or_path SDXL (--dataset_config F | --train_data_dir D "
             "[--in_json J]) --cache_text_encoder_outputs_to_disk --sdxl [training flags] [--skip_existing]\n"
             "Writes every training caption's SDXL text-encoder outputs to <image stem>_te_outputs.npz "
             "(kohya tools/cache_text_encoder_outputs.py).\n\n",
             argv, r, "cache_text_encoder_outputs_to_disk"))
    return 0;
  if (!r.sdxl)
    throw host::UserError("sumi cache_text_encoder_outputs: --sdxl is required: kohya caches text-encoder outputs for SDXL only "
                          "(and its script asserts --sdxl)");
  // The trainer's cache: a file made from the same caption is kept (its outputs would be the
  // same), any other is written; `skip_existing` changes nothing more.
  const auto cache = TextEncoderCache::create(r.data, r.cli, describe(*r.model).text_encoder_output_cache, false, *r.model,
                                             r.mixed_precision == "bf16", "network");
  std::cout << cache->summary() << "\n";
  return 0;
}

}  // namespace sumi::app::tools
