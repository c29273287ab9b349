#include "latent_cache.h"
#include "precision.h"

#include "core/component.h"
#include "app/generation.h"
#include "core/error.h"
#include "core/op_bridge.h"
#include "core/progress.h"
#include "core/tensor_handle.h"
#include "core/typed_plugins.h"

#include "batch_tensor.h"

#include <sumi/datasets/npz.h>


#include <nlohmann/json.hpp>

#include <algorithm>
#include <map>
#include <thread>

namespace sumi::app {

namespace ds = sumi::datasets;

double model_latent_scale(host::Component& model) {
  const auto d = nlohmann::json::parse(describe_model(model), nullptr, false);
  if (!d.is_object() || !d.contains("scaling_factor") || !d["scaling_factor"].is_number())
    throw host::UserError(std::string("model '") + model.info().name +
                          "' does not describe its VAE scaling factor (describe, ABI 1.2); rebuild the plugin against this SDK");
  return d["scaling_factor"].get<double>();
}

LatentEncoder model_latent_encoder(host::Component& model, double scale, bool bf16) {
  return [&model, scale, bf16](const at::Tensor& images) {
    at::NoGradGuard ng;
    // Encoded where the model computes; the cache keeps its latents on the CPU.
    Autocast ac(bf16 ? at::kBFloat16 : at::ScalarType::Undefined, model.device().type());
    return host::ModelPlugin(model).vae_encode(images.to(model.device()), true).to(at::kCPU, at::kFloat).detach() / scale;
  };
}

namespace {

std::vector<float> to_vector(const at::Tensor& t) {
  const at::Tensor c = t.contiguous();
  return std::vector<float>(c.data_ptr<float>(), c.data_ptr<float>() + c.numel());
}

// The cache images of a chunk, read and resized on up to `threads` threads.
std::vector<ds::TrainingImage> load_chunk(const ds::Dataset& d, const std::vector<std::size_t>& items, unsigned threads) {
  std::vector<ds::TrainingImage> out(items.size());
  std::vector<std::exception_ptr> errors(items.size());
  auto work = [&](std::size_t from) {
    for (std::size_t i = from; i < items.size(); i += threads) try {
        out[i] = ds::latent_source_image(d, items[i]);
      } catch (...) {
        errors[i] = std::current_exception();
      }
  };
  threads = std::max(1u, std::min<unsigned>(threads, static_cast<unsigned>(items.size())));
  std::vector<std::thread> pool;
  for (unsigned k = 1; k < threads; ++k) pool.emplace_back(work, k);
  work(0);
  for (auto& t : pool) t.join();
  for (auto& e : errors)
    if (e) std::rethrow_exception(e);
  return out;
}

}  // namespace

std::string cache_latents(const std::vector<ds::Dataset>& data, const ds::DataLoaderOptions& o, const LatentEncoder& encode,
                          ds::LatentStore& store) {
  std::size_t reused = 0, encoded = 0, rebuilt = 0;
  const unsigned threads = std::max(1u, std::min<unsigned>(static_cast<unsigned>(o.workers), std::thread::hardware_concurrency()));
  for (std::size_t di = 0; di < data.size(); ++di) {
    const ds::Dataset& d = data[di];
    ds::check_latent_caching(d.config());
    // kohya's order: by bucket, then by flip setting, items in order; vae_batch_size at a time.
    std::map<std::pair<ds::Size, bool>, std::vector<std::size_t>> todo;
    for (std::size_t i = 0; i < d.items().size(); ++i) {
      const ds::LatentKey key = ds::latent_key(d, i);
      auto& e = store.at(di, i);
      e.key = key;
      if (o.cache_latents_to_disk) {
        e.file = ds::latents_npz_path(d.items()[i].path);
        std::string why;
        if (ds::read_cached_latents(e.file, key, &why)) {
          ++reused;
          continue;
        }
        if (why != "no file") {
          ++rebuilt;
          host::log(SUMI_LOG_WARN, "datasets", e.file.string() + ": rebuilding the latent cache: " + why);
        }
      }
      todo[{key.bucket, key.flip}].push_back(i);
    }
    for (const auto& [bucket_flip, items] : todo) {
      const bool flip = bucket_flip.second;
      for (std::size_t from = 0; from < items.size(); from += static_cast<std::size_t>(o.vae_batch_size)) {
        const std::vector<std::size_t> chunk(items.begin() + static_cast<std::ptrdiff_t>(from),
                                             items.begin() + static_cast<std::ptrdiff_t>(std::min(items.size(), from + static_cast<std::size_t>(o.vae_batch_size))));
        const auto imgs = load_chunk(d, chunk, threads);
        std::vector<const ds::Image*> ptrs;
        for (const auto& t : imgs) ptrs.push_back(&t.image);
        const at::Tensor pixels = ds::images_to_tensor(ptrs);
        const at::Tensor z = encode(pixels);
        const at::Tensor zf = flip ? encode(pixels.flip({3})) : at::Tensor();
        for (std::size_t k = 0; k < chunk.size(); ++k) {
          const auto idx = static_cast<int64_t>(k);
          const auto& item = d.items()[chunk[k]];
          if (!at::isfinite(z[idx]).all().item<bool>() || (flip && !at::isfinite(zf[idx]).all().item<bool>()))
            throw host::UserError("NaN or infinity in the latents of " + item.path.string() +
                                  " (the VAE overflowed; kohya stops here too): try mixed_precision \"no\" or another VAE");
          auto c = std::make_shared<ds::CachedLatents>();
          c->shape = z[idx].sizes().vec();
          c->latents = to_vector(z[idx]);
          if (flip) c->flipped = to_vector(zf[idx]);
          c->original = imgs[k].original;
          c->crop_ltrb = imgs[k].crop_ltrb;
          auto& e = store.at(di, chunk[k]);
          if (o.cache_latents_to_disk) {
            ds::write_cached_latents(e.file, *c);  // kohya does not keep the disk cache in memory
          } else {
            e.memory = std::move(c);
          }
          ++encoded;
        }
      }
    }
  }
  std::string line = "cached the latents of " + std::to_string(encoded + reused) + " image(s): " + std::to_string(encoded) +
                     " encoded";
  if (o.cache_latents_to_disk)
    line += " (" + std::to_string(rebuilt) + " stale or damaged .npz rebuilt), " + std::to_string(reused) + " reused from .npz files";
  return line;
}

BatchSource::BatchSource(const std::vector<ds::Dataset>& data, const ds::CliOptions& args, std::uint64_t seed,
                         double latent_scale, LatentEncoder encode)
    : options_(ds::data_loader_options(args)), scale_(latent_scale), encode_(std::move(encode)) {
  if (options_.cache_latents) {
    for (const auto& d : data) ds::check_latent_caching(d.config());
    std::vector<std::size_t> sizes;
    for (const auto& d : data) sizes.push_back(d.items().size());
    store_ = std::make_unique<ds::LatentStore>(sizes);
    host::log(SUMI_LOG_INFO, "datasets", cache_latents(data, options_, encode_, *store_));
  }
  loader_ = std::make_unique<ds::BatchLoader>(data, seed, static_cast<unsigned>(options_.workers),
                                              options_.persistent_workers, store_.get());
}

void BatchSource::start_epoch(int epoch, std::vector<ds::GroupBatch> plan, std::size_t first) {
  loader_->start_epoch(epoch, std::move(plan), first);
}

BatchSource::Batch BatchSource::next() {
  ds::LoadedBatch lb = loader_->next();
  Batch b;
  if (!lb.latents.empty()) {
    std::vector<int64_t> shape{static_cast<int64_t>(lb.latents.size())};
    shape.insert(shape.end(), lb.latent_shape.begin(), lb.latent_shape.end());
    b.latents = at::empty(shape, at::kFloat);
    for (std::size_t i = 0; i < lb.latents.size(); ++i) {
      const auto& v = *lb.latents[i];
      std::copy(v.begin(), v.end(), b.latents[static_cast<int64_t>(i)].data_ptr<float>());
    }
  } else {
    std::vector<const ds::Image*> ptrs;
    for (const auto& t : lb.images) ptrs.push_back(&t.image);
    b.latents = encode_(ds::images_to_tensor(ptrs));
  }
  b.latents = b.latents * scale_;  // kohya: latents * vae_scale_factor, cached or not
  b.images = std::move(lb.images);
  return b;
}

}  // namespace sumi::app

