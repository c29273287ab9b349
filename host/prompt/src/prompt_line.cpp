// One prompt line: gen_img's and train_util's line_to_prompt_dict options, read strictly. The
// reference matches each option with a prefix regex and skips what does not match; here the
// whole value must be valid and anything unknown is an error.
#include <algorithm>
#include <stdexcept>
#include <string>

#include "sumi/prompt/prompt_file.h"
#include "values.h"

namespace sumi::prompt {

namespace {

std::vector<std::string>& sampler_list() {
  static std::vector<std::string> names;
  return names;
}

}  // namespace

void set_sampler_names(std::vector<std::string> names) { sampler_list() = std::move(names); }

const std::vector<std::string>& sampler_names() { return sampler_list(); }

void check_sampler_name(const std::string& name, const std::string& what) {
  const auto& names = sampler_list();
  if (names.empty() || std::find(names.begin(), names.end(), name) != names.end()) return;
  throw std::invalid_argument(what + "unknown sampler '" + name + "'" + detail::did_you_mean(name, names));
}

namespace {

using detail::did_you_mean;
using detail::parse_decimal;
using detail::parse_uint;
using detail::trim;

const std::vector<std::string>& option_names() {
  static const std::vector<std::string> names{"n",  "w",  "h",  "d",  "l",  "nl", "s",  "ss", "am",
                                              "t",  "ow", "oh", "nw", "nh", "ct", "cl", "cn", "f"};
  return names;
}

// gen_img options sumi does not implement: named so the error says so instead of "unknown".
const char* unsupported_feature(const std::string& name) {
  if (name == "c") return "CLIP-guided prompts (--c)";
  if (name == "dsd1" || name == "dst1" || name == "dsd2" || name == "dst2" || name == "dsr")
    return "Deep Shrink (--dsd1 --dst1 --dsd2 --dst2 --dsr)";
  if (name == "glt" || name == "glr" || name == "gle" || name == "gls" || name == "glsn" || name == "glus")
    return "Gradual Latent (--glt --glr --gle --gls --glsn --glus)";
  return nullptr;
}

struct OptionError {
  const std::string& origin;
  const std::string& option;  // as written, without "--"
  [[noreturn]] void fail(const std::string& what) const {
    throw std::invalid_argument(origin + ": option '--" + option + "': " + what);
  }
};

int read_int(const OptionError& err, std::string_view value, const char* what) {
  auto v = parse_uint(value);
  if (!v || *v > 1000000000ULL) err.fail(std::string("expected ") + what + " (a whole number), got '" + std::string(value) + "'");
  return static_cast<int>(*v);
}

double read_decimal(const OptionError& err, std::string_view value, const char* what) {
  auto v = parse_decimal(value);
  if (!v) err.fail(std::string("expected ") + what + " (a number like 7.5), got '" + std::string(value) + "'");
  return *v;
}

}  // namespace

PromptSpec parse_prompt_line(std::string_view raw, const std::string& origin) {
  const std::string_view line = trim(raw);
  PromptSpec spec;
  spec.origin = origin;

  size_t cut = line.find(" --");
  spec.prompt = std::string(line.substr(0, cut));
  while (cut != std::string_view::npos) {
    size_t start = cut + 3;
    cut = line.find(" --", start);
    const std::string_view parg = line.substr(start, cut == std::string_view::npos ? cut : cut - start);

    size_t space = parg.find(' ');
    const std::string written(parg.substr(0, space));
    const std::string name = detail::lower(written);
    const std::string_view raw_value = space == std::string_view::npos ? std::string_view() : parg.substr(space + 1);
    const std::string_view value = trim(raw_value);
    const OptionError err{origin, written};

    if (name.empty())
      throw std::invalid_argument(origin + ": empty option ' --' in \"" + std::string(line) +
                                  "\"; options are written ' --name value'");
    if (const char* feature = unsupported_feature(name))
      err.fail(std::string(feature) + " is a gen_img feature sumi does not support; remove the option");
    bool known = false;
    for (const auto& n : option_names()) known = known || n == name;
    if (!known)
      err.fail("unknown option" + did_you_mean(name, option_names(), "--") +
               " (known: --n --w --h --d --l --nl --s --ss --am --t --ow --oh --nw --nh --ct --cl --cn --f)");
    if (value.empty()) err.fail("needs a value, e.g. '--" + written + (name == "n" ? " blurry'" : " 512'"));

    if (name == "n") {
      spec.negative_prompt = std::string(raw_value);  // kept as written, like the reference
    } else if (name == "w") {
      spec.width = read_int(err, value, "a width in pixels");
    } else if (name == "h") {
      spec.height = read_int(err, value, "a height in pixels");
    } else if (name == "ow") {
      spec.original_width = read_int(err, value, "an original width");
    } else if (name == "oh") {
      spec.original_height = read_int(err, value, "an original height");
    } else if (name == "nw") {
      spec.original_width_negative = read_int(err, value, "a negative original width");
    } else if (name == "nh") {
      spec.original_height_negative = read_int(err, value, "a negative original height");
    } else if (name == "ct") {
      spec.crop_top = read_int(err, value, "a crop top");
    } else if (name == "cl") {
      spec.crop_left = read_int(err, value, "a crop left");
    } else if (name == "s") {
      // The reference clamps the step count to 1..1000.
      auto v = parse_uint(value);
      if (!v) err.fail("expected a step count (a whole number), got '" + std::string(value) + "'");
      spec.steps = static_cast<int>(std::min<std::uint64_t>(1000, std::max<std::uint64_t>(1, *v)));
    } else if (name == "d") {
      spec.seeds.clear();
      size_t pos = 0;
      while (true) {
        size_t comma = value.find(',', pos);
        std::string_view item = value.substr(pos, comma == std::string_view::npos ? comma : comma - pos);
        auto v = parse_uint(item);
        if (!v)
          err.fail("expected a seed or a comma-separated list of seeds (whole numbers up to 2^64-1), got '" +
                   std::string(value) + "'");
        spec.seeds.push_back(*v);
        if (comma == std::string_view::npos) break;
        pos = comma + 1;
      }
    } else if (name == "l") {
      spec.scale = read_decimal(err, value, "a CFG scale");
    } else if (name == "nl") {
      spec.negative_scale = read_decimal(err, value, "a negative scale");
    } else if (name == "t") {
      spec.strength = read_decimal(err, value, "an img2img strength");
    } else if (name == "am") {
      std::vector<double> muls;
      size_t pos = 0;
      while (true) {
        size_t comma = value.find(',', pos);
        std::string_view item = value.substr(pos, comma == std::string_view::npos ? comma : comma - pos);
        auto v = parse_decimal(item, true);
        if (!v) err.fail("expected network multipliers like 0.8 or 1,0.5,-0.2, got '" + std::string(value) + "'");
        muls.push_back(*v);
        if (comma == std::string_view::npos) break;
        pos = comma + 1;
      }
      spec.network_multipliers = std::move(muls);
    } else if (name == "ss") {
      const std::string sampler(value);
      try {
        check_sampler_name(sampler, "");
      } catch (const std::invalid_argument& e) {
        err.fail(e.what());
      }
      spec.sampler = sampler;
    } else if (name == "cn") {
      spec.controlnet_image = std::string(value);
    } else if (name == "f") {
      spec.output_name = std::string(value);
    }
  }
  return spec;
}

}  // namespace sumi::prompt
