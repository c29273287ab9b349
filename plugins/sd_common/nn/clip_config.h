// Shape and behaviour of a CLIP text encoder (transformers' CLIPTextConfig, the fields SD uses).
// OpenAI CLIP (SD1, SDXL te1) and OpenCLIP (SD2, SDXL te2) towers differ only in values here.
#pragma once

#include <cstdint>
#include <string>

namespace sumi::nn {

struct ClipTextConfig {
  int64_t vocab_size = 49408;
  int64_t hidden_size = 768;
  int64_t intermediate_size = 3072;
  int64_t num_hidden_layers = 12;
  int64_t num_attention_heads = 12;
  int64_t max_position_embeddings = 77;
  std::string hidden_act = "quick_gelu";  // "quick_gelu" (OpenAI) or "gelu" (OpenCLIP)
  double layer_norm_eps = 1e-5;
  // Output width of `text_projection` (CLIPTextModelWithProjection); 0 = no projection.
  int64_t projection_dim = 0;

  // Reads a transformers config.json. projection_dim is kept only for
  // CLIPTextModelWithProjection ("architectures"): plain CLIPTextModel configs carry the field
  // too but have no projection weights.
  // From a config.json file, or from `text` (its JSON) with `path` naming it in errors.
  static ClipTextConfig from_diffusers_json(const std::string& path, const std::string* text = nullptr);
};

bool operator==(const ClipTextConfig& a, const ClipTextConfig& b);

}  // namespace sumi::nn
