// Fuzz harness: recipe loading (host/recipe): the input is read as a TOML recipe and as a
// YAML recipe (parse_*_text + check_sections, as load_recipe does), as a kohya
// `--config_file` TOML, as kohya command-line flags when it starts with "--" (one argument
// per line), and each line as a `--set section.key=value` argument. Only RecipeError may
// escape a parser.
#include <cstdint>
#include <string>
#include <vector>

#include "fuzz_support.h"
#include "sumi/recipe/kohya.h"
#include "sumi/recipe/load.h"
#include "sumi/recipe/sections.h"

namespace rc = sumi::recipe;

namespace {

std::uint64_t inspect(const rc::Value& root) {
  std::uint64_t sum = root.text().size();
  if (root.is_table())
    for (const auto& section : rc::plugin_section_names()) sum += rc::plugin_type(root, section).size();
  return sum;
}

void as_recipe(rc::Value (*parse)(std::string_view, const std::string&), std::string_view text,
               const char* name, std::uint64_t& sum) {
  try {
    const rc::Value root = parse(text, name);
    sum += inspect(root);
    rc::check_sections(root);
    sum += inspect(root);
  } catch (const rc::RecipeError&) {
  }
}

std::vector<std::string> lines(std::string_view text) {
  std::vector<std::string> out;
  std::size_t pos = 0;
  while (pos <= text.size() && out.size() < 64) {
    const std::size_t nl = text.find('\n', pos);
    out.emplace_back(text.substr(pos, nl == std::string_view::npos ? std::string_view::npos : nl - pos));
    if (nl == std::string_view::npos) break;
    pos = nl + 1;
  }
  return out;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string_view text = sumi::fuzz::text(data, size);
  std::uint64_t sum = 0;
  as_recipe(rc::parse_toml_text, text, "fuzz.toml", sum);
  as_recipe(rc::parse_yaml_text, text, "fuzz.yaml", sum);

  {
    sumi::fuzz::MemFile file(data, size, "fuzz-kohya.toml");
    rc::Value root = rc::Value::table("fuzz recipe");
    try {
      rc::apply_kohya_config_file(root, file.path());
      sum += inspect(root);
    } catch (const rc::RecipeError&) {
    }
  }

  const std::vector<std::string> args = lines(text);
  if (text.substr(0, 2) == "--") {
    rc::Value root = rc::Value::table("fuzz recipe");
    try {
      rc::apply_kohya_args(root, args);
      sum += inspect(root);
    } catch (const rc::RecipeError&) {
    }
  }
  rc::Value root = rc::Value::table("fuzz recipe");
  for (const auto& line : args) {
    try {
      sum += rc::parse_value_text(line, "--set").text().size();  // RecipeError: e.g. an int past 64 bits
    } catch (const rc::RecipeError&) {
    }
    try {
      rc::apply_set_argument(root, line, "--set");
    } catch (const rc::RecipeError&) {
    }
  }
  sum += inspect(root);
  sumi::fuzz::use(sum);
  return 0;
}
