// Prompt lists as sd-scripts reads them: gen_img's --from_file / --prompt lines ("a cat --n
// blurry --w 768 --d 1,2"), and the training-sample files of train_util (.txt lines, .toml with
// [prompt] defaults and [[prompt.subset]] entries, .json lists of strings or objects). Unlike
// the reference, which skips what it cannot read, a bad option or key is an error naming the
// file, the line (or entry) and the option. Options and keys: docs/prompts.md.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace sumi::prompt {

// One image request. Unset fields take the caller's defaults (sd-scripts' samples: 512x512,
// 30 steps, scale 7.5, a random seed, --sample_sampler).
struct PromptSpec {
  std::string prompt;
  std::optional<std::string> negative_prompt;           // --n        negative_prompt
  std::optional<int> width;                             // --w        width
  std::optional<int> height;                            // --h        height
  std::vector<std::uint64_t> seeds;                     // --d 1,2,3  seed (empty: random)
  std::optional<double> scale;                          // --l        scale (CFG)
  std::optional<double> negative_scale;                 // --nl
  std::optional<int> steps;                             // --s        sample_steps
  std::optional<std::string> sampler;                   // --ss       sample_sampler
  std::optional<std::vector<double>> network_multipliers;  // --am 0.5,1
  std::optional<double> strength;                       // --t (img2img)
  std::optional<int> original_width, original_height;   // --ow --oh  (SDXL conditioning)
  std::optional<int> original_width_negative, original_height_negative;  // --nw --nh
  std::optional<int> crop_top, crop_left;               // --ct --cl
  std::optional<std::string> controlnet_image;          // --cn       controlnet_image
  std::optional<std::string> output_name;               // --f

  // Where it came from, for messages: "prompts.txt:3" or "prompts.json entry 2".
  std::string origin;
};

// The sampler names a prompt may pick (--ss, sample_sampler): the noise-scheduler components the
// host found (set_sampler_names, called once the plugins are scanned; a third party's sampler
// is as good as the bundled ones). Before it is called every name is accepted here and refused
// later when no plugin has it.
void set_sampler_names(std::vector<std::string> names);
const std::vector<std::string>& sampler_names();
// Throws std::invalid_argument("<what>: unknown sampler 'x'; did you mean 'y'?") when names are
// set and `name` is not one of them.
void check_sampler_name(const std::string& name, const std::string& what);

// Parses one prompt line: the text up to the first " --", then options. `origin` prefixes
// error messages ("prompts.txt:3"). Throws std::invalid_argument on an unknown or malformed
// option.
PromptSpec parse_prompt_line(std::string_view line, const std::string& origin = "prompt");

// Reads a prompt file by its extension: .toml and .json as train_util reads them, anything
// else as lines (blank lines and lines whose first character is '#' skipped). Throws
// std::runtime_error when it cannot be read, std::invalid_argument on bad content; both name
// the file and the line or entry.
std::vector<PromptSpec> load_prompt_file(const std::string& path);

// The same from text already in memory; `name` is used for messages and, for its extension,
// to pick the format.
std::vector<PromptSpec> parse_prompt_lines(std::string_view text, const std::string& name);
std::vector<PromptSpec> parse_prompt_toml(std::string_view text, const std::string& name);
std::vector<PromptSpec> parse_prompt_json(std::string_view text, const std::string& name);

}  // namespace sumi::prompt
