// `sumi plan`: validates a recipe (with kohya flags applied) against the host's and the named
// plugins' schemas, and prints the canonical plan — every key a run would use.
#include "commands.h"

#include "app.h"

#include <sumi/recipe/sections.h>

#include <iostream>

namespace sumi::app {

int cmd_plan(const std::vector<std::string>& args) {
  CommonOptions o;
  std::string help;
  if (!parse_common(args, o, help)) {
    std::cout << "usage: sumi plan --recipe RECIPE [kohya flags] [--set section.key=value]...\n\n" << help;
    return 0;
  }
  refuse_device(o, "sumi plan");
  auto pm = make_plugin_manager(o);
  const auto root = load_recipe_tree(o);
  const auto schemas = plugin_schemas(root, pm);
  recipe::ResolvedRecipe resolved;
  for (const auto& section : recipe::section_names()) {
    if (section == "datasets") continue;
    if (!root.find(section) && section != "train" && section != "output") continue;
    resolved.sections.emplace(section, resolve(root, section, schemas));
  }
  std::cout << recipe::dump_plan(resolved);
  return 0;
}

}  // namespace sumi::app
