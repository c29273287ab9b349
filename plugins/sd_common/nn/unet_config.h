// Shape of an SD UNet2DConditionModel, normalised: per-level lists are always one entry per
// level and "attention_head_dim" is stored as what it means (diffusers 0.21 uses that field as
// the number of heads when num_attention_heads is unset).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace sumi::nn {

struct UNetConfig {
  int64_t in_channels = 4;
  int64_t out_channels = 4;
  std::vector<int64_t> block_out_channels{320, 640, 1280, 1280};
  std::vector<bool> cross_attention{true, true, true, false};  // per down level; up is mirrored
  std::vector<int64_t> num_heads{8, 8, 8, 8};                  // per level
  std::vector<int64_t> transformer_depth{1, 1, 1, 1};          // per level
  int64_t mid_transformer_depth = 1;
  int64_t layers_per_block = 2;
  int64_t cross_attention_dim = 768;
  int64_t norm_num_groups = 32;
  double norm_eps = 1e-5;
  bool use_linear_projection = false;
  bool upcast_attention = false;
  bool flip_sin_to_cos = true;
  int64_t freq_shift = 0;
  // SDXL "text_time" added conditioning; addition_time_embed_dim 0 = none.
  int64_t addition_time_embed_dim = 0;
  int64_t projection_class_embeddings_input_dim = 0;

  int64_t time_embed_dim() const { return block_out_channels.at(0) * 4; }
  size_t levels() const { return block_out_channels.size(); }

  // From a config.json file, or from `text` (its JSON) with `path` naming it in errors.
  static UNetConfig from_diffusers_json(const std::string& path, const std::string* text = nullptr);
};

bool operator==(const UNetConfig& a, const UNetConfig& b);

}  // namespace sumi::nn
