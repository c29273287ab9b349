// The top-level sections of a recipe. Plugin sections name a component with `type`; the
// others are owned by the host.
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "sumi/recipe/value.h"

namespace sumi::recipe {

// model, network, optimizer, lr_scheduler, noise_scheduler, datasets, train, sample, output.
const std::vector<std::string>& section_names();
// model, network, optimizer, lr_scheduler, noise_scheduler.
const std::vector<std::string>& plugin_section_names();
bool is_section(std::string_view name);
bool is_plugin_section(std::string_view name);

// Throws RecipeError for an unknown top-level section (naming the nearest valid one) or a
// section of the wrong shape (every section is a table; `datasets` is a table or an array
// of tables).
void check_sections(const Value& root);

// The plugin named by `[section] type`, if the recipe sets one (a string). lr_scheduler
// falls back to its host default "constant".
std::string plugin_type(const Value& root, std::string_view section);

}  // namespace sumi::recipe
