// from_diffusers_json for the three network configs: the diffusers / transformers config.json
// files, with diffusers 0.21's defaults and quirks applied.
#include <nlohmann/json.hpp>

#include <fstream>
#include <stdexcept>

#include "clip_config.h"
#include "unet_config.h"
#include "vae_config.h"

namespace sumi::nn {

namespace {

using nlohmann::json;

// `text` (when given) is the config itself and `path` only names it in errors.
json read_json(const std::string& path, const std::string* text) {
  if (text) {
    try {
      return json::parse(*text);
    } catch (const std::exception& e) {
      throw std::runtime_error("config '" + path + "' is not valid JSON: " + e.what());
    }
  }
  std::ifstream in(path);
  if (!in) throw std::runtime_error("cannot open config '" + path + "'");
  try {
    return json::parse(in);
  } catch (const std::exception& e) {
    throw std::runtime_error("config '" + path + "' is not valid JSON: " + e.what());
  }
}

template <class T>
T get_or(const json& j, const char* key, T fallback) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return fallback;
  return it->get<T>();
}

// A per-level field that may be a scalar (same for every level) or a list.
std::vector<int64_t> per_level(const json& j, const char* key, size_t levels, int64_t fallback,
                               const std::string& path) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return std::vector<int64_t>(levels, fallback);
  if (it->is_number()) return std::vector<int64_t>(levels, it->get<int64_t>());
  auto v = it->get<std::vector<int64_t>>();
  if (v.size() != levels)
    throw std::runtime_error("config '" + path + "': " + key + " has " + std::to_string(v.size()) +
                             " entries but block_out_channels has " + std::to_string(levels));
  return v;
}

}  // namespace

ClipTextConfig ClipTextConfig::from_diffusers_json(const std::string& path, const std::string* text) {
  auto j = read_json(path, text);
  ClipTextConfig c;
  c.vocab_size = get_or<int64_t>(j, "vocab_size", c.vocab_size);
  c.hidden_size = get_or<int64_t>(j, "hidden_size", c.hidden_size);
  c.intermediate_size = get_or<int64_t>(j, "intermediate_size", c.intermediate_size);
  c.num_hidden_layers = get_or<int64_t>(j, "num_hidden_layers", c.num_hidden_layers);
  c.num_attention_heads = get_or<int64_t>(j, "num_attention_heads", c.num_attention_heads);
  c.max_position_embeddings =
      get_or<int64_t>(j, "max_position_embeddings", c.max_position_embeddings);
  c.hidden_act = get_or<std::string>(j, "hidden_act", c.hidden_act);
  c.layer_norm_eps = get_or<double>(j, "layer_norm_eps", c.layer_norm_eps);
  bool with_projection = false;
  for (const auto& a : get_or<std::vector<std::string>>(j, "architectures", {}))
    if (a.find("WithProjection") != std::string::npos) with_projection = true;
  c.projection_dim = with_projection ? get_or<int64_t>(j, "projection_dim", 512) : 0;
  if (c.hidden_size % c.num_attention_heads != 0)
    throw std::runtime_error("config '" + path + "': hidden_size " + std::to_string(c.hidden_size) +
                             " is not divisible by num_attention_heads " +
                             std::to_string(c.num_attention_heads));
  return c;
}

