// The whole recipe validated, and its plan: canonical, sorted `section.key = value` lines
// that say exactly what a run will use. Two inputs that mean the same thing (a TOML and a
// YAML recipe, a recipe and a kohya config file) give the same plan.
#pragma once

#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "sumi/recipe/schema.h"
#include "sumi/recipe/value.h"

namespace sumi::recipe {

// Plugin parameter schemas by section name ("optimizer" -> the adamw plugin's specs). The
// host fills it from the descriptors of the plugins named by each section's `type`.
using PluginSchemas = std::map<std::string, std::vector<ParamSpec>, std::less<>>;

struct ResolvedRecipe {
  std::map<std::string, ResolvedSection, std::less<>> sections;  // all but datasets
  Value datasets;  // array of tables (a lone table becomes one entry); not validated yet

  // Throws RecipeError when the section is not part of the recipe.
  const ResolvedSection& section(std::string_view name) const;
};

// Validate every section: each plugin section and train/sample/output through
// resolve_section (a section the recipe leaves out resolves from nothing, so its required
// keys are reported), datasets for shape only. Kohya flags that reach datasets are
// reported as not supported yet. All problems are reported together in one RecipeError.
ResolvedRecipe resolve_recipe(const Value& root, const PluginSchemas& plugin_specs);

// Canonical plan of a raw tree: every leaf as `section.key = value` (nested tables dotted,
// arrays inline), sorted, one per line.
std::string dump_plan(const Value& root);
// Canonical plan of a validated recipe (defaults included; unset optional keys left out).
std::string dump_plan(const ResolvedRecipe& recipe);

}  // namespace sumi::recipe
