#include "sumi/recipe/load.h"

#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <fstream>
#include <limits>
#include <regex>
#include <sstream>
#include <toml++/toml.h>

#include "sumi/recipe/sections.h"
#include "sumi/recipe/suggest.h"

namespace sumi::recipe {

namespace {

std::string at(const std::string& name, int64_t line) {
  return line > 0 ? name + ":" + std::to_string(line) : name;
}

// ---------------------------------------------------------------- TOML
Value from_toml(const toml::node& n, const std::string& name) {
  std::string origin = at(name, static_cast<int64_t>(n.source().begin.line));
  switch (n.type()) {
    case toml::node_type::table: {
      Value t = Value::table(origin);
      // toml++ keeps keys sorted; the source position restores document order.
      std::vector<std::pair<std::string, const toml::node*>> entries;
      for (auto&& [k, v] : *n.as_table()) entries.emplace_back(std::string(k.str()), &v);
      std::stable_sort(entries.begin(), entries.end(), [](const auto& a, const auto& b) {
        const auto& pa = a.second->source().begin;
        const auto& pb = b.second->source().begin;
        return pa.line != pb.line ? pa.line < pb.line : pa.column < pb.column;
      });
      for (auto& [k, v] : entries) t.set(k, from_toml(*v, name));
      return t;
    }
    case toml::node_type::array: {
      Value a = Value::array(origin);
      for (auto&& item : *n.as_array()) a.push_back(from_toml(item, name));
      return a;
    }
    case toml::node_type::string: return Value::string(n.as_string()->get(), origin);
    case toml::node_type::integer: return Value::integer(n.as_integer()->get(), origin);
    case toml::node_type::floating_point:
      return Value::real(n.as_floating_point()->get(), origin);
    case toml::node_type::boolean: return Value::boolean(n.as_boolean()->get(), origin);
    default: {
      // Dates and times: no recipe key takes one; keep the text so a string key can.
      std::ostringstream os;
      n.visit([&](auto&& x) { os << x; });
      return Value::string(os.str(), origin);
    }
  }
}

#if !TOML_EXCEPTIONS
Value toml_or_throw(toml::parse_result&& r, const std::string& name) {
  if (!r) {
    const auto& e = r.error();
    throw RecipeError(at(name, e.source().begin.line) + ": invalid TOML: " +
                      std::string(e.description()));
  }
  return from_toml(r.table(), name);
}
#endif

// ---------------------------------------------------------------- YAML
const std::regex& int_re() {
  static const std::regex re("[-+]?[0-9]+");
  return re;
}
const std::regex& float_re() {
  static const std::regex re("[-+]?(\\.[0-9]+|[0-9]+(\\.[0-9]*)?)([eE][-+]?[0-9]+)?");
  return re;
}

// Types a plain scalar the way TOML would; returns false when it is just a string.
bool type_plain(const std::string& s, const std::string& origin, Value& out) {
  if (s.empty() || s == "~" || s == "null" || s == "Null" || s == "NULL") {
    out = Value::null(origin);
    return true;
  }
  if (s == "true" || s == "True" || s == "TRUE") {
    out = Value::boolean(true, origin);
    return true;
  }
  if (s == "false" || s == "False" || s == "FALSE") {
    out = Value::boolean(false, origin);
    return true;
  }
  if (std::regex_match(s, int_re())) {
    errno = 0;
    long long v = std::strtoll(s.c_str(), nullptr, 10);
    if (errno == ERANGE)
      throw RecipeError("integer " + s + " does not fit in 64 bits (" + origin + ")");
    out = Value::integer(v, origin);
    return true;
  }
  if (s.size() > 2 && s[0] == '0' && (s[1] == 'x' || s[1] == 'o' || s[1] == 'b')) {
    int base = s[1] == 'x' ? 16 : s[1] == 'o' ? 8 : 2;
    char* end = nullptr;
    errno = 0;
    long long v = std::strtoll(s.c_str() + 2, &end, base);
    if (end && *end == '\0' && errno == 0) {
      out = Value::integer(v, origin);
      return true;
    }
  }
  if (std::regex_match(s, float_re())) {
    out = Value::real(std::strtod(s.c_str(), nullptr), origin);
    return true;
  }
  std::string low = s;
  std::transform(low.begin(), low.end(), low.begin(), [](unsigned char c) { return std::tolower(c); });
  if (low == ".inf" || low == "+.inf" || low == "inf" || low == "+inf") {
    out = Value::real(std::numeric_limits<double>::infinity(), origin);
    return true;
  }
  if (low == "-.inf" || low == "-inf") {
    out = Value::real(-std::numeric_limits<double>::infinity(), origin);
    return true;
  }
  if (low == ".nan" || low == "nan") {
    out = Value::real(std::numeric_limits<double>::quiet_NaN(), origin);
    return true;
  }
  return false;
}

Value from_yaml(const YAML::Node& n, const std::string& name) {
  std::string origin = at(name, n.Mark().line + 1);
  switch (n.Type()) {
    case YAML::NodeType::Undefined:
    case YAML::NodeType::Null: return Value::null(origin);
    case YAML::NodeType::Scalar: {
      const std::string& s = n.Scalar();
      const std::string& tag = n.Tag();
      // Quoted scalars carry the non-specific tag "!": always strings, as in TOML.
      if (tag == "!" || tag == "tag:yaml.org,2002:str") return Value::string(s, origin);
      Value v;
      if (type_plain(s, origin, v)) return v;
      return Value::string(s, origin);
    }
    case YAML::NodeType::Sequence: {
      Value a = Value::array(origin);
      for (const auto& item : n) a.push_back(from_yaml(item, name));
      return a;
    }
    case YAML::NodeType::Map: {
      Value t = Value::table(origin);
      for (const auto& kv : n) {
        if (!kv.first.IsScalar())
          throw RecipeError(at(name, kv.first.Mark().line + 1) + ": keys must be plain names");
        std::string key = kv.first.Scalar();
        if (t.find(key))
          throw RecipeError(at(name, kv.first.Mark().line + 1) + ": duplicate key '" + key +
                            "' (first set at " + t.find(key)->origin() + ")");
        Value v = from_yaml(kv.second, name);
        // A key with no value ("key:") points at the key's line rather than the next one.
        if (kv.second.IsNull()) v.set_origin(at(name, kv.first.Mark().line + 1));
        t.set(key, std::move(v));
      }
      return t;
    }
  }
  return Value::null(origin);
}

std::string read_file(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw RecipeError("cannot open '" + path.string() + "' for reading");
  std::ostringstream os;
  os << in.rdbuf();
  return os.str();
}

std::string trim(std::string_view s) {
  size_t b = s.find_first_not_of(" \t\r\n");
  if (b == std::string_view::npos) return "";
  size_t e = s.find_last_not_of(" \t\r\n");
  return std::string(s.substr(b, e - b + 1));
}

}  // namespace

Value parse_toml_text(std::string_view text, const std::string& name) {
#if TOML_EXCEPTIONS
  try {
    return from_toml(toml::parse(text, name), name);
  } catch (const toml::parse_error& e) {
    throw RecipeError(at(name, static_cast<int64_t>(e.source().begin.line)) +
                      ": invalid TOML: " + std::string(e.description()));
  }
#else
  return toml_or_throw(toml::parse(text, name), name);
#endif
}

Value parse_yaml_text(std::string_view text, const std::string& name) {
  YAML::Node doc;
  try {
    doc = YAML::Load(std::string(text));
  } catch (const YAML::Exception& e) {
    throw RecipeError(at(name, e.mark.line + 1) + ": invalid YAML: " + e.msg);
  }
  Value v = from_yaml(doc, name);
  if (v.is_null()) return Value::table(name);  // an empty document is an empty recipe
  return v;
}

Value load_toml_file(const std::filesystem::path& path) {
  return parse_toml_text(read_file(path), path.string());
}

Value load_yaml_file(const std::filesystem::path& path) {
  return parse_yaml_text(read_file(path), path.string());
}

Value load_recipe(const std::filesystem::path& path) {
  std::string ext = path.extension().string();
  std::transform(ext.begin(), ext.end(), ext.begin(), [](unsigned char c) { return std::tolower(c); });
  Value root;
  if (ext == ".toml") {
    root = load_toml_file(path);
  } else if (ext == ".yaml" || ext == ".yml") {
    root = load_yaml_file(path);
  } else {
    throw RecipeError("recipe '" + path.string() + "': unknown format '" + ext +
                      "'; expected a .toml, .yaml or .yml file");
  }
  check_sections(root);
  return root;
}

Value parse_value_text(std::string_view text_in, const std::string& origin) {
  std::string text = trim(text_in);
  if (text == "None") return Value::null(origin);
  if (!text.empty() && (text.front() == '[' || text.front() == '"' || text.front() == '\'')) {
    // TOML syntax for arrays and quoted strings.
    try {
      Value doc = parse_toml_text("v = " + text, origin);
      Value v = *doc.find("v");
      v.set_origin(origin);
      if (v.is_array())
        for (auto& item : v.items()) item.set_origin(origin);
      return v;
    } catch (const RecipeError&) {
      return Value::string(text, origin);
    }
  }
  Value v;
  if (!text.empty() && type_plain(text, origin, v)) return v;
  // kohya passes tuples as "0.9,0.99" or "(0.9,0.99)".
  std::string body = text;
  if (body.size() >= 2 && body.front() == '(' && body.back() == ')')
    body = body.substr(1, body.size() - 2);
  if (body.find(',') != std::string::npos) {
    Value list = Value::array(origin);
    std::string piece;
    std::istringstream in(body);
    bool all_scalar = true;
    while (std::getline(in, piece, ',')) {
      piece = trim(piece);
      if (piece.empty()) continue;  // a trailing comma, as Python allows
      Value item;
      if (!type_plain(piece, origin, item) || item.is_null()) {
        all_scalar = false;
        break;
      }
      list.push_back(std::move(item));
    }
    if (all_scalar && list.size() > 0) return list;
  }
  return Value::string(text, origin);
}

void set_override(Value& root, std::string_view path, std::string_view value_text,
                  const std::string& origin) {
  std::vector<std::string> parts;
  size_t start = 0;
  while (true) {
    size_t dot = path.find('.', start);
    parts.emplace_back(path.substr(start, dot == std::string_view::npos ? dot : dot - start));
    if (dot == std::string_view::npos) break;
    start = dot + 1;
  }
  for (const auto& p : parts)
    if (p.empty())
      throw RecipeError(origin + ": '" + std::string(path) +
                        "' is not a recipe path; expected section.key, e.g. optimizer.learning_rate");
  if (parts.size() < 2)
    throw RecipeError(origin + ": '" + std::string(path) +
                      "' names no key; expected section.key, e.g. optimizer.learning_rate");
  if (!is_section(parts[0]))
    throw RecipeError(origin + ": unknown section '" + parts[0] + "'" +
                      did_you_mean(parts[0], section_names()));
  if (parts[0] == "datasets")
    throw RecipeError(origin + ": datasets entries cannot be set one key at a time; edit the "
                      "recipe's [[datasets]] tables instead");
  if (!root.is_table()) root = Value::table(origin);
  Value* cur = &root;
  for (size_t i = 0; i + 1 < parts.size(); ++i) {
    Value* next = cur->find(parts[i]);
    if (!next) {
      next = &cur->set(parts[i], Value::table(origin));
    } else if (!next->is_table()) {
      throw RecipeError(origin + ": cannot set '" + std::string(path) + "': '" + parts[i] +
                        "' is a " + next->kind_name() + " (" + next->origin() + "), not a table");
    }
    cur = next;
  }
  cur->set(parts.back(), parse_value_text(value_text, origin));
}

void apply_set_argument(Value& root, std::string_view assignment, const std::string& origin) {
  size_t eq = assignment.find('=');
  if (eq == std::string_view::npos)
    throw RecipeError(origin + ": expected section.key=value, found '" + std::string(assignment) +
                      "'");
  set_override(root, trim(assignment.substr(0, eq)), assignment.substr(eq + 1), origin);
}

}  // namespace sumi::recipe
