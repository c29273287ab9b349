// "Did you mean" for recipe keys, sections and kohya flags: the closest known name by edit
// distance, offered only when it is plausibly a typo.
#pragma once

#include <string>
#include <string_view>
#include <vector>

namespace sumi::recipe {

// Levenshtein distance (insert, delete, substitute; each costs 1).
size_t edit_distance(std::string_view a, std::string_view b);

// The candidate closest to `word`, or "" when none is close enough to be a likely typo.
std::string nearest(std::string_view word, const std::vector<std::string>& candidates);

// "; did you mean 'x'?" or "" — ready to append to a message.
std::string did_you_mean(std::string_view word, const std::vector<std::string>& candidates,
                         std::string_view prefix = "");

}  // namespace sumi::recipe
