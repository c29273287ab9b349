#include "model_parts.h"

#include "core/error.h"

#include <ATen/ATen.h>

#include <cctype>
#include <cstdlib>
#include <vector>

namespace sumi::app {

namespace {

// "<prefix><int>." at the start of `s`: the int, and `s` advanced past the dot; -1 otherwise.
int take_index(std::string& s, const std::string& prefix) {
  if (s.compare(0, prefix.size(), prefix) != 0) return -1;
  size_t end = prefix.size();
  while (end < s.size() && std::isdigit(static_cast<unsigned char>(s[end]))) ++end;
  if (end == prefix.size() || end >= s.size() || s[end] != '.') return -1;
  const int v = std::atoi(s.substr(prefix.size(), end - prefix.size()).c_str());
  s.erase(0, end + 1);
  return v;
}

bool starts(const std::string& s, const char* prefix) { return s.rfind(prefix, 0) == 0; }

}  // namespace

int sdxl_unet_block(const std::string& name) {
  // SDXL: three levels of two layers; a level's downsampler follows its layers (input_blocks
  // 3 and 6), an up level's upsampler sits in its last output block.
  constexpr int kLayers = 2, kLevels = 3;
  std::string rest = name;
  int block = -1;
  if (starts(name, "time_embedding.") || starts(name, "add_embedding.")) {
    block = 0;
  } else if (starts(name, "conv_in.")) {
    block = 1;
  } else if (starts(name, "conv_norm_out.") || starts(name, "conv_out.")) {
    block = 22;
  } else if (int lvl = take_index(rest, "down_blocks."); lvl >= 0 && lvl < kLevels) {
    if (int j = take_index(rest, "resnets."); j >= 0 && j < kLayers) block = 2 + lvl * (kLayers + 1) + j;
    else if (int a = take_index(rest, "attentions."); a >= 0 && a < kLayers) block = 2 + lvl * (kLayers + 1) + a;
    else if (take_index(rest, "downsamplers.") == 0 && lvl < kLevels - 1) block = 2 + lvl * (kLayers + 1) + kLayers;
  } else if (starts(name, "mid_block.")) {
    rest.erase(0, 10);
    if (int j = take_index(rest, "resnets."); j == 0 || j == 1) block = 10 + 2 * j;
    else if (take_index(rest, "attentions.") == 0) block = 11;
  } else if (int up = take_index(rest, "up_blocks."); up >= 0 && up < kLevels) {
    if (int j = take_index(rest, "resnets."); j >= 0 && j <= kLayers) block = 13 + up * (kLayers + 1) + j;
    else if (int a = take_index(rest, "attentions."); a >= 0 && a <= kLayers) block = 13 + up * (kLayers + 1) + a;
    else if (take_index(rest, "upsamplers.") == 0 && up < kLevels - 1) block = 13 + up * (kLayers + 1) + kLayers;
  }
  if (block < 0)
    throw host::UserError("block_lr: the UNet parameter '" + name +
                          "' is outside SDXL's block layout (3 levels of 2 layers); block_lr needs an SDXL UNet");
  return block;
}

}  // namespace sumi::app
