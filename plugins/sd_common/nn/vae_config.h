// Shape of an AutoencoderKL (diffusers' config.json fields that the SD VAEs use).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace sumi::nn {

struct VaeConfig {
  int64_t in_channels = 3;
  int64_t out_channels = 3;
  int64_t latent_channels = 4;
  std::vector<int64_t> block_out_channels{128, 256, 512, 512};
  int64_t layers_per_block = 2;
  int64_t norm_num_groups = 32;
  std::string act_fn = "silu";
  double scaling_factor = 0.18215;
  bool force_upcast = true;  // the SD/SDXL VAEs overflow in fp16; callers should decode in fp32
  // Image size the VAE was trained at: the tile size of tiled encode/decode (diffusers'
  // tile_sample_min_size). 512 for SD 1.x/2.x, 1024 for SDXL. Not part of the shape (==).
  int64_t sample_size = 512;

  // From a config.json file, or from `text` (its JSON) with `path` naming it in errors.
  static VaeConfig from_diffusers_json(const std::string& path, const std::string* text = nullptr);
};

bool operator==(const VaeConfig& a, const VaeConfig& b);

}  // namespace sumi::nn