VaeConfig VaeConfig::from_diffusers_json(const std::string& path, const std::string* text) {
  auto j = read_json(path, text);
  VaeConfig c;
  c.in_channels = get_or<int64_t>(j, "in_channels", c.in_channels);
  c.out_channels = get_or<int64_t>(j, "out_channels", c.out_channels);
  c.latent_channels = get_or<int64_t>(j, "latent_channels", c.latent_channels);
  c.block_out_channels = get_or<std::vector<int64_t>>(j, "block_out_channels", c.block_out_channels);
  c.layers_per_block = get_or<int64_t>(j, "layers_per_block", c.layers_per_block);
  c.norm_num_groups = get_or<int64_t>(j, "norm_num_groups", c.norm_num_groups);
  c.act_fn = get_or<std::string>(j, "act_fn", c.act_fn);
  c.scaling_factor = get_or<double>(j, "scaling_factor", c.scaling_factor);
  c.force_upcast = get_or<bool>(j, "force_upcast", c.force_upcast);
  if (j.contains("sample_size") && !j["sample_size"].is_null()) {
    const auto& s = j["sample_size"];  // an int, or [h, w] of which diffusers' tiling uses the first
    c.sample_size = s.is_array() && !s.empty() ? s[0].get<int64_t>() : s.get<int64_t>();
    if (c.sample_size <= 0)
      throw std::runtime_error("config '" + path + "': sample_size must be positive, got " + std::to_string(c.sample_size));
  }
  for (const char* key : {"down_block_types", "up_block_types"}) {
    for (const auto& t : get_or<std::vector<std::string>>(j, key, {}))
      if (t != "DownEncoderBlock2D" && t != "UpDecoderBlock2D")
        throw std::runtime_error("config '" + path + "': unsupported VAE block type '" + t +
                                 "' (only DownEncoderBlock2D / UpDecoderBlock2D)");
  }
  return c;
}

UNetConfig UNetConfig::from_diffusers_json(const std::string& path, const std::string* text) {
  auto j = read_json(path, text);
  UNetConfig c;
  c.in_channels = get_or<int64_t>(j, "in_channels", c.in_channels);
  c.out_channels = get_or<int64_t>(j, "out_channels", c.out_channels);
  c.block_out_channels = get_or<std::vector<int64_t>>(j, "block_out_channels", c.block_out_channels);
  const size_t n = c.block_out_channels.size();
  auto down = get_or<std::vector<std::string>>(j, "down_block_types", {});
  auto up = get_or<std::vector<std::string>>(j, "up_block_types", {});
  if (down.size() != n || up.size() != n)
    throw std::runtime_error("config '" + path + "': down_block_types/up_block_types must have " +
                             std::to_string(n) + " entries, one per block_out_channels");
  c.cross_attention.assign(n, false);
  for (size_t i = 0; i < n; ++i) {
    if (down[i] == "CrossAttnDownBlock2D")
      c.cross_attention[i] = true;
    else if (down[i] != "DownBlock2D")
      throw std::runtime_error("config '" + path + "': unsupported down block '" + down[i] + "'");
    const auto& u = up[n - 1 - i];
    const bool up_attn = u == "CrossAttnUpBlock2D";
    if (!up_attn && u != "UpBlock2D")
      throw std::runtime_error("config '" + path + "': unsupported up block '" + u + "'");
    if (up_attn != c.cross_attention[i])
      throw std::runtime_error("config '" + path + "': up_block_types must mirror down_block_types");
  }
  auto mid = get_or<std::string>(j, "mid_block_type", "UNetMidBlock2DCrossAttn");
  if (mid != "UNetMidBlock2DCrossAttn")
    throw std::runtime_error("config '" + path + "': unsupported mid_block_type '" + mid + "'");
  // diffusers 0.21: num_attention_heads = num_attention_heads or attention_head_dim.
  auto heads_key = j.contains("num_attention_heads") && !j["num_attention_heads"].is_null()
                       ? "num_attention_heads"
                       : "attention_head_dim";
  c.num_heads = per_level(j, heads_key, n, 8, path);
  c.transformer_depth = per_level(j, "transformer_layers_per_block", n, 1, path);
  c.mid_transformer_depth = c.transformer_depth.back();
  c.layers_per_block = get_or<int64_t>(j, "layers_per_block", c.layers_per_block);
  c.cross_attention_dim = get_or<int64_t>(j, "cross_attention_dim", c.cross_attention_dim);
  c.norm_num_groups = get_or<int64_t>(j, "norm_num_groups", c.norm_num_groups);
  c.norm_eps = get_or<double>(j, "norm_eps", c.norm_eps);
  c.use_linear_projection = get_or<bool>(j, "use_linear_projection", c.use_linear_projection);
  c.upcast_attention = get_or<bool>(j, "upcast_attention", c.upcast_attention);
  c.flip_sin_to_cos = get_or<bool>(j, "flip_sin_to_cos", c.flip_sin_to_cos);
  c.freq_shift = get_or<int64_t>(j, "freq_shift", c.freq_shift);
  auto add = get_or<std::string>(j, "addition_embed_type", "");
  if (add == "text_time") {
    c.addition_time_embed_dim = get_or<int64_t>(j, "addition_time_embed_dim", 0);
    c.projection_class_embeddings_input_dim =
        get_or<int64_t>(j, "projection_class_embeddings_input_dim", 0);
    if (c.addition_time_embed_dim <= 0 || c.projection_class_embeddings_input_dim <= 0)
      throw std::runtime_error("config '" + path + "': addition_embed_type text_time needs "
                               "addition_time_embed_dim and projection_class_embeddings_input_dim");
  } else if (!add.empty()) {
    throw std::runtime_error("config '" + path + "': unsupported addition_embed_type '" + add + "'");
  }
  for (const char* key : {"class_embed_type", "encoder_hid_dim_type", "time_cond_proj_dim"})
    if (j.contains(key) && !j[key].is_null())
      throw std::runtime_error("config '" + path + "': " + key + " is set; sumi's UNet does not "
                               "support it (SD1/SD2/SDXL never set it)");
  if (get_or<std::string>(j, "resnet_time_scale_shift", "default") != "default" ||
      get_or<std::string>(j, "time_embedding_type", "positional") != "positional")
    throw std::runtime_error("config '" + path + "': only resnet_time_scale_shift=default and "
                             "time_embedding_type=positional are supported");
  for (size_t i = 0; i < n; ++i)
    if (c.block_out_channels[i] % c.num_heads[i] != 0)
      throw std::runtime_error("config '" + path + "': level " + std::to_string(i) + " width " +
                               std::to_string(c.block_out_channels[i]) +
                               " is not divisible by its head count " +
                               std::to_string(c.num_heads[i]));
  return c;
}

