// Prompt lines and files as sd-scripts reads them (gen_img --from_file, train_util sample
// prompts in .txt, .toml and .json), and the errors for what the reference would skip.
#include <doctest/doctest.h>

#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include "sumi/prompt/prompt_file.h"

using namespace sumi::prompt;

namespace {
const std::string kData = std::string(SUMI_SOURCE_DIR) + "/tests/prompt/data/";
using Seeds = std::vector<std::uint64_t>;
}  // namespace

// What the host sets once it has scanned the plugins: the bundled noise schedulers' names.
const bool kSamplersSet = [] {
  sumi::prompt::set_sampler_names({"ddim", "ddpm", "pndm", "lms", "k_lms", "euler", "k_euler", "euler_a", "k_euler_a",
                                   "dpmsolver", "dpmsolver++", "dpmsingle", "heun", "dpm_2", "k_dpm_2", "dpm_2_a",
                                   "k_dpm_2_a"});
  return true;
}();

TEST_CASE("prompt line: text up to the first ' --', then options") {
  PromptSpec p = parse_prompt_line(
      "  masterpiece, (cat:1.2) --n lowres, blurry --w 768 --h 512 --d 42 --l 7.5 --s 28 --ss euler_a  ");
  CHECK(p.prompt == "masterpiece, (cat:1.2)");
  CHECK(p.negative_prompt == "lowres, blurry");
  CHECK(p.width == 768);
  CHECK(p.height == 512);
  CHECK(p.seeds == Seeds{42});
  CHECK(p.scale == 7.5);
  CHECK(p.steps == 28);
  CHECK(p.sampler == "euler_a");
  CHECK_FALSE(p.network_multipliers.has_value());
  CHECK_FALSE(p.negative_scale.has_value());

  PromptSpec q = parse_prompt_line("a --AM 1,0.5,-0.2 --D 1,2 --Nl 3 --t .75 --ow 1024 --oh 2048 "
                                   "--nw 64 --nh 128 --ct 8 --cl 16 --cn c.png --f out.png");
  CHECK(q.prompt == "a");
  REQUIRE(q.network_multipliers.has_value());
  CHECK(*q.network_multipliers == std::vector<double>{1.0, 0.5, -0.2});
  CHECK(q.seeds == Seeds{1, 2});
  CHECK(q.negative_scale == 3.0);
  CHECK(q.strength == 0.75);
  CHECK(q.original_width == 1024);
  CHECK(q.original_height == 2048);
  CHECK(q.original_width_negative == 64);
  CHECK(q.original_height_negative == 128);
  CHECK(q.crop_top == 8);
  CHECK(q.crop_left == 16);
  CHECK(q.controlnet_image == "c.png");
  CHECK(q.output_name == "out.png");

  // No options; "--" not preceded by a space is prompt text; steps clamp to 1..1000.
  CHECK(parse_prompt_line("a cat--w 5").prompt == "a cat--w 5");
  CHECK(parse_prompt_line("x --s 0").steps == 1);
  CHECK(parse_prompt_line("x --s 99999").steps == 1000);
  CHECK(parse_prompt_line("x --d 18446744073709551615").seeds == Seeds{18446744073709551615ULL});
}

TEST_CASE("prompt line: bad options are errors naming the origin and the option") {
  auto fails = [](const std::string& line, const std::string& needle) {
    CAPTURE(line);
    CHECK_THROWS_WITH_AS(parse_prompt_line(line, "p.txt:7"), doctest::Contains(needle.c_str()), std::invalid_argument);
  };
  fails("a --w 512px", "p.txt:7: option '--w': expected a width");
  fails("a --w", "option '--w': needs a value");
  fails("a --l 7.5.1", "option '--l': expected a CFG scale");
  fails("a --d 1,,2", "option '--d'");
  fails("a --d 18446744073709551616", "option '--d'");
  fails("a --am 1,x", "option '--am'");
  fails("a --sss euler", "unknown option; did you mean '--ss'");
  fails("a --neg ugly", "option '--neg': unknown option");
  fails("a --ss Euler_A", "unknown sampler 'Euler_A'; did you mean 'euler_a'?");
  fails("a --dsd1 3", "Deep Shrink");
  fails("a --glt 650", "Gradual Latent");
  fails("a -- --w 5", "empty option");
}

