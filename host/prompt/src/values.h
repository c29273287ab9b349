// Strict readers for the numbers and lists in prompt options and keys, and the "did you mean"
// for unknown names. Internal to sumi_prompt.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace sumi::prompt::detail {

std::string_view trim(std::string_view s);
std::string lower(std::string_view s);

// Digits only; nullopt when not that or out of range.
std::optional<std::uint64_t> parse_uint(std::string_view s);
// Digits with at most one '.', optionally a leading '-' when allow_sign; what Python's float()
// takes from sd-scripts' "[\d\.]+" patterns.
std::optional<double> parse_decimal(std::string_view s, bool allow_sign = false);

// "; did you mean 'x'?" when a candidate is within a small edit distance, else "".
std::string did_you_mean(std::string_view word, const std::vector<std::string>& candidates,
                         std::string_view prefix = "");

}  // namespace sumi::prompt::detail
