#include <algorithm>
#include <cstddef>
#include <cctype>
#include <regex>

#include "sumi/recipe/load.h"
#include "sumi/recipe/schema.h"
#include "sumi/recipe/suggest.h"

namespace sumi::recipe {

ParamSpec::ParamSpec(std::string key_, int type_, std::optional<std::string> default_value_,
                     std::string doc_, bool optional_)
    : key(std::move(key_)),
      type(type_),
      default_value(std::move(default_value_)),
      doc(std::move(doc_)),
      optional(optional_) {}

// A plugin built against an older ABI may hand a shorter struct: read only what it covers.
#define SUMI_SPEC_HAS(field) \
  (s.struct_size >= offsetof(sumi_param_spec, field) + sizeof(s.field))

ParamSpec::ParamSpec(const sumi_param_spec& s) {
  if (SUMI_SPEC_HAS(key) && s.key) key = s.key;
  if (SUMI_SPEC_HAS(type)) type = s.type;
  if (SUMI_SPEC_HAS(default_value) && s.default_value) default_value = std::string(s.default_value);
  if (SUMI_SPEC_HAS(doc) && s.doc) doc = s.doc;
}

#undef SUMI_SPEC_HAS

std::vector<ParamSpec> to_specs(const sumi_param_spec* specs, int64_t n) {
  std::vector<ParamSpec> out;
  for (int64_t i = 0; specs && i < n; ++i) out.emplace_back(specs[i]);
  return out;
}

const char* param_type_name(int type) {
  switch (type) {
    case SUMI_PARAM_BOOL: return "boolean";
    case SUMI_PARAM_INT: return "integer";
    case SUMI_PARAM_DOUBLE: return "float";
    case SUMI_PARAM_STRING: return "string";
    case SUMI_PARAM_DOUBLE_LIST: return "list of floats";
    case SUMI_PARAM_INT_LIST: return "list of integers";
    case kParamStringList: return "list of strings";
  }
  return "unknown type";
}

// ---------------------------------------------------------------- conversion
namespace {

bool to_int(const Value& v, Value& out) {
  if (v.kind() == Value::Kind::Int) {
    out = Value::integer(v.as_int(), v.origin());
    return true;
  }
  if (v.kind() == Value::Kind::String) {
    Value p = parse_value_text(v.as_string(), v.origin());
    if (p.kind() == Value::Kind::Int) {
      out = p;
      return true;
    }
  }
  return false;
}

bool to_double(const Value& v, Value& out) {
  if (v.is_number()) {
    out = Value::real(v.as_double(), v.origin());
    return true;
  }
  if (v.kind() == Value::Kind::String) {
    Value p = parse_value_text(v.as_string(), v.origin());
    if (p.is_number()) {
      out = Value::real(p.as_double(), v.origin());
      return true;
    }
  }
  return false;
}

bool to_list(const Value& v, int item_type, Value& out) {
  auto convert_item = [&](const Value& item, Value& o) {
    return item_type == SUMI_PARAM_INT ? to_int(item, o) : to_double(item, o);
  };
  Value list = Value::array(v.origin());
  if (v.is_array()) {
    for (const auto& item : v.items()) {
      Value o;
      if (!convert_item(item, o)) return false;
      list.push_back(o);
    }
  } else if (v.kind() == Value::Kind::String) {
    // kohya passes lists as comma strings: "0.9,0.99"; "" is the empty list.
    if (v.as_string().find_first_not_of(" \t") == std::string::npos) {
      out = std::move(list);
      return true;
    }
    Value p = parse_value_text(v.as_string(), v.origin());
    if (p.kind() == Value::Kind::String) return false;
    return to_list(p, item_type, out);
  } else {
    Value o;
    if (!convert_item(v, o)) return false;
    list.push_back(o);
  }
  out = std::move(list);
  return true;
}

}  // namespace

bool convert_value(const Value& v, int type, Value& out) {
  switch (type) {
    case SUMI_PARAM_BOOL:
      if (v.kind() == Value::Kind::Bool) {
        out = v;
        return true;
      }
      if (v.kind() == Value::Kind::String) {
        std::string s = v.as_string();
        std::transform(s.begin(), s.end(), s.begin(), [](unsigned char c) { return std::tolower(c); });
        if (s == "true" || s == "false") {
          out = Value::boolean(s == "true", v.origin());
          return true;
        }
      }
      return false;
    case SUMI_PARAM_INT: return to_int(v, out);
    case SUMI_PARAM_DOUBLE: return to_double(v, out);
    case SUMI_PARAM_STRING:
      if (v.kind() != Value::Kind::String && !v.source_text().empty()) {
        out = Value::string(v.source_text(), v.origin());  // the key=value item's own text
        return true;
      }
      if (v.kind() != Value::Kind::String) return false;
      out = v;
      return true;
    case SUMI_PARAM_DOUBLE_LIST: return to_list(v, SUMI_PARAM_DOUBLE, out);
    case SUMI_PARAM_INT_LIST: return to_list(v, SUMI_PARAM_INT, out);
    case kParamStringList: {
      if (v.kind() == Value::Kind::String) {
        out = Value::array(v.origin());
        out.push_back(v);
        return true;
      }
      if (!v.is_array()) return false;
      for (const auto& item : v.items())
        if (item.kind() != Value::Kind::String) return false;
      out = v;
      return true;
    }
  }
  return false;
}

// ---------------------------------------------------------------- ResolvedSection
const ResolvedEntry& ResolvedSection::entry(std::string_view key, int type) const {
  for (const auto& e : entries_) {
    if (e.key != key) continue;
    if (type >= 0 && e.type != type)
      throw RecipeError("[" + name_ + "] " + std::string(key) + " is a " +
                        param_type_name(e.type) + ", not a " + param_type_name(type));
    return e;
  }
  throw RecipeError("[" + name_ + "] " + std::string(key) + " is not set");
}

bool ResolvedSection::has(std::string_view key) const {
  return std::any_of(entries_.begin(), entries_.end(), [&](const auto& e) { return e.key == key; });
}

bool ResolvedSection::get_bool(std::string_view key) const {
  return entry(key, SUMI_PARAM_BOOL).value.as_bool();
}
int64_t ResolvedSection::get_int(std::string_view key) const {
  return entry(key, SUMI_PARAM_INT).value.as_int();
}
double ResolvedSection::get_double(std::string_view key) const {
  return entry(key, SUMI_PARAM_DOUBLE).value.as_double();
}
const std::string& ResolvedSection::get_string(std::string_view key) const {
  return entry(key, SUMI_PARAM_STRING).value.as_string();
}
std::vector<double> ResolvedSection::get_double_list(std::string_view key) const {
  std::vector<double> out;
  for (const auto& v : entry(key, SUMI_PARAM_DOUBLE_LIST).value.items()) out.push_back(v.as_double());
  return out;
}
std::vector<int64_t> ResolvedSection::get_int_list(std::string_view key) const {
  std::vector<int64_t> out;
  for (const auto& v : entry(key, SUMI_PARAM_INT_LIST).value.items()) out.push_back(v.as_int());
  return out;
}
std::vector<std::string> ResolvedSection::get_string_list(std::string_view key) const {
  std::vector<std::string> out;
  for (const auto& v : entry(key, kParamStringList).value.items()) out.push_back(v.as_string());
  return out;
}
std::string ResolvedSection::text(std::string_view key) const { return entry(key, -1).value.text(); }
const std::string& ResolvedSection::origin(std::string_view key) const {
  return entry(key, -1).value.origin();
}

// ---------------------------------------------------------------- resolve_section
namespace {

std::string describe(const Value& v) {
  return std::string(v.kind_name()) + " " + v.text();
}

Value default_of(const ParamSpec& spec, std::string_view section) {
  const std::string& text = *spec.default_value;
  Value parsed = (spec.type == SUMI_PARAM_STRING && (text.empty() || text[0] != '"'))
                     ? Value::string(text, "default")
                     : parse_value_text(text, "default");
  Value out;
  if (!convert_value(parsed, spec.type, out))
    throw RecipeError("schema of [" + std::string(section) + "] declares default '" + text +
                      "' for " + spec.key + ", which is not a " + param_type_name(spec.type));
  return out;
}

}  // namespace

ResolvedSection resolve_section(const Value& section, std::string_view section_name,
                                const std::vector<ParamSpec>& host_specs,
                                const std::vector<ParamSpec>& plugin_specs) {
  std::string name(section_name);
  if (!section.is_null() && !section.is_table())
    throw RecipeError("section '" + name + "' must be a table, found " + describe(section) + " (" +
                      section.origin() + ")");

  std::string plugin;
  if (const Value* t = section.find("type"); t && t->kind() == Value::Kind::String)
    plugin = t->as_string();
  std::string declarers = plugin.empty() ? "the host does not declare"
                                         : "neither the host nor the '" + plugin + "' " + name +
                                               " plugin declares";

  std::vector<ParamSpec> specs = host_specs;
  for (const auto& p : plugin_specs) {
    for (const auto& h : host_specs)
      if (h.key == p.key)
        throw RecipeError("the '" + plugin + "' " + name + " plugin declares '" + p.key +
                          "', a key the host owns in [" + name + "]; rename it in the plugin");
    specs.push_back(p);
  }
  std::vector<std::string> valid;
  for (const auto& s : specs) valid.push_back(s.key);

  std::vector<std::string> errors;
  std::string where = section.is_null() ? "" : " (section at " + section.origin() + ")";

  if (section.is_table()) {
    for (const auto& key : section.keys()) {
      if (std::find(valid.begin(), valid.end(), key) != valid.end()) continue;
      const Value& v = *section.find(key);
      if (!v.flag().empty()) {
        std::string where_from = v.origin() == v.flag() ? "" : v.origin() + "; ";
        if (!plugin.empty() && !plugin_specs.empty()) {
          // A kohya flag the chosen plugin has no parameter for (e.g. --network_dim for a network
          // without a rank): the plugin's business, not a missing sumi feature.
          std::string msg = name + " '" + plugin + "' has no parameter " + key + " (" + v.flag() + ", " +
                            (where_from.empty() ? "" : where_from) + "maps to " + name + "." + key + "); its parameters:";
          for (size_t i = 0; i < plugin_specs.size(); ++i) msg += (i ? ", " : " ") + plugin_specs[i].key;
          errors.push_back(msg);
          continue;
        }
        errors.push_back("sumi does not support " + v.flag() + " yet (" + where_from +
                         "it maps to " + name + "." + key + ", which " + declarers + ")");
        continue;
      }
      std::string msg = "unknown key '" + key + "' in [" + name + "] (" + v.origin() + ")";
      std::string hint = did_you_mean(key, valid);
      msg += hint.empty() ? ";" : hint;
      msg += " valid keys:";
      for (size_t i = 0; i < valid.size(); ++i) msg += (i ? ", " : " ") + valid[i];
      errors.push_back(msg);
    }
  }

  ResolvedSection out(name);
  for (const auto& spec : specs) {
    const Value* v = section.find(spec.key);
    if (v && !v->is_null()) {
      Value converted;
      if (convert_value(*v, spec.type, converted)) {
        converted.set_origin(v->origin());
        out.add({spec.key, spec.type, std::move(converted), false});
      } else {
        std::string via = v->flag().empty() || v->flag() == v->origin() ? "" : " via " + v->flag();
        errors.push_back("[" + name + "] " + spec.key + ": expected a " +
                         param_type_name(spec.type) + ", found " + describe(*v) + " (" +
                         v->origin() + via + ")");
      }
    } else if (spec.default_value) {
      out.add({spec.key, spec.type, default_of(spec, name), true});
    } else if (!spec.optional) {
      std::string msg = "missing required key '" + spec.key + "' in [" + name + "]" + where;
      if (!spec.doc.empty()) msg += ": " + spec.doc;
      errors.push_back(msg);
    }
  }

  if (!errors.empty()) {
    std::string all;
    for (const auto& e : errors) all += (all.empty() ? "" : "\n") + e;
    throw RecipeError(all);
  }
  return out;
}

}  // namespace sumi::recipe
