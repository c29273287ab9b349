// Prompt emphasis as A1111 and sd-scripts write it: "(word)" x1.1, "[word]" /1.1, "(word:1.3)",
// nesting, backslash escapes, and gen_img's BREAK. The parser reproduces sd-scripts'
// parse_prompt_attention segment for segment and weight for weight (same double arithmetic),
// including how it treats unbalanced brackets. Syntax and quirks: docs/prompts.md.
#pragma once

#include <string>
#include <string_view>
#include <vector>

namespace sumi::prompt {

// A run of prompt text with one weight. Adjacent runs never share a weight, except around a
// BREAK segment, which always stands alone.
struct WeightedText {
  std::string text;
  double weight = 1.0;
  bool operator==(const WeightedText& o) const { return text == o.text && weight == o.weight; }
};

struct ParseOptions {
  // gen_img (sumi generate) splits the prompt at every "BREAK"; the training-sample pipeline
  // of sd-scripts (lpw_stable_diffusion) does not, so "BREAK" is plain text there.
  bool break_keyword = true;
};

// Splits a UTF-8 prompt into weighted runs. Never returns an empty vector (an empty prompt
// gives one empty run of weight 1). Throws std::invalid_argument when a "(text:weight)" weight
// is not a number (e.g. "(cat:1.2.3)"), where the reference raises ValueError.
std::vector<WeightedText> parse_weights(std::string_view prompt, const ParseOptions& options = {});

// True for the BREAK marker segment produced with break_keyword.
bool is_break(const WeightedText& segment);

}  // namespace sumi::prompt
