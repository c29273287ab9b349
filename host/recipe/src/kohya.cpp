#include "sumi/recipe/kohya.h"

#include <boost/program_options.hpp>

#include <algorithm>
#include <cctype>

#include "sumi/recipe/load.h"
#include "sumi/recipe/sections.h"
#include "sumi/recipe/suggest.h"

namespace po = boost::program_options;

namespace sumi::recipe {

std::string normalize_network_module(std::string_view module) {
  constexpr std::string_view prefix = "networks.";
  if (module.substr(0, prefix.size()) == prefix) module.remove_prefix(prefix.size());
  return std::string(module);
}

std::string normalize_optimizer_type(std::string_view type) {
  // kohya resolves names it does not know as torch.optim classes: "SGD" is torch.optim.SGD.
  constexpr std::string_view torch_prefix = "torch.optim.";
  if (type.substr(0, torch_prefix.size()) == torch_prefix) type.remove_prefix(torch_prefix.size());
  std::string out(type);
  std::transform(out.begin(), out.end(), out.begin(), [](unsigned char c) { return std::tolower(c); });
  if (out.empty()) return "adamw";  // kohya's default optimizer
  if (out == "sgdnesterov") return "sgd";
  return out;
}

namespace {

const std::vector<std::string>& flag_names() {
  static const std::vector<std::string> names = [] {
    std::vector<std::string> n;
    for (const auto& f : kohya_flags()) n.emplace_back(f.name);
    n.emplace_back("set");
    return n;
  }();
  return names;
}

std::string lower(std::string s) {
  std::transform(s.begin(), s.end(), s.begin(), [](unsigned char c) { return std::tolower(c); });
  return s;
}

constexpr std::string_view kImpliedByNesterov = " (implied by SGDNesterov)";

bool ends_with(std::string_view s, std::string_view suffix) {
  return s.size() >= suffix.size() && s.substr(s.size() - suffix.size()) == suffix;
}

// What one batch of flags (the config file, or the command line) leaves to do at its end.
struct Layer {
  bool sgd_nesterov = false;
  std::string nesterov_origin;
};

Value& section_table(Value& root, const std::string& section, const std::string& origin) {
  Value* s = root.find(section);
  if (!s) s = &root.set(section, Value::table(origin));
  if (!s->is_table())
    throw RecipeError(origin + ": cannot set a key in section '" + section + "': it is a " +
                      s->kind_name() + " (" + s->origin() + "), not a table");
  return *s;
}

// kohya's flags describe one dataset: they land in the first [[datasets]] entry.
Value& first_dataset(Value& root, const std::string& origin) {
  Value* d = root.find("datasets");
  if (!d) d = &root.set("datasets", Value::array(origin));
  if (d->is_table()) return *d;
  if (!d->is_array())
    throw RecipeError(origin + ": 'datasets' is a " + d->kind_name() + " (" + d->origin() +
                      "), expected an array of tables");
  if (d->size() == 0) d->push_back(Value::table(origin));
  Value& first = d->items()[0];
  if (!first.is_table())
    throw RecipeError(origin + ": the first datasets entry is a " + first.kind_name() + " (" +
                      first.origin() + "), expected a table");
  return first;
}

void put(Value& root, std::string_view target, Value v, const std::string& flag) {
  size_t dot = target.find('.');
  std::string section(target.substr(0, dot));
  std::string key(target.substr(dot + 1));
  if (!flag.empty()) v.set_flag("--" + flag);
  std::string origin = v.origin();
  Value& table = section == "datasets" ? first_dataset(root, origin) : section_table(root, section, origin);
  table.set(key, std::move(v));
}

// One "key=value" of a --*_args flag.
void put_key_value(Value& root, const std::string& section, const std::string& item,
                   const std::string& flag, const std::string& origin) {
  size_t eq = item.find('=');
  std::string key = eq == std::string::npos ? "" : item.substr(0, eq);
  key.erase(0, key.find_first_not_of(" \t"));
  key.erase(key.find_last_not_of(" \t") + 1);
  if (key.empty())
    throw RecipeError((origin == "--" + flag ? origin : origin + ": " + flag) +
                      " expects key=value items (e.g. weight_decay=0.01), found '" + item + "'");
  Value v = parse_value_text(item.substr(eq + 1), origin);
  if (v.kind() != Value::Kind::String) {
    std::string text = item.substr(eq + 1);
    text.erase(0, text.find_first_not_of(" \t"));
    text.erase(text.find_last_not_of(" \t") + 1);
    v.set_source_text(text);
  }
  section_table(root, section, origin).set(key, std::move(v));
}

void apply_special(Value& root, const KohyaFlag& f, const Value& v, Layer& layer) {
  std::string name = f.name;
  if (name == "network_module") {
    // The name as given stays as the value's source text: kohya's ss_network_module writes it.
    Value module = Value::string(normalize_network_module(v.as_string()), v.origin());
    module.set_source_text(v.as_string());
    put(root, f.target, std::move(module), name);
  } else if (name == "optimizer_type") {
    const std::string& kohya = v.as_string();
    Value& opt = section_table(root, "optimizer", v.origin());
    // A lower layer's SGDNesterov leaves keys behind that only make sense for it.
    for (const char* implied : {"nesterov", "momentum"})
      if (const Value* k = opt.find(implied); k && ends_with(k->origin(), kImpliedByNesterov))
        opt.erase(implied);
    put(root, f.target, Value::string(normalize_optimizer_type(kohya), v.origin()), name);
    if (lower(kohya) == "sgdnesterov") {
      // kohya: SGD with nesterov=True, momentum 0.9 unless the optimizer args give one.
      layer.sgd_nesterov = true;
      layer.nesterov_origin = v.origin() + std::string(kImpliedByNesterov);
      opt.set("nesterov", Value::boolean(true, layer.nesterov_origin));
    }
  } else if (name == "use_8bit_adam" || name == "use_lion_optimizer") {
    if (v.as_bool())
      put(root, f.target, Value::string(name == "use_8bit_adam" ? "adamw8bit" : "lion", v.origin()),
          name);
  } else if (name == "output_config") {
    throw RecipeError("sumi does not support --output_config (" + v.origin() +
                      "): kohya writes its flags to a file and exits; write a recipe instead");
  }
}

bool is_special(const KohyaFlag& f) {
  std::string_view n = f.name;
  return n == "network_module" || n == "optimizer_type" || n == "use_8bit_adam" ||
         n == "use_lion_optimizer" || n == "output_config";
}

void finish_layer(Value& root, const Layer& layer) {
  if (!layer.sgd_nesterov) return;
  Value& opt = section_table(root, "optimizer", layer.nesterov_origin);
  if (!opt.find("momentum")) opt.set("momentum", Value::real(0.9, layer.nesterov_origin));
}

// A typed value from command-line text, checked against the flag's kohya type.
Value from_text(const KohyaFlag& f, const std::string& text, const std::string& origin) {
  switch (f.kind) {
    case KohyaKind::String: return Value::string(text, origin);
    case KohyaKind::Int: {
      Value v = parse_value_text(text, origin);
      if (v.kind() != Value::Kind::Int)
        throw RecipeError(origin + " expects an integer, found '" + text + "'");
      return v;
    }
    case KohyaKind::Float: {
      Value v = parse_value_text(text, origin);
      if (!v.is_number()) throw RecipeError(origin + " expects a number, found '" + text + "'");
      return Value::real(v.as_double(), origin);
    }
    case KohyaKind::Switch: {
      std::string l = lower(text);
      if (l != "true" && l != "false")
        throw RecipeError(origin + " is a switch: give it alone, or as " + origin +
                          "=true / =false; found '" + text + "'");
      return Value::boolean(l == "true", origin);
    }
    case KohyaKind::KeyValues: break;
  }
  return Value::string(text, origin);
}

// A config-file value: TOML already typed it; only switches must be booleans, and string
// spellings of numbers or booleans are typed the way the command line would type them.
Value from_config(const KohyaFlag& f, const Value& v) {
  if (f.kind == KohyaKind::Switch) {
    if (v.kind() == Value::Kind::Bool) return v;
    if (v.kind() == Value::Kind::String) return from_text(f, v.as_string(), v.origin());
    throw RecipeError(v.origin() + ": " + f.name + " is a switch; expected true or false, found " +
                      v.kind_name() + " " + v.text());
  }
  if (v.kind() == Value::Kind::String && f.kind != KohyaKind::String && !f.many)
    return from_text(f, v.as_string(), v.origin());
  return v;
}

void apply_config_value(Value& root, const KohyaFlag& f, const Value& raw, Layer& layer) {
  if (std::string_view(f.name) == "config_file")
    throw RecipeError(raw.origin() + ": a config file cannot name another config_file");
  if (f.kind == KohyaKind::KeyValues) {
    std::string section(f.target, std::string_view(f.target).find('.'));
    auto one = [&](const Value& item) {
      if (item.kind() != Value::Kind::String)
        throw RecipeError(item.origin() + ": " + f.name + " items must be \"key=value\" strings, found " +
                          item.kind_name() + " " + item.text());
      put_key_value(root, section, item.as_string(), f.name, item.origin());
    };
    if (raw.is_array())
      for (const auto& item : raw.items()) one(item);
    else
      one(raw);
    return;
  }
  Value v = from_config(f, raw);
  if (is_special(f)) {
    if (f.kind != KohyaKind::Switch && v.kind() != Value::Kind::String)
      throw RecipeError(v.origin() + ": " + f.name + " expects a string, found " + v.kind_name() +
                        " " + v.text());
    apply_special(root, f, v, layer);
    return;
  }
  put(root, f.target, v, f.name);
}

// kohya's get_scheduler_fix passes --lr_scheduler_num_cycles only to cosine_with_restarts and
// --lr_scheduler_power only to polynomial, and ignores them otherwise (the kohya GUI's configs
// always carry both). Values that came from those flags are dropped for other schedulers, so
// cosine keeps its own half wave as in kohya; a recipe's own [lr_scheduler] keys stay.
void drop_unused_scheduler_flags(Value& root) {
  Value* sched = root.find("lr_scheduler");
  if (!sched || !sched->is_table()) return;
  const std::string type = lower(plugin_type(root, "lr_scheduler"));
  const struct {
    const char* key;
    const char* flag;
    const char* used_by;
  } rows[] = {{"num_cycles", "--lr_scheduler_num_cycles", "cosine_with_restarts"},
              {"power", "--lr_scheduler_power", "polynomial"}};
  for (const auto& r : rows)
    if (const Value* v = sched->find(r.key); v && v->flag() == r.flag && type != r.used_by) sched->erase(r.key);
}

std::string with_toml_suffix(std::string path) {
  // kohya appends ".toml" when the name lacks it.
  if (path.size() < 5 || path.compare(path.size() - 5, 5, ".toml") != 0) path += ".toml";
  return path;
}

}  // namespace

void apply_kohya_config_file(Value& root, const std::filesystem::path& path) {
  Value cfg = load_toml_file(path);
  Layer layer;
  auto entry = [&](const std::string& key, const Value& v) {
    const KohyaFlag* f = find_kohya_flag(key);
    if (!f)
      throw RecipeError("unknown kohya option '" + key + "' in " + v.origin() +
                        did_you_mean(key, flag_names()));
    apply_config_value(root, *f, v, layer);
  };
  // kohya flattens one level of tables: [model] / [optimizer] headers are for people only.
  for (const auto& key : cfg.keys()) {
    const Value& v = *cfg.find(key);
    if (v.is_table())
      for (const auto& k : v.keys()) entry(k, *v.find(k));
    else
      entry(key, v);
  }
  finish_layer(root, layer);
}

void apply_kohya_args(Value& root, const std::vector<std::string>& args) {
  if (!root.is_table()) root = Value::table("command line");
  po::options_description desc;
  for (const auto& f : kohya_flags()) {
    if (f.kind == KohyaKind::Switch)
      desc.add_options()(f.name, po::value<std::string>()->implicit_value("true"));
    else if (f.kind == KohyaKind::KeyValues || f.many)
      desc.add_options()(f.name, po::value<std::vector<std::string>>()->multitoken()->zero_tokens());
    else
      desc.add_options()(f.name, po::value<std::string>());
  }
  desc.add_options()("set", po::value<std::string>());

  po::parsed_options parsed(&desc);
  try {
    parsed = po::command_line_parser(args)
                 .options(desc)
                 .style(po::command_line_style::allow_long | po::command_line_style::long_allow_adjacent |
                        po::command_line_style::long_allow_next)
                 .allow_unregistered()
                 .run();
  } catch (const po::error& e) {
    throw RecipeError(std::string("command line: ") + e.what());
  }

  // Check everything first so a typo is reported before anything is applied.
  std::string config_file;
  std::vector<std::string> sets;
  for (const auto& o : parsed.options) {
    if (o.position_key >= 0 || o.string_key.empty()) {
      std::string tok = o.original_tokens.empty() ? (o.value.empty() ? "" : o.value[0]) : o.original_tokens[0];
      throw RecipeError("unexpected argument '" + tok + "' on the command line (values follow a flag: --name value)");
    }
    if (o.unregistered) {
      std::string hint = did_you_mean(o.string_key, flag_names(), "--");
      throw RecipeError("unknown flag --" + o.string_key + hint +
                        (hint.empty() ? " (see docs/recipes.md for the kohya flags sumi knows)" : ""));
    }
    if (o.string_key == "config_file" && !o.value.empty()) config_file = o.value.back();
    if (o.string_key == "set") sets.push_back(o.value.empty() ? "" : o.value.back());
  }

  if (!config_file.empty()) apply_kohya_config_file(root, with_toml_suffix(config_file));

  Layer layer;
  for (const auto& o : parsed.options) {
    if (o.string_key == "config_file" || o.string_key == "set") continue;
    const KohyaFlag& f = *find_kohya_flag(o.string_key);
    std::string origin = "--" + o.string_key;
    if (f.kind == KohyaKind::KeyValues) {
      std::string section(f.target, std::string_view(f.target).find('.'));
      for (const auto& item : o.value) put_key_value(root, section, item, f.name, origin);
      continue;
    }
    if (f.many) {
      Value list = Value::array(origin);
      for (const auto& item : o.value) list.push_back(from_text(f, item, origin));
      put(root, f.target, std::move(list), f.name);
      continue;
    }
    // A bare switch carries no token: the implicit value only shows up in a variables_map.
    std::string text = o.value.empty() && f.kind == KohyaKind::Switch ? "true" : "";
    if (!o.value.empty()) text = o.value.back();
    else if (f.kind != KohyaKind::Switch) throw RecipeError(origin + " needs a value");
    Value v = from_text(f, text, origin);
    if (is_special(f))
      apply_special(root, f, v, layer);
    else
      put(root, f.target, std::move(v), f.name);
  }
  finish_layer(root, layer);
  drop_unused_scheduler_flags(root);

  for (const auto& s : sets) apply_set_argument(root, s, "--set " + s.substr(0, s.find('=')));
}

}  // namespace sumi::recipe
