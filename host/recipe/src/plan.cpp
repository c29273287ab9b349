#include "sumi/recipe/plan.h"

#include <algorithm>

#include "sumi/recipe/sections.h"

namespace sumi::recipe {

const ResolvedSection& ResolvedRecipe::section(std::string_view name) const {
  auto it = sections.find(name);
  if (it == sections.end())
    throw RecipeError("the recipe has no resolved section '" + std::string(name) + "'");
  return it->second;
}

namespace {

void check_no_flags(const Value& v, std::vector<std::string>& errors) {
  if (!v.flag().empty()) {
    std::string where_from = v.origin() == v.flag() ? "" : v.origin() + "; ";
    errors.push_back("sumi does not support " + v.flag() + " yet (" + where_from +
                     "describe the dataset in the recipe's [[datasets]] instead)");
    return;
  }
  if (v.is_array())
    for (const auto& item : v.items()) check_no_flags(item, errors);
  else if (v.is_table())
    for (const auto& k : v.keys()) check_no_flags(*v.find(k), errors);
}

void flatten(const Value& v, const std::string& prefix, std::vector<std::string>& lines) {
  if (v.is_table() && v.size() > 0) {
    for (const auto& k : v.keys()) flatten(*v.find(k), prefix + "." + k, lines);
    return;
  }
  lines.push_back(prefix + " = " + v.text());
}

std::string join_sorted(std::vector<std::string> lines) {
  std::sort(lines.begin(), lines.end());
  std::string out;
  for (const auto& l : lines) out += l + "\n";
  return out;
}

}  // namespace

ResolvedRecipe resolve_recipe(const Value& root, const PluginSchemas& plugin_specs) {
  check_sections(root);
  ResolvedRecipe out;
  std::vector<std::string> errors;
  static const std::vector<ParamSpec> none;
  for (const auto& name : section_names()) {
    if (name == "datasets") continue;
    const Value* section = root.find(name);
    auto plugin = plugin_specs.find(name);
    try {
      out.sections.emplace(name, resolve_section(section ? *section : Value(), name,
                                                 host_schema(name),
                                                 plugin == plugin_specs.end() ? none : plugin->second));
    } catch (const RecipeError& e) {
      errors.push_back(e.what());
    }
  }
  if (const Value* d = root.find("datasets")) {
    check_no_flags(*d, errors);
    if (d->is_table()) {
      out.datasets = Value::array(d->origin());
      out.datasets.push_back(*d);
    } else {
      out.datasets = *d;
    }
  } else {
    out.datasets = Value::array("default");
  }
  if (!errors.empty()) {
    std::string all;
    for (const auto& e : errors) all += (all.empty() ? "" : "\n") + e;
    throw RecipeError(all);
  }
  return out;
}

std::string dump_plan(const Value& root) {
  std::vector<std::string> lines;
  if (!root.is_table()) return root.text() + "\n";
  for (const auto& k : root.keys()) flatten(*root.find(k), k, lines);
  return join_sorted(std::move(lines));
}

std::string dump_plan(const ResolvedRecipe& recipe) {
  std::vector<std::string> lines;
  for (const auto& [name, section] : recipe.sections)
    for (const auto& e : section.entries()) lines.push_back(name + "." + e.key + " = " + e.value.text());
  if (recipe.datasets.size() > 0) lines.push_back("datasets = " + recipe.datasets.text());
  return join_sorted(std::move(lines));
}

}  // namespace sumi::recipe