bool operator==(const ClipTextConfig& a, const ClipTextConfig& b) {
  return a.vocab_size == b.vocab_size && a.hidden_size == b.hidden_size &&
         a.intermediate_size == b.intermediate_size && a.num_hidden_layers == b.num_hidden_layers &&
         a.num_attention_heads == b.num_attention_heads &&
         a.max_position_embeddings == b.max_position_embeddings && a.hidden_act == b.hidden_act &&
         a.layer_norm_eps == b.layer_norm_eps && a.projection_dim == b.projection_dim;
}

bool operator==(const VaeConfig& a, const VaeConfig& b) {
  return a.in_channels == b.in_channels && a.out_channels == b.out_channels &&
         a.latent_channels == b.latent_channels && a.block_out_channels == b.block_out_channels &&
         a.layers_per_block == b.layers_per_block && a.norm_num_groups == b.norm_num_groups &&
         a.act_fn == b.act_fn && a.scaling_factor == b.scaling_factor &&
         a.force_upcast == b.force_upcast;
}

bool operator==(const UNetConfig& a, const UNetConfig& b) {
  return a.in_channels == b.in_channels && a.out_channels == b.out_channels &&
         a.block_out_channels == b.block_out_channels && a.cross_attention == b.cross_attention &&
         a.num_heads == b.num_heads && a.transformer_depth == b.transformer_depth &&
         a.mid_transformer_depth == b.mid_transformer_depth &&
         a.layers_per_block == b.layers_per_block &&
         a.cross_attention_dim == b.cross_attention_dim &&
         a.norm_num_groups == b.norm_num_groups && a.norm_eps == b.norm_eps &&
         a.use_linear_projection == b.use_linear_projection &&
         a.upcast_attention == b.upcast_attention && a.flip_sin_to_cos == b.flip_sin_to_cos &&
         a.freq_shift == b.freq_shift && a.addition_time_embed_dim == b.addition_time_embed_dim &&
         a.projection_class_embeddings_input_dim == b.projection_class_embeddings_input_dim;
}

}  // namespace sumi::nn
