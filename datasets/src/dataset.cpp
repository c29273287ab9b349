#include "sumi/datasets/dataset.h"

#include <algorithm>
#include <atomic>
#include <thread>
#include <fstream>
#include <map>
#include <sstream>

#include <nlohmann/json.hpp>

#include "sumi/datasets/random.h"

namespace sumi::datasets {
namespace fs = std::filesystem;

std::vector<int> match_reg_repeats(const std::vector<int>& reg_repeats, long long num_train_images) {
  std::vector<int> out(reg_repeats.size(), 0);
  if (reg_repeats.empty()) return out;
  long long n = 0;
  bool first_loop = true;
  while (n < num_train_images) {
    for (std::size_t i = 0; i < out.size(); ++i) {
      if (first_loop) {
        out[i] = reg_repeats[i];
        n += reg_repeats[i];
      } else {
        out[i] += 1;
        n += 1;
      }
      if (n >= num_train_images) break;
    }
    first_loop = false;
  }
  return out;
}

namespace {

constexpr std::uint64_t kBucketStream = 0x6275636b;  // "buck"
constexpr std::uint64_t kGroupStream = 0x67727570;   // "grup"

std::vector<fs::path> list_images(const fs::path& dir) {
  std::vector<fs::path> out;
  for (const auto& e : fs::directory_iterator(dir))
    if (e.is_regular_file() && is_image_file(e.path())) out.push_back(e.path());
  std::sort(out.begin(), out.end());
  return out;
}

struct Collector {
  const BuildOptions& options;
  BuildReport& report;
  std::vector<Problem> problems;
  void problem(const fs::path& p, const std::string& msg) {
    problems.push_back({p, msg.find(p.string()) == std::string::npos ? p.string() + ": " + msg : msg});
  }
};

// Reads the size (decoding the whole image when asked) of an item and its conditioning
// image; returns what is wrong, empty when nothing.
std::vector<Problem> check_item(ImageItem& item, bool decode) {
  std::vector<Problem> out;
  auto size_of = [&](const fs::path& p, Size& size) {
    try {
      if (decode) {
        const Image img = read_image(p);
        size = {img.width, img.height};
      } else {
        size = read_image_size(p);
      }
      return true;
    } catch (const std::exception& e) {
      out.push_back({p, e.what()});
      return false;
    }
  };
  const bool ok = size_of(item.path, item.size);
  if (!item.conditioning_path.empty()) {
    Size cs;
    if (size_of(item.conditioning_path, cs) && ok && cs != item.size)
      out.push_back({item.conditioning_path, item.conditioning_path.string() + ": conditioning image is " + to_string(cs) +
                                                 " but " + item.path.string() + " is " + to_string(item.size) +
                                                 "; they must be the same size"});
  }
  return out;
}

// Checks every item on `threads` threads (0: one per core); failed items are removed and
// their problems appended in item order.
void check_items(std::vector<ImageItem>& items, const BuildOptions& options, Collector& c) {
  std::vector<std::vector<Problem>> found(items.size());
  std::atomic<std::size_t> next{0};
  auto work = [&] {
    for (std::size_t i; (i = next.fetch_add(1)) < items.size();) found[i] = check_item(items[i], options.decode_images);
  };
  unsigned n = options.threads ? options.threads : std::max(1u, std::thread::hardware_concurrency());
  n = static_cast<unsigned>(std::min<std::size_t>(n, std::max<std::size_t>(1, items.size())));
  std::vector<std::thread> pool;
  for (unsigned k = 1; k < n; ++k) pool.emplace_back(work);
  work();
  for (auto& t : pool) t.join();
  std::vector<ImageItem> kept;
  for (std::size_t i = 0; i < items.size(); ++i) {
    if (found[i].empty()) kept.push_back(std::move(items[i]));
    for (auto& p : found[i]) c.problem(p.path, p.message);
  }
  items = std::move(kept);
}

void add_folder_subset(const SubsetConfig& s, std::size_t si, std::vector<ImageItem>& out, Collector& c) {
  std::error_code ec;
  if (!fs::is_directory(s.image_dir, ec))
    throw ConfigError(s.origin + ": image_dir " + s.image_dir.string() + " is not a directory");
  const auto images = list_images(s.image_dir);
  if (images.empty()) {
    c.report.warnings.push_back(s.origin + ": no images in " + s.image_dir.string() + "; subset ignored");
    return;
  }
  std::vector<fs::path> cond_images;
  if (s.kind == SubsetKind::ControlNet) {
    if (!fs::is_directory(s.conditioning_data_dir, ec))
      throw ConfigError(s.origin + ": conditioning_data_dir " + s.conditioning_data_dir.string() + " is not a directory");
    cond_images = list_images(s.conditioning_data_dir);
  }
  std::size_t missing_captions = 0;
  std::map<std::string, fs::path> cond_by_stem;
  for (const auto& p : cond_images) cond_by_stem[p.stem().string()] = p;
  for (const auto& p : images) {
    ImageItem item;
    item.path = p;
    item.subset = si;
    item.is_reg = s.is_reg;
    item.num_repeats = s.num_repeats;
    bool ok = true;
    try {
      auto cap = read_caption_file(p, s.caption_extension, s.caption.enable_wildcard);
      if (cap) {
        item.caption = *cap;
      } else {
        ++missing_captions;
        item.caption = s.class_tokens.value_or("");
      }
    } catch (const std::exception& e) {
      c.problem(p, e.what());
      ok = false;
    }
    if (s.kind == SubsetKind::ControlNet) {
      auto it = cond_by_stem.find(p.stem().string());
      if (it == cond_by_stem.end()) {
        c.problem(p, "no conditioning image with the same name in " + s.conditioning_data_dir.string());
        ok = false;
      } else {
        item.conditioning_path = it->second;
        cond_by_stem.erase(it);
      }
    }
    if (ok) out.push_back(std::move(item));  // images are checked later, all at once
  }
  for (const auto& [stem, p] : cond_by_stem)
    c.report.warnings.push_back(p.string() + ": conditioning image without a training image; unused");
  if (missing_captions)
    c.report.warnings.push_back(s.origin + ": " + std::to_string(missing_captions) + " image(s) without a " +
                                s.caption_extension + " file use " +
                                (s.class_tokens ? "the class tokens \"" + *s.class_tokens + "\"" : "an empty caption"));
}

void add_metadata_subset(const SubsetConfig& s, std::size_t si, std::vector<ImageItem>& out, Collector& c) {
  std::ifstream in(s.metadata_file, std::ios::binary);
  if (!in) throw ConfigError(s.origin + ": cannot open metadata_file " + s.metadata_file.string());
  nlohmann::json md;
  try {
    md = nlohmann::json::parse(in);
  } catch (const nlohmann::json::exception& e) {
    throw ConfigError(s.metadata_file.string() + ": invalid JSON: " + e.what());
  }
  if (!md.is_object())
    throw ConfigError(s.metadata_file.string() + ": expected an object of image key -> {\"caption\", \"tags\"}");
  if (md.empty()) {
    c.report.warnings.push_back(s.metadata_file.string() + ": no entries; subset ignored");
    return;
  }
  for (const auto& kv : md.items()) {
    // Named references rather than a structured binding: the lambda below captures them, which
    // clang accepts only from C++20 on.
    const std::string& key = kv.key();
    const auto& entry = kv.value();
    // The key is a path, or a name (stem) looked up in image_dir with kohya's extensions.
    fs::path found;
    std::error_code ec;
    if (fs::is_regular_file(key, ec)) {
      found = key;
    } else if (!s.image_dir.empty()) {
      for (const char* ext : {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".PNG", ".JPG", ".JPEG", ".WEBP", ".BMP"}) {
        fs::path p = s.image_dir / (key + ext);
        if (fs::is_regular_file(p, ec)) {
          found = p;
          break;
        }
      }
    }
    if (found.empty()) {
      c.problem(s.image_dir.empty() ? fs::path(key) : s.image_dir / key,
                "no image for metadata key \"" + key + "\" of " + s.metadata_file.string() +
                    (s.image_dir.empty() ? " (set image_dir / --train_data_dir)" : ""));
      continue;
    }
    bool bad = false;
    auto text = [&](const char* field) -> std::optional<std::string> {
      if (!entry.is_object() || !entry.contains(field) || entry[field].is_null()) return std::nullopt;
      if (!entry[field].is_string()) {
        c.problem(found, s.metadata_file.string() + ": \"" + key + "\"." + field + " is not a string");
        bad = true;
        return std::nullopt;
      }
      return entry[field].get<std::string>();
    };
    auto caption = text("caption");
    auto tags = text("tags");
    if (bad) continue;
    if (!caption) caption = std::move(tags), tags.reset();
    std::string cap = caption.value_or("");
    const std::string& sep = s.caption.separator;
    if (s.caption.enable_wildcard) {
      // Tags go on every caption line (one of which is picked per step).
      if (tags && caption) {
        std::string t = *tags, joined;
        for (std::size_t p = t.find('\n'); p != std::string::npos; p = t.find('\n', p + sep.size())) t.replace(p, 1, sep);
        std::istringstream lines(cap);
        for (std::string line; std::getline(lines, line);)
          if (!strip(line).empty()) joined += (joined.empty() ? "" : "\n") + line + sep + t;
        cap = joined;
      }
    } else if (tags && !tags->empty()) {
      cap += sep + *tags;
    }
    ImageItem item;
    item.path = found;
    item.caption = cap;
    item.subset = si;
    item.num_repeats = s.num_repeats;
    out.push_back(std::move(item));
  }
}

std::string problem_list(const std::vector<Problem>& ps) {
  std::ostringstream ss;
  ss << ps.size() << " unreadable file(s) in the dataset:";
  const std::size_t shown = std::min<std::size_t>(ps.size(), 50);
  for (std::size_t i = 0; i < shown; ++i) ss << "\n  " << ps[i].message;
  if (shown < ps.size()) ss << "\n  ... and " << ps.size() - shown << " more";
  ss << "\nfix or remove them, or skip them (skip_bad)";
  return ss.str();
}

}  // namespace

Dataset Dataset::build(const DatasetConfig& config, const BuildOptions& options, BuildReport* report_out) {
  BuildReport local;
  BuildReport& report = report_out ? *report_out : local;
  Collector c{options, report, {}};
  Dataset d;
  d.config_ = config;

  std::vector<ImageItem> train, reg;
  for (std::size_t si = 0; si < config.subsets.size(); ++si) {
    const SubsetConfig& s = config.subsets[si];
    if (s.num_repeats < 1) {
      report.warnings.push_back(s.origin + ": num_repeats is " + std::to_string(s.num_repeats) + "; subset ignored");
      continue;
    }
    auto& dst = s.is_reg ? reg : train;
    if (s.kind == SubsetKind::FineTuning)
      add_metadata_subset(s, si, dst, c);
    else
      add_folder_subset(s, si, dst, c);
  }
  // Buckets are chosen here so an image no bucket fits is one more listed problem.
  BucketSelector selector = [&] {
    try {
      return BucketSelector(config.buckets);
    } catch (const std::invalid_argument& e) {
      throw ConfigError(config.origin + ": " + e.what());
    }
  }();
  for (auto* items : {&train, &reg}) {
    check_items(*items, options, c);
    std::vector<ImageItem> kept;
    for (auto& it : *items) {
      try {
        it.bucket = selector.select(it.size);
        kept.push_back(std::move(it));
      } catch (const std::invalid_argument& e) {
        c.problem(it.path, e.what());
      }
    }
    *items = std::move(kept);
  }
  if (!c.problems.empty()) {
    // Problem messages already name the file; keep the path apart for callers.
    if (!options.skip_bad) throw DatasetError(problem_list(c.problems));
    report.skipped = c.problems;
    for (const auto& p : c.problems) report.warnings.push_back("skipped: " + p.message);
  }
  if (train.empty()) throw DatasetError(config.origin + ": no training images (check image_dir / metadata_file)");

  for (const auto& it : train) report.num_train_images += it.num_repeats;
  for (const auto& it : reg) report.num_reg_images += it.num_repeats;
  if (!reg.empty()) {
    std::vector<int> repeats;
    for (const auto& it : reg) repeats.push_back(it.num_repeats);
    repeats = match_reg_repeats(repeats, report.num_train_images);
    if (report.num_train_images < report.num_reg_images)
      report.warnings.push_back("more regularization images than training images; some are not used");
    for (std::size_t i = 0; i < reg.size(); ++i) reg[i].num_repeats = repeats[i];
    reg.erase(std::remove_if(reg.begin(), reg.end(), [](const ImageItem& it) { return it.num_repeats == 0; }), reg.end());
  }
  d.items_ = std::move(train);
  d.items_.insert(d.items_.end(), reg.begin(), reg.end());

  // kohya's sorted bucket order.
  std::map<Size, std::vector<std::size_t>> by_reso;
  for (std::size_t i = 0; i < d.items_.size(); ++i) {
    const auto& it = d.items_[i];
    auto& b = by_reso[it.bucket.bucket];
    for (int r = 0; r < it.num_repeats; ++r) b.push_back(i);
  }
  for (auto& [reso, list] : by_reso) {
    d.bucket_resos_.push_back(reso);
    d.buckets_.push_back(std::move(list));
  }
  return d;
}

std::size_t Dataset::batches_per_epoch() const {
  std::size_t n = 0;
  const std::size_t bs = static_cast<std::size_t>(config_.batch_size);
  for (const auto& b : buckets_) n += (b.size() + bs - 1) / bs;
  return n;
}

std::vector<Batch> Dataset::epoch_plan(std::uint64_t seed, int epoch) const {
  auto rng = derived_rng(seed, kBucketStream, static_cast<std::uint64_t>(epoch));
  const std::size_t bs = static_cast<std::size_t>(config_.batch_size);
  std::vector<std::pair<std::size_t, std::size_t>> index;  // (bucket, batch in bucket)
  for (std::size_t b = 0; b < buckets_.size(); ++b)
    for (std::size_t k = 0; k * bs < buckets_[b].size(); ++k) index.emplace_back(b, k);
  shuffle(index, rng);
  auto contents = buckets_;
  for (auto& b : contents) shuffle(b, rng);
  std::vector<Batch> out;
  out.reserve(index.size());
  for (auto [b, k] : index) {
    Batch batch;
    batch.bucket = b;
    batch.resolution = bucket_resos_[b];
    const auto& src = contents[b];
    batch.items.assign(src.begin() + static_cast<std::ptrdiff_t>(k * bs),
                       src.begin() + static_cast<std::ptrdiff_t>(std::min(src.size(), (k + 1) * bs)));
    out.push_back(std::move(batch));
  }
  return out;
}

std::string Dataset::caption(std::size_t item, const CaptionStep& at, std::mt19937_64& rng) const {
  const auto& it = items_.at(item);
  return process_caption(it.caption, config_.subsets.at(it.subset).caption, at, rng);
}

TrainingImage Dataset::image(std::size_t item, std::mt19937_64& rng) const {
  const auto& it = items_.at(item);
  const auto& s = config_.subsets.at(it.subset);
  const auto how = s.resize_interpolation.empty() ? Interpolation::Default : *parse_interpolation(s.resize_interpolation);
  return load_training_image(it.path, it.bucket, {s.random_crop, s.flip_aug, s.color_aug, how}, rng, it.conditioning_path);
}

std::vector<GroupBatch> group_epoch_plan(const std::vector<Dataset>& datasets, std::uint64_t seed, int epoch) {
  std::vector<GroupBatch> out;
  for (std::size_t d = 0; d < datasets.size(); ++d)
    for (auto& b : datasets[d].epoch_plan(seed + d, epoch)) out.push_back({d, std::move(b)});
  auto rng = derived_rng(seed, kGroupStream, static_cast<std::uint64_t>(epoch));
  shuffle(out, rng);
  return out;
}

}  // namespace sumi::datasets
