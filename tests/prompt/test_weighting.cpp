// parse_weights against sd-scripts' parse_prompt_attention (gen_img's, with BREAK). Expected
// segments and weights were produced by the reference function itself (Python 3.11); weights
// are written as hex floats because the parser must reproduce the reference's doubles bit for
// bit (e.g. 1.1 * 1.1 * 1.3 = 1.5730000000000004, not 1.573).
#include <doctest/doctest.h>

#include <cstdio>
#include <limits>
#include <stdexcept>
#include <string>
#include <vector>

#include "sd_common/prompt/weighting.h"

using sumi::prompt::parse_weights;
using sumi::prompt::ParseOptions;
using sumi::prompt::WeightedText;
using Segments = std::vector<WeightedText>;

namespace {

constexpr double k1 = 1.0;
constexpr double k11 = 0x1.199999999999ap+0;    // 1.1
constexpr double k121 = 0x1.35c28f5c28f5dp+0;   // 1.1 * 1.1 = 1.2100000000000002
constexpr double k1_11 = 0x1.d1745d1745d17p-1;  // 1 / 1.1
constexpr double k12 = 0x1.3333333333333p+0;    // 1.2

struct Case {
  const char* prompt;
  Segments want;
};

std::string show(const Segments& s) {
  std::string out = "[";
  char buf[64];
  for (const auto& seg : s) {
    std::snprintf(buf, sizeof buf, "%a", seg.weight);
    out += "(\"" + seg.text + "\", " + buf + ") ";
  }
  return out + "]";
}

}  // namespace

TEST_CASE("weighting: the reference's cases") {
  const std::vector<Case> cases = {
      // The reference's own doctests.
      {"normal text", {{"normal text", k1}}},
      {"an (important) word", {{"an ", k1}, {"important", k11}, {" word", k1}}},
      {"(unbalanced", {{"unbalanced", k11}}},
      {"\\(literal\\]", {{"(literal]", k1}}},
      {"(unnecessary)(parens)", {{"unnecessaryparens", k11}}},
      {"a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).",
       {{"a ", k1},
        {"house", 0x1.92b020c49ba60p+0},  // 1.5730000000000004
        {" ", k11},
        {"on", k1},
        {" a ", k11},
        {"hill", 0x1.199999999999ap-1},  // 0.55
        {", sun, ", k11},
        {"sky", 0x1.76cf41f212d7ap+0},  // 1.4641000000000006
        {".", k11}}},
      // Empty input and nesting.
      {"", {{"", k1}}},
      {"((a))", {{"a", k121}}},
      {"[[a]]", {{"a", 0x1.a723f789854a0p-1}}},  // 0.8264462809917354
      {"(a:1.5)", {{"a", 1.5}}},
      {"(a (b:2) c)", {{"a ", k11}, {"b", 0x1.199999999999ap+1}, {" c", k11}}},
      {"a (b [c] d) e", {{"a ", k1}, {"b ", k11}, {"c", k1}, {" d", k11}, {" e", k1}}},
      {"((a:1.1)b:1.2)", {{"a", 0x1.51eb851eb851fp+0}, {"b", k12}}},  // 1.32
      {"(a:1.1) (b:1.1)", {{"a", k11}, {" ", k1}, {"b", k11}}},
      {"(masterpiece:1.2), best quality, [[ugly]], (blurry:0.8)",
       {{"masterpiece", k12},
        {", best quality, ", k1},
        {"ugly", 0x1.a723f789854a0p-1},
        {", ", k1},
        {"blurry", 0x1.999999999999ap-1}}},
      // Round and square stacks are separate: mixed nesting multiplies by 1.1 and 1/1.1.
      {"([a])", {{"a", k1}}},
      {"([a)]", {{"a", k1}}},
      // Weight syntax: signs, leading/trailing dot, zero, full-width digits (Python's \d).
      {"(a:+1.5)", {{"a", 1.5}}},
      {"(a:-1)", {{"a", -1.0}}},
      {"(a:.5)", {{"a", 0.5}}},
      {"(a:5.)", {{"a", 5.0}}},
      {"(a:0)", {{"a", 0.0}}},
      {"(cat:\xEF\xBC\x91.\xEF\xBC\x95)", {{"cat", 1.5}}},  // (cat:１.５)
      // A weight on square brackets or without "(" is text; so is a colon without a number.
      {"[a:1.5]", {{"a:1.5", k1_11}}},
      {":1.2)", {{":1.2)", k1}}},
      {"a:b", {{"a:b", k1}}},
      {"(a:b)", {{"a:b", k11}}},
      // Escapes: \( \) \[ \] \\ are literal, a lone backslash disappears.
      {"a\\\\b", {{"a\\b", k1}}},
      {"a\\b", {{"ab", k1}}},
      {"\\", {{"", k1}}},
      {"\\((a)\\)", {{"(", k1}, {"a", k11}, {")", k1}}},
      {"(a\\:1.2)", {{"a", k12}}},
      // Unbalanced: unopened closers are text, unclosed openers apply to the rest.
      {"a)b]c", {{"a)b]c", k1}}},
      {"((((a", {{"a", 0x1.76cf41f212d7ap+0}}},
      {"[[[a", {{"a", 0x1.80ac5565befd7p-1}}},  // 0.7513148009015777
      {"(a]", {{"a]", k11}}},
      {"[a)", {{"a)", k1_11}}},
      {"a((b)", {{"a", k1}, {"b", k121}}},
      {"a ( b ) c", {{"a ", k1}, {" b ", k11}, {" c", k1}}},
      {"(  )", {{"  ", k11}}},
      // BREAK stands alone, keeps its weight, and is found even inside a word (as the reference).
      {"a BREAK b", {{"a ", k1}, {"BREAK", k1}, {" b", k1}}},
      {"(a BREAK b)", {{"a ", k11}, {"BREAK", k11}, {" b", k11}}},
      {"x BREAK BREAK y", {{"x ", k1}, {"BREAK", k1}, {" ", k1}, {"BREAK", k1}, {" y", k1}}},
      {"BREAKFAST", {{"", k1}, {"BREAK", k1}, {"FAST", k1}}},
      {"a\\BREAK b", {{"a\\", k1}, {"BREAK", k1}, {" b", k1}}},
  };
  CHECK(cases.size() >= 20);
  for (const auto& c : cases) {
    CAPTURE(c.prompt);
    auto got = parse_weights(c.prompt);
    CAPTURE(show(got));
    CHECK(got == c.want);
  }
}

