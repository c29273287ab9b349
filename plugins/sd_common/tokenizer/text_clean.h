// The clean-up the reference applies to each piece of text before pre-tokenising:
// whitespace_clean(ftfy.fix_text(text)).lower(). ftfy is reproduced for everything except its
// mojibake repair (see docs/tokenizer.md). Internal to the tokenizer.
#pragma once

#include <string>
#include <string_view>

namespace sumi::sd {

// ftfy.fix_text with its default settings, without the mojibake (wrong-codec) repair.
std::u32string fix_text(std::u32string_view text);

// whitespace_clean(fix_text(text)).lower(): runs of whitespace -> one space, trimmed, lower-cased.
std::u32string clean_text(std::u32string_view text);

}  // namespace sumi::sd
