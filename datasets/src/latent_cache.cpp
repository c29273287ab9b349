#include "sumi/datasets/latent_cache.h"

#include <cmath>

#include "sumi/datasets/npz.h"

namespace sumi::datasets {
namespace fs = std::filesystem;

namespace {
const char* const kLoaderKeys[] = {"cache_latents", "cache_latents_to_disk", "vae_batch_size", "max_data_loader_n_workers",
                                   "persistent_data_loader_workers", "cache_text_encoder_outputs",
                                   "cache_text_encoder_outputs_to_disk"};

std::string size_text(std::int64_t h, std::int64_t w) { return std::to_string(w) + "x" + std::to_string(h); }
}  // namespace

bool is_data_loader_option(std::string_view key) {
  for (const char* k : kLoaderKeys)
    if (key == k) return true;
  return false;
}

DataLoaderOptions data_loader_options(const CliOptions& cli) {
  DataLoaderOptions o;
  auto get_bool = [&](const char* key, bool& out) {
    auto it = cli.find(key);
    if (it == cli.end()) return;
    if (const bool* b = std::get_if<bool>(&it->second)) {
      out = *b;
      return;
    }
    throw ConfigError(std::string("--") + key + ": expected true or false");
  };
  auto get_int = [&](const char* key, int& out, int min) {
    auto it = cli.find(key);
    if (it == cli.end()) return;
    const long long* v = std::get_if<long long>(&it->second);
    if (!v) throw ConfigError(std::string("--") + key + ": expected an integer");
    if (*v < min || *v > (1 << 20))
      throw ConfigError(std::string("--") + key + " is " + std::to_string(*v) + "; expected at least " + std::to_string(min));
    out = static_cast<int>(*v);
  };
  get_bool("cache_latents", o.cache_latents);
  get_bool("cache_latents_to_disk", o.cache_latents_to_disk);
  get_int("vae_batch_size", o.vae_batch_size, 1);
  get_int("max_data_loader_n_workers", o.workers, 0);
  get_bool("persistent_data_loader_workers", o.persistent_workers);
  get_bool("cache_text_encoder_outputs", o.cache_text_encoder_outputs);
  get_bool("cache_text_encoder_outputs_to_disk", o.cache_text_encoder_outputs_to_disk);
  if (o.cache_latents_to_disk) o.cache_latents = true;  // kohya turns cache_latents on with it
  if (o.cache_text_encoder_outputs_to_disk) o.cache_text_encoder_outputs = true;  // and this one too
  return o;
}

void check_latent_caching(const DatasetConfig& config) {
  for (const auto& s : config.subsets) {
    for (auto [on, name] : {std::pair{s.color_aug, "color_aug"}, std::pair{s.random_crop, "random_crop"}})
      if (on)
        throw ConfigError(s.origin + ": " + name + " cannot be used when caching latents (cache_latents / "
                          "cache_latents_to_disk): a cached latent is computed once, so per-step image "
                          "augmentation would not happen; turn off " + name + " or latent caching (kohya refuses this too)");
  }
}

void check_text_encoder_caching(const DatasetConfig& config) {
  for (const auto& s : config.subsets) {
    const CaptionOptions& c = s.caption;
    const char* bad = c.shuffle                       ? "shuffle_caption"
                      : c.dropout_rate > 0            ? "caption_dropout_rate"
                      : c.dropout_every_n_epochs > 0  ? "caption_dropout_every_n_epochs"
                      : c.tag_dropout_rate > 0        ? "caption_tag_dropout_rate"
                      : c.token_warmup_step > 0       ? "token_warmup_step"
                      : c.enable_wildcard             ? "enable_wildcard"
                                                      : nullptr;
    if (bad)
      throw ConfigError(s.origin + ": " + bad + " cannot be used when caching text-encoder outputs "
                        "(cache_text_encoder_outputs): the cached output is computed once per caption, so a caption that "
                        "changes per step would not; turn off " + bad + " or the caching (kohya refuses this too)");
  }
}

fs::path latents_npz_path(const fs::path& image) {
  fs::path p = image;
  p.replace_extension(".npz");
  return p;
}

LatentKey latent_key(const Dataset& dataset, std::size_t item) {
  const ImageItem& it = dataset.items().at(item);
  const SubsetConfig& s = dataset.config().subsets.at(it.subset);
  return {it.bucket.bucket, it.size, sdxl_crop_ltrb(it.bucket.bucket, it.size), s.flip_aug};
}

TrainingImage latent_source_image(const Dataset& dataset, std::size_t item) {
  const ImageItem& it = dataset.items().at(item);
  const SubsetConfig& s = dataset.config().subsets.at(it.subset);
  const auto how = s.resize_interpolation.empty() ? Interpolation::Default : *parse_interpolation(s.resize_interpolation);
  std::mt19937_64 unused;  // centre crop, no augmentation: nothing is drawn
  return load_training_image(it.path, it.bucket, {false, false, false, how}, unused);
}

std::optional<CachedLatents> read_cached_latents(const fs::path& npz, const LatentKey& want, std::string* why) {
  auto no = [&](const std::string& reason) -> std::optional<CachedLatents> {
    if (why) *why = reason;
    return std::nullopt;
  };
  std::error_code ec;
  if (!fs::is_regular_file(npz, ec)) return no("no file");
  NpzMembers m;
  try {
    m = read_npz(npz);
  } catch (const NpzError& e) {
    return no(e.what());
  }
  const NpyArray* lat = find_member(m, "latents");
  const NpyArray* orig = find_member(m, "original_size");
  const NpyArray* crop = find_member(m, "crop_ltrb");
  if (!lat || !orig || !crop) return no("it lacks latents, original_size or crop_ltrb (an old cache)");
  const std::int64_t h = want.bucket.height / 8, w = want.bucket.width / 8;
  if (lat->shape.size() != 3) return no("latents are not [C, H, W]");
  if (lat->shape[1] != h || lat->shape[2] != w)
    return no("its latents are " + size_text(lat->shape[1], lat->shape[2]) + ", the bucket " + to_string(want.bucket) +
              " needs " + size_text(h, w));
  CachedLatents c;
  c.shape = lat->shape;
  try {
    c.latents = lat->to_floats();
    const auto o = orig->to_doubles();
    const auto l = crop->to_doubles();
    if (o.size() != 2 || l.size() != 4) return no("original_size / crop_ltrb have the wrong length");
    for (double x : o)  // checked before the conversion to int, which is undefined out of range
      if (!(x >= 0 && x <= 1 << 20)) return no("original_size is not an image size");
    c.original = {static_cast<int>(o[0]), static_cast<int>(o[1])};
    c.crop_ltrb = {l[0], l[1], l[2], l[3]};
    if (const NpyArray* f = find_member(m, "latents_flipped")) {
      if (f->shape != lat->shape) return no("latents_flipped has another shape than latents");
      c.flipped = f->to_floats();
    }
  } catch (const NpzError& e) {
    return no(e.what());
  }
  if (c.original != want.original)
    return no("it was made from a " + to_string(c.original) + " image, this one is " + to_string(want.original));
  const double d[4] = {c.crop_ltrb.left - want.crop_ltrb.left, c.crop_ltrb.top - want.crop_ltrb.top,
                       c.crop_ltrb.right - want.crop_ltrb.right, c.crop_ltrb.bottom - want.crop_ltrb.bottom};
  for (double x : d)
    if (!(std::abs(x) < 1e-3)) return no("its crop differs from this image's");
  if (want.flip && c.flipped.empty()) return no("flip_aug needs latents_flipped, which it lacks");
  for (const auto* v : {&c.latents, &c.flipped})
    for (float x : *v)
      if (!std::isfinite(x)) return no("its latents contain NaN or infinity");
  return c;
}

void write_cached_latents(const fs::path& npz, const CachedLatents& c) {
  NpzMembers m;
  m.emplace_back("latents", NpyArray::of_floats(c.shape, c.latents));
  m.emplace_back("original_size", NpyArray::of_int64({2}, {c.original.width, c.original.height}));
  m.emplace_back("crop_ltrb",
                 NpyArray::of_doubles({4}, {c.crop_ltrb.left, c.crop_ltrb.top, c.crop_ltrb.right, c.crop_ltrb.bottom}));
  if (!c.flipped.empty()) m.emplace_back("latents_flipped", NpyArray::of_floats(c.shape, c.flipped));
  write_npz(npz, m);
}

LatentStore::LatentStore(std::vector<std::size_t> items_per_dataset) {
  for (std::size_t n : items_per_dataset) entries_.emplace_back(n);
}

std::shared_ptr<const CachedLatents> LatentStore::get(std::size_t dataset, std::size_t item) const {
  const Entry& e = at(dataset, item);
  if (e.memory) return e.memory;
  if (e.file.empty()) throw DatasetError("no cached latents for item " + std::to_string(item) + " of dataset " + std::to_string(dataset));
  std::string why;
  auto c = read_cached_latents(e.file, e.key, &why);
  if (!c) throw DatasetError("latent cache " + e.file.string() + " became unusable during training (" + why + "); rerun to rebuild it");
  return std::make_shared<const CachedLatents>(std::move(*c));
}

}  // namespace sumi::datasets
