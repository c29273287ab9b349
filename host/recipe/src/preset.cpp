#include "sumi/recipe/preset.h"

#include <algorithm>

#include "sumi/recipe/suggest.h"
#include "sumi/recipe/value.h"

namespace fs = std::filesystem;

namespace sumi::recipe {

namespace {
const char* const kExtensions[] = {".toml", ".yaml", ".yml"};
}

std::vector<std::string> list_presets(const std::vector<fs::path>& search_dirs) {
  std::vector<std::string> names;
  for (const auto& dir : search_dirs) {
    std::error_code ec;
    if (!fs::is_directory(dir, ec)) continue;
    for (const auto& entry : fs::directory_iterator(dir, ec)) {
      if (!entry.is_regular_file(ec)) continue;
      std::string ext = entry.path().extension().string();
      for (const char* e : kExtensions)
        if (ext == e) names.push_back(entry.path().stem().string());
    }
  }
  std::sort(names.begin(), names.end());
  names.erase(std::unique(names.begin(), names.end()), names.end());
  return names;
}

fs::path find_preset(std::string_view name, const std::vector<fs::path>& search_dirs) {
  if (name.empty() || name.find('/') != std::string_view::npos ||
      name.find('\\') != std::string_view::npos)
    throw RecipeError("'" + std::string(name) + "' is not a preset name (a preset is a bare name "
                      "such as demo-fit; pass a recipe file by its path instead)");
  for (const auto& dir : search_dirs) {
    for (const char* ext : kExtensions) {
      fs::path p = dir / (std::string(name) + ext);
      std::error_code ec;
      if (fs::is_regular_file(p, ec)) return p;
    }
  }
  std::vector<std::string> known = list_presets(search_dirs);
  std::string msg = "no preset named '" + std::string(name) + "'" + did_you_mean(name, known);
  msg += known.empty() ? " (no presets found" : " (available:";
  for (const auto& k : known) msg += " " + k;
  msg += "; searched";
  for (const auto& d : search_dirs) msg += " " + d.string();
  if (search_dirs.empty()) msg += " nothing";
  throw RecipeError(msg + ")");
}

}  // namespace sumi::recipe