TEST_CASE("prompt file: .txt lines with comments, blank lines and all options") {
  auto prompts = load_prompt_file(kData + "prompts.txt");
  REQUIRE(prompts.size() == 4);
  CHECK(prompts[0].prompt == "masterpiece, 1girl, (red hair:1.2)");
  CHECK(prompts[0].negative_prompt == "lowres, bad anatomy");
  CHECK(prompts[0].width == 768);
  CHECK(prompts[0].height == 512);
  CHECK(prompts[0].seeds == Seeds{42});
  CHECK(prompts[0].scale == 7.5);
  CHECK(prompts[0].steps == 28);
  CHECK(prompts[0].sampler == "euler_a");
  CHECK(prompts[0].origin == kData + "prompts.txt:3");
  // Only a '#' in the very first column starts a comment (sd-scripts checks line[0]).
  CHECK(prompts[1].prompt == "# an indented hash is a prompt, as in the reference");
  CHECK(prompts[2].prompt == "a cat");
  CHECK(prompts[2].width == 640);
  CHECK(prompts[2].height == 448);
  CHECK(prompts[2].seeds == Seeds{1, 2, 3});
  CHECK(*prompts[2].network_multipliers == std::vector<double>{0.5, -1.0, 0.25});
  CHECK(prompts[2].output_name == "cat.png");
  CHECK(prompts[3].prompt == "landscape");
  CHECK(prompts[3].origin == kData + "prompts.txt:7");  // CRLF counted as one line end
  CHECK(prompts[3].steps == 1000);
  CHECK(prompts[3].negative_scale == 4.0);
  CHECK(prompts[3].strength == 0.6);
  CHECK(prompts[3].original_width == 1024);
  CHECK(prompts[3].crop_left == 16);
  CHECK(prompts[3].controlnet_image == "hint.png");
}

TEST_CASE("prompt file: a bad line names the file, the line number and the option") {
  CHECK_THROWS_WITH_AS(load_prompt_file(kData + "bad_line.txt"),
                       doctest::Contains("bad_line.txt:4: option '--h': expected a height"),
                       std::invalid_argument);
  CHECK_THROWS_WITH_AS(parse_prompt_lines("ok\n\nok --w 1\nbad --q 1\n", "mem.txt"),
                       doctest::Contains("mem.txt:4: option '--q': unknown option"), std::invalid_argument);
  CHECK_THROWS_WITH_AS(load_prompt_file(kData + "no-such-file.txt"), doctest::Contains("cannot open"),
                       std::runtime_error);
}

TEST_CASE("prompt file: .toml with [prompt] defaults and [[prompt.subset]] entries") {
  auto prompts = load_prompt_file(kData + "prompts.toml");
  REQUIRE(prompts.size() == 2);
  CHECK(prompts[0].prompt == "1girl, (smile:1.1)");
  CHECK(prompts[0].negative_prompt == "lowres, worst quality");
  CHECK(prompts[0].width == 768);
  CHECK(prompts[0].height == 512);
  CHECK(prompts[0].scale == 7.0);  // an integer scale is fine
  CHECK(prompts[0].steps == 28);
  CHECK(prompts[0].seeds == Seeds{1234});
  CHECK_FALSE(prompts[0].sampler.has_value());
  CHECK(prompts[1].prompt == "a castle on a hill");
  CHECK(prompts[1].sampler == "k_euler");
  CHECK(prompts[1].width == 1024);  // the subset's own value wins over [prompt]
  CHECK(prompts[1].scale == 5.5);
  CHECK(prompts[1].seeds.empty());
  CAPTURE(prompts[1].origin);
  CHECK(prompts[1].origin.find("prompts.toml:13 (subset 2)") != std::string::npos);

  CHECK_THROWS_WITH_AS(parse_prompt_toml("[prompt]\nwidth = 512\n", "x.toml"),
                       doctest::Contains("[[prompt.subset]]"), std::invalid_argument);
  CHECK_THROWS_WITH_AS(parse_prompt_toml("[prompt]\n[[prompt.subset]]\nprompt = \"a\"\nwidht = 5\n", "x.toml"),
                       doctest::Contains("x.toml:4 (subset 1): unknown key 'widht'; did you mean 'width'?"),
                       std::invalid_argument);
  CHECK_THROWS_WITH_AS(parse_prompt_toml("[prompt]\n[[prompt.subset]]\nwidth = \"512\"\n", "x.toml"),
                       doctest::Contains("key 'width': expected a width in pixels (an integer), found string"),
                       std::invalid_argument);
  CHECK_THROWS_WITH_AS(parse_prompt_toml("[prompt\n", "x.toml"), doctest::Contains("x.toml:1: invalid TOML"),
                       std::invalid_argument);
}

