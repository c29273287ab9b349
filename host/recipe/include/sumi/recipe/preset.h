// Named recipes ("presets"): `sumi train demo-fit` finds demo-fit.toml (or .yaml / .yml)
// in the preset folders, so common setups need no path.
#pragma once

#include <filesystem>
#include <string>
#include <string_view>
#include <vector>

namespace sumi::recipe {

// The file of preset `name` in the first folder of `search_dirs` that has one, trying
// .toml, .yaml, .yml in that order. Throws RecipeError listing the presets found (and the
// nearest name) when there is none.
std::filesystem::path find_preset(std::string_view name,
                                  const std::vector<std::filesystem::path>& search_dirs);

// Every preset name found in `search_dirs`, sorted, without duplicates.
std::vector<std::string> list_presets(const std::vector<std::filesystem::path>& search_dirs);

}  // namespace sumi::recipe
