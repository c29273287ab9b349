// kohya's get_block_index (networks/lora.py), written out again from its rules for the tests of
// block-wise learning rates: down blocks 1..11, mid 12, up 13..24, -1 outside every block.
#pragma once

#include <regex>
#include <string>

namespace sumi::test {

inline int kohya_block(const std::string& name) {
  static const std::regex re("(up|down)_blocks_(\\d+)_(resnets|upsamplers|downsamplers|attentions)_(\\d+)_");
  std::smatch m;
  if (std::regex_search(name, m, re)) {
    const int i = std::stoi(m[2].str()), j = std::stoi(m[4].str());
    const int idx = (m[3] == "upsamplers" || m[3] == "downsamplers") ? 3 * i + 2 : 3 * i + j;
    return m[1] == "down" ? 1 + idx : 13 + idx;
  }
  return name.find("mid_block_") != std::string::npos ? 12 : -1;
}

}  // namespace sumi::test
