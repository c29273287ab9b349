#include "sumi/datasets/config.h"
#include "sumi/datasets/latent_cache.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <fstream>
#include <sstream>
#include <type_traits>

#include <toml++/toml.h>

#include "sumi/datasets/image.h"

namespace sumi::datasets {
namespace fs = std::filesystem;

const char* to_string(SubsetKind k) {
  switch (k) {
    case SubsetKind::DreamBooth: return "DreamBooth";
    case SubsetKind::FineTuning: return "fine-tuning";
    case SubsetKind::ControlNet: return "ControlNet";
  }
  return "?";
}

namespace {

// ---- the schema (kohya's ConfigSanitizer, flattened) ----------------------------------------

enum class Type { Bool, Int, Float, Str, Reso, Path };
enum class Scope {
  Dataset,   // dataset setting: [general] or [[datasets]]
  Subset,    // subset setting that may also be given above ("ascendable" in kohya)
  Distinct,  // only in [[datasets.subsets]]
};
constexpr unsigned DB = 1, FT = 2, CN = 4, ALL = DB | FT | CN;

struct KeyDef {
  const char* name;
  Type type;
  Scope scope;
  unsigned kinds;
  bool supported;
};

const KeyDef kKeys[] = {
    {"batch_size", Type::Int, Scope::Dataset, ALL, true},
    {"bucket_no_upscale", Type::Bool, Scope::Dataset, ALL, true},
    {"bucket_reso_steps", Type::Int, Scope::Dataset, ALL, true},
    {"enable_bucket", Type::Bool, Scope::Dataset, ALL, true},
    {"max_bucket_reso", Type::Int, Scope::Dataset, ALL, true},
    {"min_bucket_reso", Type::Int, Scope::Dataset, ALL, true},
    {"resolution", Type::Reso, Scope::Dataset, ALL, true},
    {"network_multiplier", Type::Float, Scope::Dataset, ALL, false},
    {"validation_seed", Type::Int, Scope::Dataset, ALL, false},
    {"validation_split", Type::Float, Scope::Dataset, ALL, false},

    {"color_aug", Type::Bool, Scope::Subset, ALL, true},
    {"flip_aug", Type::Bool, Scope::Subset, ALL, true},
    {"num_repeats", Type::Int, Scope::Subset, ALL, true},
    {"random_crop", Type::Bool, Scope::Subset, ALL, true},
    {"shuffle_caption", Type::Bool, Scope::Subset, ALL, true},
    {"keep_tokens", Type::Int, Scope::Subset, ALL, true},
    {"keep_tokens_separator", Type::Str, Scope::Subset, ALL, true},
    {"secondary_separator", Type::Str, Scope::Subset, ALL, true},
    {"caption_separator", Type::Str, Scope::Subset, ALL, true},
    {"token_warmup_min", Type::Int, Scope::Subset, ALL, true},
    {"token_warmup_step", Type::Float, Scope::Subset, ALL, true},
    {"caption_prefix", Type::Str, Scope::Subset, ALL, true},
    {"caption_suffix", Type::Str, Scope::Subset, ALL, true},
    {"caption_dropout_every_n_epochs", Type::Int, Scope::Subset, ALL, true},
    {"caption_dropout_rate", Type::Float, Scope::Subset, ALL, true},
    {"caption_tag_dropout_rate", Type::Float, Scope::Subset, ALL, true},
    {"caption_extension", Type::Str, Scope::Subset, DB | CN, true},
    {"class_tokens", Type::Str, Scope::Subset, DB, true},
    {"face_crop_aug_range", Type::Str, Scope::Subset, ALL, false},
    {"enable_wildcard", Type::Bool, Scope::Subset, ALL, true},
    {"custom_attributes", Type::Str, Scope::Subset, ALL, false},
    {"resize_interpolation", Type::Str, Scope::Subset, ALL, true},
    {"cache_info", Type::Bool, Scope::Subset, DB | CN, false},

    {"image_dir", Type::Path, Scope::Distinct, ALL, true},
    {"is_reg", Type::Bool, Scope::Distinct, DB, true},
    {"metadata_file", Type::Path, Scope::Distinct, FT, true},
    {"conditioning_data_dir", Type::Path, Scope::Distinct, CN, true},
    {"alpha_mask", Type::Bool, Scope::Distinct, DB | FT, false},
};

const KeyDef* find_key(std::string_view name) {
  for (const auto& k : kKeys)
    if (name == k.name) return &k;
  return nullptr;
}

unsigned kind_bit(SubsetKind k) { return k == SubsetKind::DreamBooth ? DB : k == SubsetKind::FineTuning ? FT : CN; }

std::string kind_of(const toml::node& n) {
  if (n.is_boolean()) return "a boolean";
  if (n.is_integer()) return "an integer";
  if (n.is_floating_point()) return "a float";
  if (n.is_string()) return "a string";
  if (n.is_array()) return "an array";
  if (n.is_table()) return "a table";
  return "a date/time";
}

// ---- values, wherever they come from -----------------------------------------------------

struct Val {
  const toml::node* node = nullptr;  // from the file
  const CliValue* cli = nullptr;     // or from the command line
  std::string where;                 // "cfg.toml:12 datasets[0].resolution" / "--resolution"
};
using Table = std::map<std::string, Val>;

[[noreturn]] void fail(const std::string& where, const std::string& msg) { throw ConfigError(where + ": " + msg); }

std::string line_of(const std::string& file, const toml::node& n) {
  const auto& src = n.source();
  return file + ":" + std::to_string(src.begin.line);
}

std::string cli_text(const CliValue& v) {
  return std::visit(
      [](const auto& x) -> std::string {
        using X = std::decay_t<decltype(x)>;
        if constexpr (std::is_same_v<X, std::string>) return x;
        else if constexpr (std::is_same_v<X, bool>) return x ? "true" : "false";
        else {
          std::ostringstream ss;
          ss << x;
          return ss.str();
        }
      },
      v);
}

bool as_bool(const Val& v) {
  if (v.node) {
    if (auto b = v.node->value_exact<bool>()) return *b;
    fail(v.where, std::string("expected true or false, found ") + kind_of(*v.node));
  }
  if (auto b = std::get_if<bool>(v.cli)) return *b;
  if (auto s = std::get_if<std::string>(v.cli)) {
    std::string l = *s;
    std::transform(l.begin(), l.end(), l.begin(), [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
    if (l == "true" || l == "1") return true;
    if (l == "false" || l == "0") return false;
  }
  fail(v.where, "expected true or false, found \"" + cli_text(*v.cli) + "\"");
}

long long as_int(const Val& v) {
  if (v.node) {
    if (v.node->is_integer()) return *v.node->value_exact<int64_t>();
    fail(v.where, "expected an integer, found " + kind_of(*v.node));
  }
  if (auto i = std::get_if<long long>(v.cli)) return *i;
  if (auto s = std::get_if<std::string>(v.cli)) {
    try {
      std::size_t used = 0;
      long long x = std::stoll(*s, &used);
      if (used == s->size()) return x;
    } catch (const std::exception&) {
    }
  }
  fail(v.where, "expected an integer, found \"" + cli_text(*v.cli) + "\"");
}

double as_float(const Val& v) {
  if (v.node) {
    if (v.node->is_integer()) return static_cast<double>(*v.node->value_exact<int64_t>());
    if (v.node->is_floating_point()) return *v.node->value_exact<double>();
    fail(v.where, "expected a number, found " + kind_of(*v.node));
  }
  if (auto d = std::get_if<double>(v.cli)) return *d;
  if (auto i = std::get_if<long long>(v.cli)) return static_cast<double>(*i);
  if (auto s = std::get_if<std::string>(v.cli)) {
    try {
      std::size_t used = 0;
      double x = std::stod(*s, &used);
      if (used == s->size()) return x;
    } catch (const std::exception&) {
    }
  }
  fail(v.where, "expected a number, found \"" + cli_text(*v.cli) + "\"");
}

std::string as_string(const Val& v) {
  if (v.node) {
    if (v.node->is_string()) return *v.node->value_exact<std::string>();
    fail(v.where, "expected a string, found " + kind_of(*v.node));
  }
  if (auto s = std::get_if<std::string>(v.cli)) return *s;
  fail(v.where, "expected a string, found " + cli_text(*v.cli));
}

Size as_reso(const Val& v) {
  auto check = [&](long long w, long long h) {
    if (w <= 0 || h <= 0 || w > 1 << 20 || h > 1 << 20)
      fail(v.where, "resolution must be positive, found " + std::to_string(w) + "x" + std::to_string(h));
    return Size{static_cast<int>(w), static_cast<int>(h)};
  };
  if (v.node) {
    if (v.node->is_integer()) {
      const auto x = *v.node->value_exact<int64_t>();
      return check(x, x);
    }
    if (const auto* a = v.node->as_array(); a && a->size() == 2 && (*a)[0].is_integer() && (*a)[1].is_integer())
      return check(*(*a)[0].value_exact<int64_t>(), *(*a)[1].value_exact<int64_t>());
    fail(v.where, "expected an integer or [width, height], e.g. resolution = [768, 512]");
  }
  if (auto i = std::get_if<long long>(v.cli)) return check(*i, *i);
  if (auto s = std::get_if<std::string>(v.cli)) {
    // kohya's --resolution: "512" or "512,768" (width,height).
    std::string t = *s;
    const auto comma = t.find(',');
    try {
      if (comma == std::string::npos) {
        const long long x = std::stoll(t);
        return check(x, x);
      }
      return check(std::stoll(t.substr(0, comma)), std::stoll(t.substr(comma + 1)));
    } catch (const std::invalid_argument&) {
    } catch (const std::out_of_range&) {
    }
  }
  fail(v.where, "expected \"<size>\" or \"<width>,<height>\", found \"" + cli_text(*v.cli) + "\"");
}

// ---- reading and checking one level of the file ---------------------------------------------

enum class Level { General, Dataset, Subset };

std::vector<std::string> allowed_names(Level level, unsigned kinds) {
  std::vector<std::string> out;
  for (const auto& k : kKeys) {
    const bool ok = level == Level::Subset ? (k.scope != Scope::Dataset && (k.kinds & kinds))
                                           : k.scope != Scope::Distinct;
    if (ok) out.push_back(k.name);
  }
  if (level == Level::Dataset) out.push_back("subsets");
  return out;
}

// Collects the keys of one table, rejecting the ones that do not belong at this level.
Table read_level(const toml::table& t, const std::string& file, const std::string& path, Level level, unsigned kind) {
  Table out;
  for (const auto& [k, node] : t) {
    const std::string key(k.str());
    const std::string where = line_of(file, node) + " " + path + key;
    if (level == Level::Dataset && key == "subsets") continue;
    const KeyDef* def = find_key(key);
    if (!def) {
      const auto near = nearest_key(key, allowed_names(level, kind));
      fail(where, "unknown dataset-config key \"" + key + "\"" +
                      (near.empty() ? "" : "; did you mean \"" + near + "\"?"));
    }
    if (level != Level::Subset && def->scope == Scope::Distinct)
      fail(where, "\"" + key + "\" is a per-subset setting: move it into a [[datasets.subsets]] table");
    if (level == Level::Subset && def->scope == Scope::Dataset)
      fail(where, "\"" + key + "\" is a dataset setting: move it to [[datasets]] or [general]");
    if (level == Level::Subset && !(def->kinds & kind)) {
      std::string kinds;
      for (auto [bit, name] : {std::pair{DB, "DreamBooth"}, std::pair{FT, "fine-tuning"}, std::pair{CN, "ControlNet"}})
        if (def->kinds & bit) kinds += (kinds.empty() ? "" : " or ") + std::string(name);
      fail(where, "\"" + key + "\" applies to " + kinds + " subsets only; this subset is " +
                      (kind == DB ? "DreamBooth (no metadata_file)" : kind == FT ? "fine-tuning (metadata_file)"
                                                                          : "ControlNet (conditioning_data_dir)"));
    }
    if (!def->supported)
      fail(where, "sumi does not support the kohya dataset-config key \"" + key + "\" yet; remove it");
    Val v{&node, nullptr, where};
    switch (def->type) {  // type errors surface even for keys a subset kind then ignores
      case Type::Bool: as_bool(v); break;
      case Type::Int: as_int(v); break;
      case Type::Float: as_float(v); break;
      case Type::Str: case Type::Path: as_string(v); break;
      case Type::Reso: as_reso(v); break;
    }
    out[key] = v;
  }
  return out;
}

// ---- resolving one subset through the chain ---------------------------------------------------

struct Chain {
  const Table* subset = nullptr;
  const Table* dataset = nullptr;
  const Table* general = nullptr;
  const Table* cli = nullptr;

  const Val* find(const std::string& key) const {
    for (const Table* t : {subset, dataset, general, cli}) {
      if (!t) continue;
      auto it = t->find(key);
      if (it != t->end()) return &it->second;
    }
    return nullptr;
  }
  template <class F, class T>
  void get(const std::string& key, T& out, F convert) const {
    const Val* v = find(key);
    if (!v) return;
    const auto x = convert(*v);
    if constexpr (std::is_same_v<T, int>)
      if (x < -(1LL << 30) || x > (1LL << 30)) fail(v->where, key + " is out of range: " + std::to_string(x));
    out = static_cast<T>(x);
  }
};

// The command line under the config's key names (kohya's ARGPARSE_OPTNAME_TO_CONFIG_OPTNAME).
Table cli_table(const CliOptions& cli) {
  Table out;
  for (const auto& [name, value] : cli) {
    std::string key = name == "train_batch_size" ? "batch_size" : name == "dataset_repeats" ? "num_repeats" : name;
    // The folder/metadata paths are read by config_from_arguments itself.
    if (name == "train_data_dir" || name == "reg_data_dir" || name == "in_json" || name == "conditioning_data_dir") continue;
    // Latent caching and worker options belong to the loader (data_loader_options).
    if (is_data_loader_option(name)) continue;
    const KeyDef* def = find_key(key);
    if (!def || def->scope == Scope::Distinct) {
      std::vector<std::string> valid{"train_data_dir", "reg_data_dir", "in_json", "conditioning_data_dir", "train_batch_size",
                                     "dataset_repeats"};
      for (const auto& k : kKeys)
        if (k.scope != Scope::Distinct && k.supported) valid.push_back(k.name);
      const std::string near = nearest_key(name, valid);
      throw ConfigError("unknown dataset option '" + name + "'" + (near.empty() ? "" : "; did you mean '" + near + "'?"));
    }
    if (!def->supported) throw ConfigError("sumi does not support the dataset option '" + name + "' yet");
    out[key] = Val{nullptr, &value, "--" + name};
  }
  return out;
}

void check_range(bool ok, const Val* v, const std::string& key, const std::string& what) {
  if (!ok) fail(v ? v->where : key, key + " must be " + what);
}

std::string dotted(std::string ext) {
  if (!ext.empty() && ext[0] != '.') ext = "." + ext;
  return ext;
}

void resolve_subset_settings(SubsetConfig& s, const Chain& c) {
  c.get("num_repeats", s.num_repeats, as_int);
  c.get("flip_aug", s.flip_aug, as_bool);
  c.get("color_aug", s.color_aug, as_bool);
  c.get("random_crop", s.random_crop, as_bool);
  auto& cap = s.caption;
  c.get("shuffle_caption", cap.shuffle, as_bool);
  c.get("keep_tokens", cap.keep_tokens, as_int);
  c.get("keep_tokens_separator", cap.keep_tokens_separator, as_string);
  c.get("caption_separator", cap.separator, as_string);
  c.get("secondary_separator", cap.secondary_separator, as_string);
  c.get("caption_prefix", cap.prefix, as_string);
  c.get("caption_suffix", cap.suffix, as_string);
  c.get("caption_dropout_rate", cap.dropout_rate, as_float);
  c.get("caption_dropout_every_n_epochs", cap.dropout_every_n_epochs, as_int);
  c.get("caption_tag_dropout_rate", cap.tag_dropout_rate, as_float);
  c.get("token_warmup_min", cap.token_warmup_min, as_int);
  c.get("token_warmup_step", cap.token_warmup_step, as_float);
  c.get("enable_wildcard", cap.enable_wildcard, as_bool);
  c.get("resize_interpolation", s.resize_interpolation, as_string);
  if (!s.resize_interpolation.empty() && !parse_interpolation(s.resize_interpolation)) {
    const std::vector<std::string> names{"lanczos", "nearest", "bilinear", "linear", "bicubic", "cubic", "area", "box"};
    const auto near = nearest_key(s.resize_interpolation, names);
    fail(c.find("resize_interpolation")->where,
         "resize_interpolation must be one of lanczos, nearest, bilinear, linear, bicubic, cubic, area, box; found \"" +
             s.resize_interpolation + "\"" + (near.empty() ? "" : "; did you mean \"" + near + "\"?"));
  }
  if (s.kind != SubsetKind::FineTuning) {
    c.get("caption_extension", s.caption_extension, as_string);
    s.caption_extension = dotted(s.caption_extension);
  }
  if (s.kind == SubsetKind::DreamBooth)
    if (const Val* v = c.find("class_tokens")) s.class_tokens = as_string(*v);

  check_range(cap.keep_tokens >= 0, c.find("keep_tokens"), "keep_tokens", "0 or more");
  check_range(cap.dropout_rate >= 0 && cap.dropout_rate <= 1, c.find("caption_dropout_rate"), "caption_dropout_rate",
              "between 0 and 1");
  check_range(cap.tag_dropout_rate >= 0 && cap.tag_dropout_rate <= 1, c.find("caption_tag_dropout_rate"),
              "caption_tag_dropout_rate", "between 0 and 1");
  check_range(cap.dropout_every_n_epochs >= 0, c.find("caption_dropout_every_n_epochs"),
              "caption_dropout_every_n_epochs", "0 or more");
  check_range(cap.token_warmup_step >= 0, c.find("token_warmup_step"), "token_warmup_step", "0 or more");
  check_range(!cap.separator.empty(), c.find("caption_separator"), "caption_separator", "non-empty");
}

void resolve_dataset_settings(DatasetConfig& d, const Chain& c) {
  c.get("batch_size", d.batch_size, as_int);
  auto& b = d.buckets;
  c.get("enable_bucket", b.enable_bucket, as_bool);
  c.get("bucket_no_upscale", b.no_upscale, as_bool);
  c.get("min_bucket_reso", b.min_bucket_reso, as_int);
  c.get("max_bucket_reso", b.max_bucket_reso, as_int);
  c.get("bucket_reso_steps", b.reso_steps, as_int);
  const Val* reso = c.find("resolution");
  if (!reso)
    fail(d.origin, "resolution is required: set resolution in [general] or [[datasets]], or pass --resolution");
  b.resolution = as_reso(*reso);
  check_range(d.batch_size >= 1, c.find("batch_size"), "batch_size", "1 or more");
  check_range(b.reso_steps >= 1, c.find("bucket_reso_steps"), "bucket_reso_steps", "1 or more");
  try {
    b = adjusted(b);
  } catch (const std::invalid_argument& e) {
    fail(d.origin, e.what());
  }
}

SubsetKind dataset_kind(const toml::array* subsets, const std::string& where) {
  std::size_t n = 0, ft = 0, cn = 0;
  if (subsets)
    for (const auto& s : *subsets)
      if (const auto* t = s.as_table()) {
        ++n;
        ft += t->contains("metadata_file");
        cn += t->contains("conditioning_data_dir");
      }
  if (n > 0 && cn == n) return SubsetKind::ControlNet;
  if (n > 0 && ft == n) return SubsetKind::FineTuning;
  if (ft == 0) return SubsetKind::DreamBooth;
  fail(where, "DreamBooth subsets (image_dir only) and fine-tuning subsets (metadata_file) cannot be mixed in one "
              "dataset; put them in separate [[datasets]]");
}

}  // namespace

DatasetGroupConfig parse_dataset_config(std::string_view text, const std::string& file, const CliOptions& cli) {
  toml::table root;
  try {
    root = toml::parse(text, file);
  } catch (const toml::parse_error& e) {
    throw ConfigError(file + ":" + std::to_string(e.source().begin.line) + ": invalid TOML: " + std::string(e.description()));
  }
  for (const auto& [k, node] : root) {
    const std::string key(k.str());
    if (key != "general" && key != "datasets") {
      const auto near = nearest_key(key, {"general", "datasets"});
      fail(line_of(file, node) + " " + key, "unknown top-level key \"" + key + "\" (expected [general] and [[datasets]])" +
                                                (near.empty() ? "" : "; did you mean \"" + near + "\"?"));
    }
  }
  const Table cli_vals = cli_table(cli);
  Table general;
  if (const auto* g = root.get("general")) {
    if (!g->is_table()) fail(line_of(file, *g) + " general", "[general] must be a table");
    general = read_level(*g->as_table(), file, "general.", Level::General, ALL);
  }
  const auto* datasets = root.get("datasets");
  if (!datasets || !datasets->is_array_of_tables() || datasets->as_array()->empty())
    fail(file, "no datasets: add at least one [[datasets]] table with [[datasets.subsets]]");

  DatasetGroupConfig out;
  std::size_t di = 0;
  for (const auto& dnode : *datasets->as_array()) {
    const std::string dpath = "datasets[" + std::to_string(di++) + "]";
    const auto& dtable = *dnode.as_table();
    const auto* subsets_node = dtable.get("subsets");
    const toml::array* subsets = subsets_node ? subsets_node->as_array() : nullptr;
    const std::string dwhere = line_of(file, dnode) + " " + dpath;
    if (subsets_node && !subsets_node->is_array_of_tables())
      fail(dwhere + ".subsets", "subsets must be [[datasets.subsets]] tables");
    if (!subsets || subsets->empty()) fail(dwhere, "dataset has no [[datasets.subsets]]");
    const SubsetKind kind = dataset_kind(subsets, dwhere);
    const Table dvals = read_level(dtable, file, dpath + ".", Level::Dataset, ALL);

    DatasetConfig d;
    d.origin = dwhere;
    resolve_dataset_settings(d, Chain{nullptr, &dvals, &general, &cli_vals});
    std::size_t si = 0;
    for (const auto& snode : *subsets) {
      const std::string spath = dpath + ".subsets[" + std::to_string(si++) + "]";
      const Table svals = read_level(*snode.as_table(), file, spath + ".", Level::Subset, kind_bit(kind));
      SubsetConfig s;
      s.kind = kind;
      s.origin = line_of(file, snode) + " " + spath;
      auto path_of = [&](const char* key, bool required) {
        auto it = svals.find(key);
        if (it == svals.end()) {
          if (required)
            fail(s.origin, std::string(to_string(kind)) + " subset needs \"" + key + "\"");
          return fs::path();
        }
        return fs::path(as_string(it->second));
      };
      s.image_dir = path_of("image_dir", kind != SubsetKind::FineTuning);
      if (kind == SubsetKind::FineTuning) s.metadata_file = path_of("metadata_file", true);
      if (kind == SubsetKind::ControlNet) s.conditioning_data_dir = path_of("conditioning_data_dir", true);
      if (auto it = svals.find("is_reg"); it != svals.end()) s.is_reg = as_bool(it->second);
      resolve_subset_settings(s, Chain{&svals, &dvals, &general, &cli_vals});
      d.subsets.push_back(std::move(s));
    }
    out.datasets.push_back(std::move(d));
  }
  // kohya checks this while reading the arguments, before any model loads.
  const DataLoaderOptions lo = data_loader_options(cli);
  for (const auto& d : out.datasets) {
    if (lo.cache_latents) check_latent_caching(d);
    if (lo.cache_text_encoder_outputs) check_text_encoder_caching(d);
  }
  return out;
}

DatasetGroupConfig load_dataset_config(const fs::path& file, const CliOptions& cli) {
  std::ifstream in(file, std::ios::binary);
  if (!in) throw ConfigError(file.string() + ": cannot open the dataset config");
  std::ostringstream ss;
  ss << in.rdbuf();
  return parse_dataset_config(ss.str(), file.string(), cli);
}

std::optional<FolderParams> parse_folder_name(std::string_view name) {
  // Python's int() on the part before the first "_": optional whitespace and sign, digits.
  const auto us = name.find('_');
  std::string head(name.substr(0, us));
  std::string t = strip(head);
  if (t.empty()) return std::nullopt;
  std::size_t i = (t[0] == '+' || t[0] == '-') ? 1 : 0;
  if (i == t.size()) return std::nullopt;
  for (std::size_t j = i; j < t.size(); ++j)
    if (!std::isdigit(static_cast<unsigned char>(t[j]))) return std::nullopt;
  long long n = 0;
  try {
    n = std::stoll(t);
  } catch (const std::out_of_range&) {
    return std::nullopt;
  }
  FolderParams p{static_cast<int>(std::clamp<long long>(n, -1, 1 << 30)),
                 us == std::string_view::npos ? std::string() : std::string(name.substr(us + 1))};
  return p;
}

std::vector<SubsetConfig> subsets_from_folders(const fs::path& dir, bool is_reg, std::vector<std::string>* skipped) {
  std::error_code ec;
  if (!fs::is_directory(dir, ec))
    throw ConfigError((is_reg ? "--reg_data_dir " : "--train_data_dir ") + dir.string() + ": not a directory");
  std::vector<fs::path> subdirs;
  for (const auto& e : fs::directory_iterator(dir))
    if (e.is_directory()) subdirs.push_back(e.path());
  std::sort(subdirs.begin(), subdirs.end());
  std::vector<SubsetConfig> out;
  for (const auto& sub : subdirs) {
    const auto p = parse_folder_name(sub.filename().string());
    if (!p || p->num_repeats < 1) {
      if (skipped)
        skipped->push_back(sub.string() + ": folder name does not start with \"<repeats>_\" (repeats >= 1); ignored");
      continue;
    }
    SubsetConfig s;
    s.kind = SubsetKind::DreamBooth;
    s.origin = sub.string();
    s.image_dir = sub;
    s.is_reg = is_reg;
    s.num_repeats = p->num_repeats;
    s.class_tokens = p->class_tokens;
    out.push_back(std::move(s));
  }
  return out;
}

DatasetGroupConfig config_from_arguments(const CliOptions& cli) {
  const Table cli_vals = cli_table(cli);
  auto path_arg = [&](const char* name) -> std::optional<fs::path> {
    auto it = cli.find(name);
    if (it == cli.end()) return std::nullopt;
    const auto* s = std::get_if<std::string>(&it->second);
    if (!s) throw ConfigError(std::string("--") + name + ": expected a path");
    return fs::path(*s);
  };
  const auto train = path_arg("train_data_dir"), reg = path_arg("reg_data_dir"), in_json = path_arg("in_json"),
             cond = path_arg("conditioning_data_dir");
  if (!train && !in_json)
    throw ConfigError("no dataset: pass --dataset_config, or --train_data_dir (DreamBooth folders \"<repeats>_<class>\"), "
                      "--train_data_dir with --in_json (fine-tuning) or with --conditioning_data_dir (ControlNet)");
  DatasetConfig d;
  d.origin = "command line";
  resolve_dataset_settings(d, Chain{nullptr, nullptr, nullptr, &cli_vals});
  // Folder names carry repeats and class tokens; they outrank --dataset_repeats.
  std::vector<SubsetConfig> subsets;
  if (in_json || cond) {
    SubsetConfig s;
    s.kind = in_json ? SubsetKind::FineTuning : SubsetKind::ControlNet;
    s.origin = "command line";
    if (train) s.image_dir = *train;
    if (in_json) s.metadata_file = *in_json;
    if (cond) {
      if (!train) throw ConfigError("--conditioning_data_dir needs --train_data_dir");
      s.conditioning_data_dir = *cond;
    }
    subsets.push_back(std::move(s));
    if (reg) throw ConfigError("--reg_data_dir applies to DreamBooth folders only, not with --in_json / --conditioning_data_dir");
  } else {
    subsets = subsets_from_folders(*train, false);
    if (reg) {
      auto r = subsets_from_folders(*reg, true);
      subsets.insert(subsets.end(), r.begin(), r.end());
    }
    if (subsets.empty())
      throw ConfigError("--train_data_dir " + train->string() +
                        ": no subfolders named \"<repeats>_<class tokens>\" (e.g. \"10_sks dog\")");
  }
  for (auto& s : subsets) {
    const int repeats = s.num_repeats;
    const auto tokens = s.class_tokens;
    resolve_subset_settings(s, Chain{nullptr, nullptr, nullptr, &cli_vals});
    if (s.kind == SubsetKind::DreamBooth) {
      s.num_repeats = repeats;
      s.class_tokens = tokens;
    }
  }
  d.subsets = std::move(subsets);
  DatasetGroupConfig out;
  out.datasets.push_back(std::move(d));
  const DataLoaderOptions lo = data_loader_options(cli);
  if (lo.cache_latents) check_latent_caching(out.datasets.front());
  if (lo.cache_text_encoder_outputs) check_text_encoder_caching(out.datasets.front());
  return out;
}

}  // namespace sumi::datasets
