#include "sumi/recipe/sections.h"

#include <algorithm>

#include "sumi/recipe/load.h"
#include "sumi/recipe/schema.h"
#include "sumi/recipe/suggest.h"

namespace sumi::recipe {

const std::vector<std::string>& section_names() {
  static const std::vector<std::string> names = {
      "model", "network", "optimizer", "lr_scheduler", "noise_scheduler",
      "datasets", "train", "sample", "output"};
  return names;
}

const std::vector<std::string>& plugin_section_names() {
  static const std::vector<std::string> names = {"model", "network", "optimizer", "lr_scheduler",
                                                 "noise_scheduler"};
  return names;
}

bool is_section(std::string_view name) {
  const auto& n = section_names();
  return std::find(n.begin(), n.end(), name) != n.end();
}

bool is_plugin_section(std::string_view name) {
  const auto& n = plugin_section_names();
  return std::find(n.begin(), n.end(), name) != n.end();
}

void check_sections(const Value& root) {
  if (!root.is_table())
    throw RecipeError("a recipe must be a table of sections, found " + std::string(root.kind_name()) +
                      " (" + root.origin() + ")");
  for (const auto& key : root.keys()) {
    const Value& v = *root.find(key);
    if (!is_section(key)) {
      std::string msg = "unknown section '" + key + "' in " + v.origin();
      std::string hint = did_you_mean(key, section_names());
      if (hint.empty()) {
        msg += "; valid sections:";
        for (const auto& s : section_names()) msg += " " + s;
      }
      throw RecipeError(msg + hint);
    }
    if (key == "datasets") {
      if (v.is_array()) {
        for (const auto& item : v.items())
          if (!item.is_table())
            throw RecipeError("each entry of 'datasets' must be a table, found " +
                              std::string(item.kind_name()) + " " + item.text() + " (" +
                              item.origin() + ")");
      } else if (!v.is_table()) {
        throw RecipeError("section 'datasets' must be a table or an array of tables, found " +
                          std::string(v.kind_name()) + " " + v.text() + " (" + v.origin() + ")");
      }
    } else if (!v.is_table()) {
      throw RecipeError("section '" + key + "' must be a table, found " + v.kind_name() + " " +
                        v.text() + " (" + v.origin() + ")");
    }
  }
}

std::string plugin_type(const Value& root, std::string_view section) {
  if (const Value* s = root.find(section)) {
    if (const Value* t = s->find("type"); t && t->kind() == Value::Kind::String)
      return t->as_string();
  }
  // No type given: the host's default plugin for the section (kohya's AdamW, constant, ddpm),
  // so plugin keys (e.g. --optimizer_args without --optimizer_type) resolve against its schema.
  for (const auto& spec : host_schema(section))
    if (spec.key == "type" && spec.default_value) {
      const Value v = parse_value_text(*spec.default_value, "default");
      if (v.kind() == Value::Kind::String) return v.as_string();
    }
  return "";
}

}  // namespace sumi::recipe
