#include "component.h"

#include "error.h"
#include "host_api.h"

#include <algorithm>
#include <cctype>
#include <sstream>

namespace sumi::host {

namespace {

std::string trim(std::string s) {
  auto sp = [](unsigned char c) { return std::isspace(c) != 0; };
  while (!s.empty() && sp(static_cast<unsigned char>(s.back()))) s.pop_back();
  size_t i = 0;
  while (i < s.size() && sp(static_cast<unsigned char>(s[i]))) ++i;
  return s.substr(i);
}

std::vector<std::string> split_list(std::string s) {
  s = trim(s);
  if (!s.empty() && (s.front() == '[' || s.front() == '(')) s = s.substr(1);
  if (!s.empty() && (s.back() == ']' || s.back() == ')')) s.pop_back();
  std::vector<std::string> out;
  std::stringstream ss(s);
  std::string item;
  while (std::getline(ss, item, ',')) {
    item = trim(item);
    if (!item.empty()) out.push_back(item);
  }
  return out;
}

}  // namespace

const char* param_type_name(int32_t t) {
  switch (t) {
    case SUMI_PARAM_BOOL: return "bool";
    case SUMI_PARAM_INT: return "int";
    case SUMI_PARAM_DOUBLE: return "float";
    case SUMI_PARAM_STRING: return "string";
    case SUMI_PARAM_DOUBLE_LIST: return "list of floats";
    case SUMI_PARAM_INT_LIST: return "list of ints";
  }
  return "?";
}

namespace {

int64_t to_int(const std::string& s, const std::string& where) {
  size_t pos = 0;
  try {
    long long v = std::stoll(s, &pos);
    if (pos == s.size()) return v;
  } catch (...) {
  }
  throw UserError(where + ": expected an int, found '" + s + "'");
}

double to_double(const std::string& s, const std::string& where) {
  size_t pos = 0;
  try {
    double v = std::stod(s, &pos);
    if (pos == s.size()) return v;
  } catch (...) {
  }
  throw UserError(where + ": expected a float, found '" + s + "'");
}

}  // namespace

ConfigValue parse_config_value(const sumi_param_spec& spec, const std::string& text_in, const std::string& where) {
  ConfigValue v;
  v.type = spec.type;
  const std::string text = trim(text_in);
  switch (spec.type) {
    case SUMI_PARAM_BOOL: {
      std::string l = text;
      std::transform(l.begin(), l.end(), l.begin(), [](unsigned char c) { return std::tolower(c); });
      if (l == "true" || l == "1" || l == "yes") v.b = true;
      else if (l == "false" || l == "0" || l == "no") v.b = false;
      else throw UserError(where + ": expected a bool (true/false), found '" + text + "'");
      break;
    }
    case SUMI_PARAM_INT: v.i = to_int(text, where); break;
    case SUMI_PARAM_DOUBLE: v.d = to_double(text, where); break;
    case SUMI_PARAM_STRING: v.s = text_in; break;
    case SUMI_PARAM_DOUBLE_LIST:
      for (const auto& item : split_list(text)) v.doubles.push_back(to_double(item, where));
      break;
    case SUMI_PARAM_INT_LIST:
      for (const auto& item : split_list(text)) v.ints.push_back(to_int(item, where));
      break;
    default: throw UserError(where + ": unknown parameter type " + std::to_string(spec.type));
  }
  return v;
}

std::map<std::string, ConfigValue> make_config(const sumi_component& c, const std::map<std::string, std::string>& given) {
  const std::string section = std::string(kind_name(c.kind)) + " '" + c.name + "'";
  std::map<std::string, ConfigValue> out;
  for (const auto& [key, text] : given) {
    const sumi_param_spec* spec = nullptr;
    for (int64_t i = 0; i < c.n_params; ++i)
      if (key == c.params[i].key) spec = &c.params[i];
    if (!spec) {
      std::string keys;
      for (int64_t i = 0; i < c.n_params; ++i) keys += std::string(i ? ", " : "") + c.params[i].key;
      throw UserError(section + " has no parameter '" + key + "'" +
                      (keys.empty() ? std::string(" (it takes none)") : "; valid: " + keys));
    }
    out[key] = parse_config_value(*spec, text, section + " " + key);
  }
  for (int64_t i = 0; i < c.n_params; ++i) {
    const auto& p = c.params[i];
    if (out.count(p.key)) continue;
    if (!p.default_value) throw UserError(section + " requires '" + p.key + "' (" + param_type_name(p.type) + "): " + (p.doc ? p.doc : ""));
    out[p.key] = parse_config_value(p, p.default_value, section + " default of " + p.key);
  }
  return out;
}

Component::Component(ComponentRef ref, std::string ns, Registry& registry, std::map<std::string, ConfigValue> config)
    : ref_(ref) {
  ctx_.component = std::move(ns);
  ctx_.registry = &registry;
  ctx_.config = std::move(config);
  set_last_error("");
  const auto* c = ref_.component;
  // Models, networks and optimizers create tensors; before ABI 1.4 they cannot ask where.
  const bool makes_tensors = c->kind == SUMI_KIND_MODEL || c->kind == SUMI_KIND_NETWORK || c->kind == SUMI_KIND_OPTIMIZER;
  if (makes_tensors && !registry.device().is_cpu() && ref_.library->descriptor->abi_minor < 4)
    throw UserError(std::string(kind_name(c->kind)) + " '" + c->name + "' (" + ref_.library->path + ") was built for ABI " +
                    std::to_string(ref_.library->descriptor->abi_major) + "." + std::to_string(ref_.library->descriptor->abi_minor) +
                    ", before plugins were told the device (1.4), so it computes on the CPU only; run with --device cpu "
                    "or rebuild it against this sumi's SDK");
  check(call_plugin([&] { return c->create(host_api(), &ctx_, &self_); }), "create");
  if (!self_) throw UserError(std::string(kind_name(c->kind)) + " '" + c->name + "' created no instance");
}

Component::~Component() {
  if (self_) {
    try {
      ref_.component->destroy(self_);
    } catch (...) {
    }
  }
}

void Component::check(sumi_status status, const char* what) const {
  if (status == SUMI_OK) return;
  const auto* c = ref_.component;
  throw UserError(std::string(kind_name(c->kind)) + " '" + c->name + "' (" + ref_.library->path + "): " + what +
                  " failed: " + (last_error().empty() ? "status " + std::to_string(status) : last_error()));
}

void Component::require_slot(bool present, const char* slot, const char* since) const {
  if (present) return;
  const auto* c = ref_.component;
  throw UserError(std::string(kind_name(c->kind)) + " '" + c->name + "' (" + ref_.library->path + ") has no '" +
                  slot + "' (added in ABI " + since + "; the plugin was built for ABI " +
                  std::to_string(ref_.library->descriptor->abi_major) + "." +
                  std::to_string(ref_.library->descriptor->abi_minor) + "); rebuild it against this sumi's SDK");
}

}  // namespace sumi::host