TEST_CASE("weighting: BREAK is plain text for the training-sample pipeline") {
  ParseOptions lpw;
  lpw.break_keyword = false;
  CHECK(parse_weights("a BREAK b", lpw) == Segments{{"a BREAK b", k1}});
  CHECK(parse_weights("(a BREAK b)", lpw) == Segments{{"a BREAK b", k11}});
  CHECK(sumi::prompt::is_break({"BREAK", 2.0}));
  CHECK_FALSE(sumi::prompt::is_break({"BREAKS", 1.0}));
}

TEST_CASE("weighting: a weight that is not a number is an error, as in the reference") {
  CHECK_THROWS_WITH_AS(parse_weights("(a:1.2.3)"), doctest::Contains("'1.2.3'"), std::invalid_argument);
  CHECK_THROWS_AS(parse_weights("(x:.)"), std::invalid_argument);
  CHECK_THROWS_AS(parse_weights("((x:..))"), std::invalid_argument);
  // Without an open "(" the same text is not a weight at all.
  CHECK(parse_weights("x:1.2.3)") == Segments{{"x:1.2.3)", k1}});
}

TEST_CASE("weighting: huge and tiny weights saturate like Python's float()") {
  std::string huge = "(a:1" + std::string(400, '0') + ")";
  auto got = parse_weights(huge);
  REQUIRE(got.size() == 1);
  CHECK(got[0].weight == std::numeric_limits<double>::infinity());
  std::string tiny = "(a:0." + std::string(400, '0') + "1)";
  CHECK(parse_weights(tiny)[0].weight == 0.0);
}
