// Prompt files: lines (gen_img --from_file, train_util .txt), .toml and .json as train_util's
// sample_images reads them. Structured entries take the keys of train_util's
// sample_image_inference; the reference ignores unknown keys, here they are errors.
#include <algorithm>
#include <cstdint>
#include <fstream>
#include <functional>
#include <sstream>
#include <stdexcept>
#include <string>

#include <nlohmann/json.hpp>
#include <toml++/toml.h>

#include "sumi/prompt/prompt_file.h"
#include "values.h"

namespace sumi::prompt {
namespace {

using detail::did_you_mean;

bool ends_with(const std::string& s, std::string_view suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

std::string_view drop_bom(std::string_view text) {
  return text.substr(0, 3) == "\xEF\xBB\xBF" ? text.substr(3) : text;
}

const std::vector<std::string>& entry_keys() {
  static const std::vector<std::string> keys{"prompt",       "negative_prompt", "width",
                                             "height",       "sample_steps",    "scale",
                                             "seed",         "sample_sampler",  "controlnet_image"};
  return keys;
}

// A key's value, independent of TOML or JSON.
struct Value {
  enum Kind { kString, kInteger, kFloat, kNull, kOther } kind = kOther;
  std::string text;
  std::int64_t integer = 0;
  double number = 0.0;
  std::string type_name;  // for messages
};

// Fills a spec from key/value pairs; `where` names the entry in messages.
void apply_key(PromptSpec& spec, const std::string& key, const Value& v, const std::string& where) {
  auto fail = [&](const std::string& what) {
    throw std::invalid_argument(where + ": key '" + key + "': " + what);
  };
  // JSON null is Python's None: the key counts as not given.
  if (v.kind == Value::kNull && std::find(entry_keys().begin(), entry_keys().end(), key) != entry_keys().end())
    return;
  auto want_string = [&]() -> std::string {
    if (v.kind != Value::kString) fail("expected a string, found " + v.type_name);
    return v.text;
  };
  auto want_int = [&](std::int64_t lo, const char* what, std::int64_t hi = 1000000000) -> std::int64_t {
    if (v.kind != Value::kInteger) fail(std::string("expected ") + what + " (an integer), found " + v.type_name);
    if (v.integer < lo || v.integer > hi)
      fail(std::string("expected ") + what + " from " + std::to_string(lo) + " to " + std::to_string(hi) +
           ", found " + std::to_string(v.integer));
    return v.integer;
  };
  if (key == "prompt") {
    spec.prompt = want_string();
  } else if (key == "negative_prompt") {
    spec.negative_prompt = want_string();
  } else if (key == "width") {
    spec.width = static_cast<int>(want_int(1, "a width in pixels"));
  } else if (key == "height") {
    spec.height = static_cast<int>(want_int(1, "a height in pixels"));
  } else if (key == "sample_steps") {
    spec.steps = static_cast<int>(want_int(1, "a step count"));
  } else if (key == "seed") {
    spec.seeds = {static_cast<std::uint64_t>(want_int(0, "a seed", INT64_MAX))};
  } else if (key == "scale") {
    if (v.kind == Value::kInteger) spec.scale = static_cast<double>(v.integer);
    else if (v.kind == Value::kFloat) spec.scale = v.number;
    else fail("expected a number, found " + v.type_name);
  } else if (key == "sample_sampler") {
    std::string s = want_string();
    try {
      check_sampler_name(s, "");
    } catch (const std::invalid_argument& e) {
      fail(e.what());
    }
    spec.sampler = s;
  } else if (key == "controlnet_image") {
    spec.controlnet_image = want_string();
  } else {
    throw std::invalid_argument(where + ": unknown key '" + key + "'" + did_you_mean(key, entry_keys()) +
                                " (known: prompt, negative_prompt, width, height, sample_steps, scale, "
                                "seed, sample_sampler, controlnet_image)");
  }
}

Value from_toml(const toml::node& node) {
  Value v;
  if (auto s = node.as_string()) {
    v.kind = Value::kString;
    v.text = s->get();
  } else if (auto i = node.as_integer()) {
    v.kind = Value::kInteger;
    v.integer = i->get();
  } else if (auto f = node.as_floating_point()) {
    v.kind = Value::kFloat;
    v.number = f->get();
  }
  std::ostringstream name;
  name << node.type();
  v.type_name = name.str();
  return v;
}

Value from_json(const nlohmann::json& j) {
  Value v;
  if (j.is_string()) {
    v.kind = Value::kString;
    v.text = j.get<std::string>();
  } else if (j.is_number_integer()) {
    v.kind = Value::kInteger;
    if (j.is_number_unsigned() && j.get<std::uint64_t>() > static_cast<std::uint64_t>(INT64_MAX)) {
      v.kind = Value::kOther;  // too large to be any of the keys' values
    } else {
      v.integer = j.get<std::int64_t>();
    }
  } else if (j.is_number_float()) {
    v.kind = Value::kFloat;
    v.number = j.get<double>();
  } else if (j.is_null()) {
    v.kind = Value::kNull;
  }
  v.type_name = j.type_name();
  if (v.kind == Value::kOther && j.is_number()) v.type_name = "an integer out of range";
  return v;
}

std::string line_origin(const std::string& name, size_t line) { return name + ":" + std::to_string(line); }

}  // namespace

std::vector<PromptSpec> parse_prompt_lines(std::string_view text, const std::string& name) {
  text = drop_bom(text);
  std::vector<PromptSpec> out;
  size_t line_no = 0, pos = 0;
  while (pos <= text.size()) {
    // Lines end at \n, \r\n or \r (Python's universal newlines).
    size_t end = text.find_first_of("\r\n", pos);
    std::string_view line = text.substr(pos, end == std::string_view::npos ? end : end - pos);
    ++line_no;
    // As the reference: skip blank lines and lines whose very first character is '#'.
    if (!detail::trim(line).empty() && line[0] != '#')
      out.push_back(parse_prompt_line(line, line_origin(name, line_no)));
    if (end == std::string_view::npos) break;
    pos = end + ((text[end] == '\r' && end + 1 < text.size() && text[end + 1] == '\n') ? 2 : 1);
  }
  return out;
}

std::vector<PromptSpec> parse_prompt_toml(std::string_view text, const std::string& name) {
  toml::table root;
  try {
    root = toml::parse(drop_bom(text), name);
  } catch (const toml::parse_error& e) {
    throw std::invalid_argument(name + ":" + std::to_string(e.source().begin.line) + ": invalid TOML: " +
                                std::string(e.description()));
  }
  const auto* prompt = root["prompt"].as_table();
  const toml::array* subsets = prompt ? (*prompt)["subset"].as_array() : nullptr;
  if (!prompt || !subsets)
    throw std::invalid_argument(name + ": expected a [prompt] table (shared keys) with [[prompt.subset]] "
                                "entries (one per image), as sd-scripts' sample prompt .toml files have");
  for (const auto& [key, node] : root)
    if (key.str() != "prompt")
      throw std::invalid_argument(name + ":" + std::to_string(node.source().begin.line) + ": unexpected top-level key '" +
                                  std::string(key.str()) + "'; everything goes under [prompt]");

  std::vector<PromptSpec> out;
  size_t index = 0;
  for (const auto& item : *subsets) {
    ++index;
    const auto* subset = item.as_table();
    std::string where = name + ":" + std::to_string(item.source().begin.line) + " (subset " + std::to_string(index) + ")";
    if (!subset) throw std::invalid_argument(where + ": expected a table, found " + from_toml(item).type_name);
    PromptSpec spec;
    spec.origin = where;
    // [prompt] keys first, then the subset's own (which win: sd-scripts would reject a key
    // given in both).
    for (const auto& [key, node] : *prompt) {
      if (key.str() == "subset") continue;
      apply_key(spec, std::string(key.str()), from_toml(node),
                name + ":" + std::to_string(node.source().begin.line) + " ([prompt])");
    }
    for (const auto& [key, node] : *subset)
      apply_key(spec, std::string(key.str()), from_toml(node),
                name + ":" + std::to_string(node.source().begin.line) + " (subset " + std::to_string(index) + ")");
    out.push_back(std::move(spec));
  }
  return out;
}

std::vector<PromptSpec> parse_prompt_json(std::string_view text, const std::string& name) {
  nlohmann::json root;
  try {
    root = nlohmann::json::parse(drop_bom(text));
  } catch (const nlohmann::json::parse_error& e) {
    throw std::invalid_argument(name + ": invalid JSON at byte " + std::to_string(e.byte) + ": " + e.what());
  } catch (const nlohmann::json::out_of_range& e) {
    // A number too large for a double ("1E400") is refused by the parser with out_of_range.
    throw std::invalid_argument(name + ": invalid JSON: " + e.what());
  }
  if (!root.is_array())
    throw std::invalid_argument(name + ": expected a JSON list of prompts (strings like \"a cat --w 768\" "
                                "or objects like {\"prompt\": \"a cat\", \"width\": 768}), found " +
                                std::string(root.type_name()));
  std::vector<PromptSpec> out;
  for (size_t i = 0; i < root.size(); ++i) {
    const auto& item = root[i];
    std::string where = name + " entry " + std::to_string(i + 1);
    if (item.is_string()) {
      out.push_back(parse_prompt_line(item.get<std::string>(), where));
    } else if (item.is_object()) {
      PromptSpec spec;
      spec.origin = where;
      for (const auto& [key, value] : item.items()) apply_key(spec, key, from_json(value), where);
      out.push_back(std::move(spec));
    } else {
      throw std::invalid_argument(where + ": expected a string or an object, found " + std::string(item.type_name()));
    }
  }
  return out;
}

std::vector<PromptSpec> load_prompt_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error(path + ": cannot open the prompt file");
  std::ostringstream buf;
  buf << in.rdbuf();
  if (in.bad()) throw std::runtime_error(path + ": read error");
  const std::string text = buf.str();
  if (ends_with(path, ".toml")) return parse_prompt_toml(text, path);
  if (ends_with(path, ".json")) return parse_prompt_json(text, path);
  return parse_prompt_lines(text, path);
}

}  // namespace sumi::prompt
