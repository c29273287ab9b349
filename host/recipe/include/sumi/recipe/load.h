// Reading recipes: TOML (toml++) or YAML (yaml-cpp) files into the value tree, and single
// values typed from text (`--set`, kohya's `key=value` arguments). The same content in
// either format gives the same tree: YAML scalars are typed the way TOML types them.
#pragma once

#include <filesystem>
#include <string>
#include <string_view>

#include "sumi/recipe/value.h"

namespace sumi::recipe {

// A recipe file (.toml, .yaml, .yml) with its sections checked (see check_sections).
// Errors name the file and line.
Value load_recipe(const std::filesystem::path& path);

// Any TOML / YAML file as a value tree, without recipe checks. Origins are "<path>:<line>".
Value load_toml_file(const std::filesystem::path& path);
Value load_yaml_file(const std::filesystem::path& path);
Value parse_toml_text(std::string_view text, const std::string& name);
Value parse_yaml_text(std::string_view text, const std::string& name);

// Type a value written as text: true/false (also Python's True/False), integers, floats,
// quoted strings, TOML arrays ("[0.9, 0.99]"), comma lists of numbers ("0.9,0.99", also
// "(0.9,0.99)") become arrays; "None"/"null" is null; anything else stays a string.
Value parse_value_text(std::string_view text, const std::string& origin);

// `--set section.key=value`: set a (dotted) path below a section, creating tables on the
// way. The section must exist in the recipe syntax (nearest-name error otherwise).
void set_override(Value& root, std::string_view path, std::string_view value_text,
                  const std::string& origin);
// The same with "section.key=value" in one string.
void apply_set_argument(Value& root, std::string_view assignment, const std::string& origin);

}  // namespace sumi::recipe
