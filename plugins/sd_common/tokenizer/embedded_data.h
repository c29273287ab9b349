// Access to the CLIP vocab.json and merges.txt that are assembled into sumi_clip_tokenizer
// (see embedded_data.cpp). Internal to the tokenizer.
#pragma once

#include <string_view>

namespace sumi::sd::detail {

std::string_view embedded_vocab_json();
std::string_view embedded_merges_txt();

}  // namespace sumi::sd::detail