namespace sumi::app {

namespace {

ds::NpyArray tensor_npy(const at::Tensor& t) {
  const at::Tensor c = t.to(at::kFloat).contiguous();
  return ds::NpyArray::of_floats(c.sizes().vec(), std::vector<float>(c.data_ptr<float>(), c.data_ptr<float>() + c.numel()));
}

at::Tensor npy_tensor(const ds::NpyArray& a) {
  const std::vector<float> v = a.to_floats();
  return at::from_blob(const_cast<float*>(v.data()), a.shape, at::kFloat).clone();
}

}  // namespace

std::filesystem::path TextEncoderCache::npz_path(const std::filesystem::path& image) {
  std::filesystem::path p = image;
  p.replace_extension();
  return p.string() + "_te_outputs.npz";
}

std::pair<at::Tensor, at::Tensor> TextEncoderCache::read(const std::filesystem::path& file, const std::string& caption,
                                                         std::string* why) const {
  auto no = [&](const std::string& r) {
    if (why) *why = r;
    return std::pair<at::Tensor, at::Tensor>{};
  };
  std::error_code ec;
  if (!std::filesystem::is_regular_file(file, ec)) return no("no file");
  ds::NpzMembers m;
  try {
    m = ds::read_npz(file);
  } catch (const ds::NpzError& e) {
    return no(e.what());
  }
  const auto *h1 = ds::find_member(m, "hidden_state1"), *h2 = ds::find_member(m, "hidden_state2"),
             *p2 = ds::find_member(m, "pool2"), *cap = ds::find_member(m, "caption");
  if (!h1 || !h2 || !p2) return no("it lacks hidden_state1, hidden_state2 or pool2");
  if (!cap) return no("it does not record its caption (written by another program)");
  if (cap->dtype != "|u1" || std::string(cap->data.begin(), cap->data.end()) != caption) return no("its caption differs");
  if (h1->shape.size() != 2 || h2->shape.size() != 2 || h1->shape[0] != h2->shape[0] || p2->shape.size() != 1 ||
      p2->shape[0] != h2->shape[1])
    return no("its arrays have inconsistent shapes");
  try {
    return {at::cat({npy_tensor(*h1), npy_tensor(*h2)}, -1), npy_tensor(*p2)};
  } catch (const ds::NpzError& e) {
    return no(e.what());
  }
}

std::unique_ptr<TextEncoderCache> TextEncoderCache::create(const std::vector<ds::Dataset>& data, const ds::CliOptions& args,
                                                           bool supported, bool trains_text_encoder,
                                                           host::Component& model, bool bf16, const std::string& mode) {
  const ds::DataLoaderOptions o = ds::data_loader_options(args);
  if (!o.cache_text_encoder_outputs) return nullptr;
  if (!supported)
    throw host::UserError(std::string("cache_text_encoder_outputs: kohya caches text-encoder outputs for its two-encoder model only; model '") +
                          model.info().name + "' does not offer the cache (remove the option)");
  // The cached outputs would go stale with every step that changes the text encoders; kohya's
  // scripts refuse the combination too.
  if (trains_text_encoder) {
    if (mode == "textual_inversion")
      throw host::UserError("cache_text_encoder_outputs: Textual Inversion trains the new token's vectors inside the text "
                            "encoders, so their outputs change every step (kohya's Textual Inversion scripts have no such cache); "
                            "remove the option");
    if (mode == "dreambooth")
      throw host::UserError("cache_text_encoder_outputs: train_text_encoder trains the text encoders, whose outputs then change "
                            "every step (kohya refuses this too); drop one of the two");
    throw host::UserError("cache_text_encoder_outputs: the network trains text-encoder modules, whose outputs then change "
                          "every step; add network_train_unet_only (kohya refuses this too)");
  }
  for (const auto& d : data) ds::check_text_encoder_caching(d.config());
  auto c = std::unique_ptr<TextEncoderCache>(new TextEncoderCache());
  c->to_disk_ = o.cache_text_encoder_outputs_to_disk;
  c->device_ = model.device();
  auto encode = [&](const std::string& caption) {
    at::NoGradGuard ng;
    Autocast ac(bf16 ? at::kBFloat16 : at::ScalarType::Undefined, model.device().type());
    const auto [cond, pooled] = host::ModelPlugin(model).encode_text({caption});
    // Kept on the CPU; a batch's rows go to the model's device at lookup.
    return std::pair<at::Tensor, at::Tensor>{cond[0].to(at::kCPU, at::kFloat).detach().clone(),
                                             pooled[0].to(at::kCPU, at::kFloat).detach().clone()};
  };
  std::size_t encoded = 0, reused = 0;
  std::mt19937_64 unused;  // static captions draw nothing
  for (std::size_t di = 0; di < data.size(); ++di) {
    const ds::Dataset& d = data[di];
    c->files_.emplace_back(d.items().size());
    for (std::size_t i = 0; i < d.items().size(); ++i) {
      const std::string caption = d.caption(i, {1, 0, 0}, unused);
      if (!c->to_disk_) {
        if (!c->by_caption_.count(caption)) {
          auto [cond, pooled] = encode(caption);
          c->by_caption_[caption] = {cond, pooled};
          ++encoded;
        }
        continue;
      }
      const auto file = npz_path(d.items()[i].path);
      c->files_[di][i] = file;
      std::string why;
      if (c->read(file, caption, &why).first.defined()) {
        ++reused;
        continue;
      }
      if (why != "no file") host::log(SUMI_LOG_WARN, "datasets", file.string() + ": rebuilding the text-encoder cache: " + why);
      auto [cond, pooled] = encode(caption);
      const int64_t p = pooled.size(0), w = cond.size(-1);
      if (p <= 0 || p >= w)
        throw host::UserError("cache_text_encoder_outputs: model '" + std::string(model.info().name) + "' gives pooled width " +
                              std::to_string(p) + " and conditioning width " + std::to_string(w) +
                              "; kohya's file layout needs the second encoder's hidden state (as wide as the pooled output) "
                              "last in the conditioning");
      ds::NpzMembers m;
      m.emplace_back("hidden_state1", tensor_npy(cond.narrow(-1, 0, w - p)));
      m.emplace_back("hidden_state2", tensor_npy(cond.narrow(-1, w - p, p)));
      m.emplace_back("pool2", tensor_npy(pooled));
      ds::NpyArray cap;
      cap.dtype = "|u1";
      cap.shape = {static_cast<int64_t>(caption.size())};
      cap.data.assign(caption.begin(), caption.end());
      m.emplace_back("caption", cap);
      ds::write_npz(file, m);
      ++encoded;
    }
  }
  c->summary_ = "cached the text-encoder outputs: " + std::to_string(encoded) + " encoded" +
                (c->to_disk_ ? ", " + std::to_string(reused) + " reused from _te_outputs.npz files" : "");
  host::log(SUMI_LOG_INFO, "datasets", c->summary_);
  return c;
}

std::pair<at::Tensor, at::Tensor> TextEncoderCache::lookup(std::size_t dataset, const std::vector<std::size_t>& items,
                                                           const std::vector<std::string>& captions) const {
  std::vector<at::Tensor> cs, ps;
  for (std::size_t k = 0; k < captions.size(); ++k) {
    if (to_disk_) {
      const auto& file = files_.at(dataset).at(items.at(k));
      std::string why;
      auto [c, p] = read(file, captions[k], &why);
      if (!c.defined())
        throw host::UserError("text-encoder cache " + file.string() + " became unusable during training (" + why + ")");
      cs.push_back(c);
      ps.push_back(p);
    } else {
      auto it = by_caption_.find(captions[k]);
      if (it == by_caption_.end())
        throw host::UserError("text-encoder cache: no cached output for the caption \"" + captions[k] + "\"");
      cs.push_back(it->second.cond);
      ps.push_back(it->second.pooled);
    }
  }
  return {at::stack(cs).to(device_), at::stack(ps).to(device_)};
}

}  // namespace sumi::app