TEST_CASE("prompt file: .json lists of lines and objects") {
  auto prompts = load_prompt_file(kData + "prompts.json");
  REQUIRE(prompts.size() == 2);
  CHECK(prompts[0].prompt == "a dog");
  CHECK(prompts[0].negative_prompt == "blurry");
  CHECK(prompts[0].width == 640);
  CHECK(prompts[0].seeds == Seeds{7});
  CHECK(prompts[1].prompt == "a bird");
  CHECK(prompts[1].negative_prompt == "ugly");
  CHECK(prompts[1].width == 576);
  CHECK(prompts[1].height == 832);
  CHECK(prompts[1].steps == 20);
  CHECK(prompts[1].scale == 6.5);
  CHECK(prompts[1].seeds == Seeds{99});
  CHECK(prompts[1].sampler == "dpmsolver++");
  CHECK(prompts[1].controlnet_image == "edges.png");

  // null is Python's None: not given.
  auto nulls = parse_prompt_json("[{\"prompt\": \"a\", \"negative_prompt\": null, \"seed\": null}]", "x.json");
  REQUIRE(nulls.size() == 1);
  CHECK_FALSE(nulls[0].negative_prompt.has_value());
  CHECK(nulls[0].seeds.empty());

  CHECK_THROWS_WITH_AS(parse_prompt_json("{\"prompt\": \"a\"}", "x.json"), doctest::Contains("expected a JSON list"),
                       std::invalid_argument);
  CHECK_THROWS_WITH_AS(parse_prompt_json("[\"a\", \"b --w x\"]", "x.json"),
                       doctest::Contains("x.json entry 2: option '--w'"), std::invalid_argument);
  CHECK_THROWS_WITH_AS(parse_prompt_json("[{\"prompt\": \"a\", \"seed\": -1}]", "x.json"),
                       doctest::Contains("x.json entry 1: key 'seed': expected a seed from 0 to"),
                       std::invalid_argument);
  CHECK_THROWS_WITH_AS(parse_prompt_json("[{\"prompt\": \"a\", \"sample_sampler\": \"unipc\"}]", "x.json"),
                       doctest::Contains("unknown sampler 'unipc'"), std::invalid_argument);
  CHECK_THROWS_WITH_AS(parse_prompt_json("[{\"width\": 99999999999}]", "x.json"),
                       doctest::Contains("key 'width': expected a width in pixels from 1 to 1000000000"),
                       std::invalid_argument);
  CHECK_THROWS_WITH_AS(parse_prompt_json("[1]", "x.json"), doctest::Contains("expected a string or an object"),
                       std::invalid_argument);
  CHECK_THROWS_WITH_AS(parse_prompt_json("[", "x.json"), doctest::Contains("invalid JSON"), std::invalid_argument);
}

TEST_CASE("fuzz regression: a JSON number too large for a double is a bad prompt file, named") {
  // Found by tests/fuzz (fuzz_prompt): nlohmann's out_of_range escaped instead of the
  // documented std::invalid_argument naming the file.
  const std::string file = std::string(SUMI_SOURCE_DIR) + "/tests/fuzz/regressions/prompt/json-number-overflow.json";
  CHECK_THROWS_WITH_AS(load_prompt_file(file), doctest::Contains("json-number-overflow.json: invalid JSON"),
                       std::invalid_argument);
  CHECK_THROWS_AS(parse_prompt_json("[1E400]", "p.json"), std::invalid_argument);
}
