#include <algorithm>
#include <string>
#include <vector>

#include "sumi/datasets/config.h"

namespace sumi::datasets {

std::string nearest_key(std::string_view key, const std::vector<std::string>& valid) {
  std::string best;
  std::size_t best_d = std::string::npos;
  for (const auto& v : valid) {
    // Levenshtein distance, one row.
    std::vector<std::size_t> row(v.size() + 1);
    for (std::size_t j = 0; j <= v.size(); ++j) row[j] = j;
    for (std::size_t i = 1; i <= key.size(); ++i) {
      std::size_t diag = row[0];
      row[0] = i;
      for (std::size_t j = 1; j <= v.size(); ++j) {
        const std::size_t up = row[j];
        row[j] = std::min({row[j] + 1, row[j - 1] + 1, diag + (key[i - 1] == v[j - 1] ? 0 : 1)});
        diag = up;
      }
    }
    if (row[v.size()] < best_d) best_d = row[v.size()], best = v;
  }
  // Further than half the key away is a different word, not a typo.
  if (best_d == std::string::npos || best_d > std::max<std::size_t>(2, key.size() / 2)) return "";
  return best;
}

}  // namespace sumi::datasets
