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

  static VaeConfig from_diffusers_json(const std::string& path);
};

bool operator==(const VaeConfig& a, const VaeConfig& b);

}  // namespace sumi::nn
