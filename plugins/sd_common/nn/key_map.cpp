#include "key_map.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <stdexcept>

namespace sumi::nn {

namespace {

bool starts_with(const std::string& s, const std::string& p) { return s.compare(0, p.size(), p) == 0; }

// Splits "12.rest" into 12 and "rest"; false if `s` does not start with a number and a dot.
bool take_index(const std::string& s, int64_t& index, std::string& rest) {
  const auto dot = s.find('.');
  if (dot == 0 || dot == std::string::npos) return false;
  for (size_t i = 0; i < dot; ++i)
    if (!std::isdigit(static_cast<unsigned char>(s[i]))) return false;
  index = std::stoll(s.substr(0, dot));
  rest = s.substr(dot + 1);
  return true;
}

// Prefix renames, original name first; applied in either direction.
using Table = std::vector<std::pair<std::string, std::string>>;

std::optional<std::string> rename_prefix(const std::string& key, const Table& table,
                                         bool to_original = false) {
  for (const auto& [orig, diff] : table) {
    const auto& from = to_original ? diff : orig;
    const auto& to = to_original ? orig : diff;
    if (starts_with(key, from)) return to + key.substr(from.size());
  }
  return std::nullopt;
}

const Table kUnetResnet{{"in_layers.0.", "norm1."},      {"in_layers.2.", "conv1."},
                        {"emb_layers.1.", "time_emb_proj."}, {"out_layers.0.", "norm2."},
                        {"out_layers.3.", "conv2."},     {"skip_connection.", "conv_shortcut."}};
const Table kVaeResnet{{"norm1.", "norm1."}, {"conv1.", "conv1."}, {"norm2.", "norm2."},
                       {"conv2.", "conv2."}, {"nin_shortcut.", "conv_shortcut."}};
const Table kVaeAttention{{"norm.", "group_norm."}, {"q.", "to_q."}, {"k.", "to_k."},
                          {"v.", "to_v."},          {"proj_out.", "to_out.0."}};
const Table kUnetTop{{"time_embed.0.", "time_embedding.linear_1."},
                     {"time_embed.2.", "time_embedding.linear_2."},
                     {"label_emb.0.0.", "add_embedding.linear_1."},
                     {"label_emb.0.2.", "add_embedding.linear_2."},
                     {"input_blocks.0.0.", "conv_in."},
                     {"out.0.", "conv_norm_out."},
                     {"out.2.", "conv_out."}};
const Table kVaeTop{{"encoder.conv_in.", "encoder.conv_in."},
                    {"encoder.conv_out.", "encoder.conv_out."},
                    {"encoder.norm_out.", "encoder.conv_norm_out."},
                    {"decoder.conv_in.", "decoder.conv_in."},
                    {"decoder.conv_out.", "decoder.conv_out."},
                    {"decoder.norm_out.", "decoder.conv_norm_out."},
                    {"quant_conv.", "quant_conv."},
                    {"post_quant_conv.", "post_quant_conv."}};
const Table kOpenClipLayer{{"attn.out_proj.", "self_attn.out_proj."},
                           {"ln_1.", "layer_norm1."},
                           {"ln_2.", "layer_norm2."},
                           {"mlp.c_fc.", "mlp.fc1."},
                           {"mlp.c_proj.", "mlp.fc2."}};

std::optional<std::string> unet_resnet(const std::string& rest) { return rename_prefix(rest, kUnetResnet); }
std::optional<std::string> vae_resnet(const std::string& rest) { return rename_prefix(rest, kVaeResnet); }

std::optional<std::string> with_prefix(const std::string& prefix, std::optional<std::string> rest) {
  if (!rest) return std::nullopt;
  return prefix + *rest;
}

std::optional<std::string> vae_mid(const std::string& side, const std::string& rest) {
  if (starts_with(rest, "block_1.")) return with_prefix(side + "mid_block.resnets.0.", vae_resnet(rest.substr(8)));
  if (starts_with(rest, "block_2.")) return with_prefix(side + "mid_block.resnets.1.", vae_resnet(rest.substr(8)));
  if (starts_with(rest, "attn_1."))
    return with_prefix(side + "mid_block.attentions.0.", rename_prefix(rest.substr(7), kVaeAttention));
  return std::nullopt;
}

void put(TensorMap& out, const std::string& name, const at::Tensor& t, const std::string& source) {
  if (!out.emplace(name, t).second)
    throw std::runtime_error("key map: two single-file tensors map to '" + name + "' (second: '" +
                             source + "'); the file mixes layouts");
}

int64_t count_indices(const TensorMap& w, const std::string& prefix) {
  int64_t n = 0;
  for (auto it = w.lower_bound(prefix); it != w.end() && starts_with(it->first, prefix); ++it) {
    int64_t idx;
    std::string rest;
    if (take_index(it->first.substr(prefix.size()), idx, rest)) n = std::max(n, idx + 1);
  }
  return n;
}

// OpenCLIP text tower under `p` into transformers' CLIPTextModel[WithProjection] names.
void convert_openclip(const TensorMap& w, const std::string& p, bool drop_last, bool projection,
                      TensorMap& out, std::vector<std::string>& unused) {
  const int64_t blocks = count_indices(w, p + "transformer.resblocks.");
  const int64_t keep = blocks - (drop_last ? 1 : 0);
  for (auto it = w.lower_bound(p); it != w.end() && starts_with(it->first, p); ++it) {
    const auto& key = it->first;
    const auto name = key.substr(p.size());
    const auto& t = it->second;
    if (name == "token_embedding.weight") {
      put(out, "text_model.embeddings.token_embedding.weight", t, key);
    } else if (name == "positional_embedding") {
      put(out, "text_model.embeddings.position_embedding.weight", t, key);
    } else if (starts_with(name, "ln_final.")) {
      put(out, "text_model.final_layer_norm." + name.substr(9), t, key);
    } else if (name == "text_projection" && projection) {
      put(out, "text_projection.weight", t.t().contiguous(), key);
    } else if (starts_with(name, "transformer.resblocks.")) {
      int64_t i;
      std::string rest;
      if (!take_index(name.substr(22), i, rest) || i >= keep) {
        unused.push_back(key);
        continue;
      }
      const auto layer = "text_model.encoder.layers." + std::to_string(i) + ".";
      if (rest == "attn.in_proj_weight" || rest == "attn.in_proj_bias") {
        const auto suffix = rest == "attn.in_proj_weight" ? "weight" : "bias";
        auto parts = t.chunk(3, 0);
        put(out, layer + "self_attn.q_proj." + suffix, parts[0].contiguous(), key);
        put(out, layer + "self_attn.k_proj." + suffix, parts[1].contiguous(), key);
        put(out, layer + "self_attn.v_proj." + suffix, parts[2].contiguous(), key);
        continue;
      }
      auto mapped = rename_prefix(rest, kOpenClipLayer);
      if (mapped) put(out, layer + *mapped, t, key);
      else unused.push_back(key);
    } else {
      unused.push_back(key);  // logit_scale, attn_mask, ...
    }
  }
}

void convert_clip(const TensorMap& w, const std::string& p, TensorMap& out) {
  for (auto it = w.lower_bound(p); it != w.end() && starts_with(it->first, p); ++it) {
    auto name = it->first.substr(p.size());
    // Very old transformers checkpoints lack the `text_model.` level.
    if (!starts_with(name, "text_model.")) name = "text_model." + name;
    put(out, name, it->second, it->first);
  }
}

}  // namespace

TensorShapes shapes_of(const TensorMap& weights) {
  TensorShapes out;
  for (const auto& [name, t] : weights) out.emplace(name, t.sizes().vec());
  return out;
}

TensorMap upgrade_legacy_vae_names(const TensorMap& vae) {
  static const Table legacy{{"query.", "to_q."}, {"key.", "to_k."}, {"value.", "to_v."},
                            {"proj_attn.", "to_out.0."}};
  TensorMap out;
  for (const auto& [key, t] : vae) {
    const auto pos = key.find("mid_block.attentions.0.");
    std::optional<std::string> renamed;
    if (pos != std::string::npos) {
      const auto head = key.substr(0, pos + 23);
      renamed = with_prefix(head, rename_prefix(key.substr(pos + 23), legacy));
    }
    put(out, renamed ? *renamed : key, t, key);
  }
  return out;
}

std::optional<std::string> unet_key_to_diffusers(const std::string& key, int64_t layers) {
  if (auto m = rename_prefix(key, kUnetTop)) return m;
  int64_t k, sub;
  std::string rest, inner;
  if (starts_with(key, "input_blocks.")) {
    if (!take_index(key.substr(13), k, rest) || k == 0 || !take_index(rest, sub, inner)) return std::nullopt;
    const int64_t level = (k - 1) / (layers + 1), j = (k - 1) % (layers + 1);
    const auto block = "down_blocks." + std::to_string(level) + ".";
    if (j == layers) {
      if (sub != 0 || !starts_with(inner, "op.")) return std::nullopt;
      return block + "downsamplers.0.conv." + inner.substr(3);
    }
    if (sub == 0) return with_prefix(block + "resnets." + std::to_string(j) + ".", unet_resnet(inner));
    if (sub == 1) return block + "attentions." + std::to_string(j) + "." + inner;
    return std::nullopt;
  }
  if (starts_with(key, "middle_block.")) {
    if (!take_index(key.substr(13), sub, inner)) return std::nullopt;
    if (sub == 0) return with_prefix("mid_block.resnets.0.", unet_resnet(inner));
    if (sub == 1) return "mid_block.attentions.0." + inner;
    if (sub == 2) return with_prefix("mid_block.resnets.1.", unet_resnet(inner));
    return std::nullopt;
  }
  if (starts_with(key, "output_blocks.")) {
    if (!take_index(key.substr(14), k, rest) || !take_index(rest, sub, inner)) return std::nullopt;
    const int64_t level = k / (layers + 1), j = k % (layers + 1);
    const auto block = "up_blocks." + std::to_string(level) + ".";
    if (sub == 0) return with_prefix(block + "resnets." + std::to_string(j) + ".", unet_resnet(inner));
    // The upsampler follows the resnet (index 1) or the resnet and attention (index 2).
    if ((sub == 1 || sub == 2) && starts_with(inner, "conv.")) return block + "upsamplers.0." + inner;
    if (sub == 1) return block + "attentions." + std::to_string(j) + "." + inner;
    return std::nullopt;
  }
  return std::nullopt;
}

std::optional<std::string> vae_key_to_diffusers(const std::string& key, int64_t levels) {
  if (auto m = rename_prefix(key, kVaeTop)) return m;
  int64_t i, j;
  std::string rest, inner;
  if (starts_with(key, "encoder.mid.")) return vae_mid("encoder.", key.substr(12));
  if (starts_with(key, "decoder.mid.")) return vae_mid("decoder.", key.substr(12));
  if (starts_with(key, "encoder.down.")) {
    if (!take_index(key.substr(13), i, rest)) return std::nullopt;
    const auto block = "encoder.down_blocks." + std::to_string(i) + ".";
    if (starts_with(rest, "downsample.conv.")) return block + "downsamplers.0.conv." + rest.substr(16);
    if (starts_with(rest, "block.") && take_index(rest.substr(6), j, inner))
      return with_prefix(block + "resnets." + std::to_string(j) + ".", vae_resnet(inner));
    return std::nullopt;
  }
  if (starts_with(key, "decoder.up.")) {
    // LDM numbers decoder levels from the lowest resolution up; diffusers from the top down.
    if (!take_index(key.substr(11), i, rest) || i >= levels) return std::nullopt;
    const auto block = "decoder.up_blocks." + std::to_string(levels - 1 - i) + ".";
    if (starts_with(rest, "upsample.conv.")) return block + "upsamplers.0.conv." + rest.substr(14);
    if (starts_with(rest, "block.") && take_index(rest.substr(6), j, inner))
      return with_prefix(block + "resnets." + std::to_string(j) + ".", vae_resnet(inner));
    return std::nullopt;
  }
  return std::nullopt;
}

ConvertedCheckpoint convert_single_file(const TensorMap& w, ModelFamily family) {
  ConvertedCheckpoint out;
  out.family = family;
  const auto p = single_file_prefixes(family);

  // UNet: layers per block from the first downsampler's position.
  int64_t layers = 0;
  for (int64_t k = 1; k < 64 && layers == 0; ++k)
    if (w.count(p.unet + "input_blocks." + std::to_string(k) + ".0.op.weight")) layers = k - 1;
  if (layers == 0) layers = count_indices(w, p.unet + "input_blocks.") - 1;
  const int64_t vae_levels = count_indices(w, p.vae + "encoder.down.");

  for (const auto& [key, t] : w) {
    if (starts_with(key, p.unet)) {
      auto name = unet_key_to_diffusers(key.substr(p.unet.size()), layers);
      if (name) put(out.unet, *name, t, key);
      else out.unused.push_back(key);
    } else if (starts_with(key, p.vae)) {
      auto name = vae_key_to_diffusers(key.substr(p.vae.size()), vae_levels);
      if (!name) {
        out.unused.push_back(key);
        continue;
      }
      // The mid attention's projections are 1x1 convs in LDM and linears in diffusers.
      const bool attn_proj = name->find("mid_block.attentions.0.to_") != std::string::npos &&
                             t.dim() == 4;
      put(out.vae, *name, attn_proj ? t.reshape({t.size(0), t.size(1)}) : t, key);
    } else if (!starts_with(key, p.text_encoder) &&
               (p.text_encoder_2.empty() || !starts_with(key, p.text_encoder_2))) {
      out.unused.push_back(key);
    }
  }
  if (family == ModelFamily::sd2)
    convert_openclip(w, p.text_encoder, /*drop_last=*/true, /*projection=*/false, out.text_encoder,
                     out.unused);
  else
    convert_clip(w, p.text_encoder, out.text_encoder);
  if (family == ModelFamily::sdxl)
    convert_openclip(w, p.text_encoder_2, false, true, out.text_encoder_2, out.unused);
  return out;
}

namespace {

std::optional<std::string> resnet_back(const std::string& prefix, const std::string& rest,
                                       const Table& table) {
  return with_prefix(prefix, rename_prefix(rest, table, true));
}

std::optional<std::string> vae_mid_back(const std::string& side, const std::string& rest) {
  if (starts_with(rest, "resnets.0.")) return resnet_back(side + "mid.block_1.", rest.substr(10), kVaeResnet);
  if (starts_with(rest, "resnets.1.")) return resnet_back(side + "mid.block_2.", rest.substr(10), kVaeResnet);
  if (starts_with(rest, "attentions.0."))
    return with_prefix(side + "mid.attn_1.", rename_prefix(rest.substr(13), kVaeAttention, true));
  return std::nullopt;
}

int64_t count_blocks(const TensorMap& w, const std::string& prefix) { return count_indices(w, prefix); }

}  // namespace

std::optional<std::string> unet_key_to_original(const std::string& key, const UNetConfig& c) {
  if (auto m = rename_prefix(key, kUnetTop, true)) return m;
  const int64_t layers = c.layers_per_block, n = static_cast<int64_t>(c.levels());
  int64_t i, j;
  std::string rest, inner;
  auto block = [](int64_t k, int sub) {
    return std::to_string(k) + "." + std::to_string(sub) + ".";
  };
  if (starts_with(key, "down_blocks.")) {
    if (!take_index(key.substr(12), i, rest) || i >= n) return std::nullopt;
    if (starts_with(rest, "resnets.") && take_index(rest.substr(8), j, inner))
      return resnet_back("input_blocks." + block(1 + i * (layers + 1) + j, 0), inner, kUnetResnet);
    if (starts_with(rest, "attentions.") && take_index(rest.substr(11), j, inner))
      return "input_blocks." + block(1 + i * (layers + 1) + j, 1) + inner;
    if (starts_with(rest, "downsamplers.0.conv."))
      return "input_blocks." + block((i + 1) * (layers + 1), 0) + "op." + rest.substr(20);
    return std::nullopt;
  }
  if (starts_with(key, "mid_block.")) {
    rest = key.substr(10);
    if (starts_with(rest, "resnets.0.")) return resnet_back("middle_block.0.", rest.substr(10), kUnetResnet);
    if (starts_with(rest, "attentions.0.")) return "middle_block.1." + rest.substr(13);
    if (starts_with(rest, "resnets.1.")) return resnet_back("middle_block.2.", rest.substr(10), kUnetResnet);
    return std::nullopt;
  }
  if (starts_with(key, "up_blocks.")) {
    if (!take_index(key.substr(10), i, rest) || i >= n) return std::nullopt;
    if (starts_with(rest, "resnets.") && take_index(rest.substr(8), j, inner))
      return resnet_back("output_blocks." + block(i * (layers + 1) + j, 0), inner, kUnetResnet);
    if (starts_with(rest, "attentions.") && take_index(rest.substr(11), j, inner))
      return "output_blocks." + block(i * (layers + 1) + j, 1) + inner;
    if (starts_with(rest, "upsamplers.0.conv.")) {
      const bool attn = c.cross_attention[n - 1 - i];
      return "output_blocks." + block(i * (layers + 1) + layers, attn ? 2 : 1) + "conv." +
             rest.substr(18);
    }
    return std::nullopt;
  }
  return std::nullopt;
}

std::optional<std::string> vae_key_to_original(const std::string& key, int64_t levels) {
  if (auto m = rename_prefix(key, kVaeTop, true)) return m;
  int64_t i, j;
  std::string rest, inner;
  if (starts_with(key, "encoder.mid_block.")) return vae_mid_back("encoder.", key.substr(18));
  if (starts_with(key, "decoder.mid_block.")) return vae_mid_back("decoder.", key.substr(18));
  if (starts_with(key, "encoder.down_blocks.")) {
    if (!take_index(key.substr(20), i, rest)) return std::nullopt;
    const auto block = "encoder.down." + std::to_string(i) + ".";
    if (starts_with(rest, "downsamplers.0.conv.")) return block + "downsample.conv." + rest.substr(20);
    if (starts_with(rest, "resnets.") && take_index(rest.substr(8), j, inner))
      return resnet_back(block + "block." + std::to_string(j) + ".", inner, kVaeResnet);
    return std::nullopt;
  }
  if (starts_with(key, "decoder.up_blocks.")) {
    if (!take_index(key.substr(18), i, rest) || i >= levels) return std::nullopt;
    const auto block = "decoder.up." + std::to_string(levels - 1 - i) + ".";
    if (starts_with(rest, "upsamplers.0.conv.")) return block + "upsample.conv." + rest.substr(18);
    if (starts_with(rest, "resnets.") && take_index(rest.substr(8), j, inner))
      return resnet_back(block + "block." + std::to_string(j) + ".", inner, kVaeResnet);
    return std::nullopt;
  }
  return std::nullopt;
}

namespace {

[[noreturn]] void unmappable(const std::string& part, const std::string& key) {
  throw std::runtime_error("key map: " + part + " tensor '" + key +
                           "' has no place in the original layout; is it from another model kind?");
}

// transformers' CLIP names back to OpenCLIP under `p` (q/k/v fused into in_proj).
void openclip_back(const TensorMap& te, const std::string& p, bool sd2, const TensorMap* carry,
                   TensorMap& out) {
  std::map<std::string, std::array<at::Tensor, 3>> fused;  // "<layer>.weight" -> q, k, v
  for (const auto& [key, t] : te) {
    if (key == "text_model.embeddings.token_embedding.weight") {
      put(out, p + "token_embedding.weight", t, key);
    } else if (key == "text_model.embeddings.position_embedding.weight") {
      put(out, p + "positional_embedding", t, key);
    } else if (starts_with(key, "text_model.final_layer_norm.")) {
      put(out, p + "ln_final." + key.substr(28), t, key);
    } else if (key == "text_projection.weight") {
      put(out, p + "text_projection", t.t().contiguous(), key);
    } else if (starts_with(key, "text_model.encoder.layers.")) {
      int64_t i;
      std::string rest;
      if (!take_index(key.substr(26), i, rest)) unmappable("text encoder", key);
      const auto layer = p + "transformer.resblocks." + std::to_string(i) + ".";
      int slot = starts_with(rest, "self_attn.q_proj.") ? 0
                 : starts_with(rest, "self_attn.k_proj.") ? 1
                 : starts_with(rest, "self_attn.v_proj.") ? 2 : -1;
      if (slot >= 0) {
        fused[layer + "attn.in_proj_" + rest.substr(17)][slot] = t;
        continue;
      }
      auto mapped = rename_prefix(rest, kOpenClipLayer, true);
      if (!mapped) unmappable("text encoder", key);
      put(out, layer + *mapped, t, key);
    } else if (key.find("position_ids") == std::string::npos) {
      unmappable("text encoder", key);
    }
  }
  for (auto& [name, qkv] : fused) {
    if (!qkv[0].defined() || !qkv[1].defined() || !qkv[2].defined())
      throw std::runtime_error("key map: '" + name + "' needs q, k and v projections; one is missing");
    put(out, name, at::cat({qkv[0], qkv[1], qkv[2]}, 0), name);
  }
  // What the diffusers form does not hold.
  const int64_t blocks = count_blocks(out, p + "transformer.resblocks.");
  std::vector<std::pair<std::string, at::Tensor>> extras;
  if (sd2 && blocks > 0) {
    const auto last = p + "transformer.resblocks." + std::to_string(blocks - 1) + ".";
    const auto dummy = p + "transformer.resblocks." + std::to_string(blocks) + ".";
    for (auto it = out.lower_bound(last); it != out.end() && starts_with(it->first, last); ++it)
      extras.emplace_back(dummy + it->first.substr(last.size()), it->second.clone());
    const int64_t width = out.at(p + "token_embedding.weight").size(1);
    extras.emplace_back(p + "text_projection", at::eye(width, out.at(p + "token_embedding.weight").options()));
  }
  extras.emplace_back(p + "logit_scale", at::scalar_tensor(std::log(100.0), at::kFloat));
  for (auto& [name, t] : extras) {
    if (carry) {
      auto it = carry->find(name);
      if (it != carry->end()) t = it->second;
    }
    out.emplace(name, t);
  }
}

}  // namespace

TensorMap to_single_file(const ConvertedCheckpoint& parts, const UNetConfig& unet_config,
                         const TensorMap* carry_over) {
  TensorMap out;
  const auto p = single_file_prefixes(parts.family);
  for (const auto& [key, t] : parts.unet) {
    auto name = unet_key_to_original(key, unet_config);
    if (!name) unmappable("UNet", key);
    put(out, p.unet + *name, t, key);
  }
  const int64_t levels = count_blocks(parts.vae, "encoder.down_blocks.");
  for (const auto& [key, t] : parts.vae) {
    auto name = vae_key_to_original(key, levels);
    if (!name) unmappable("VAE", key);
    const bool attn_proj = key.find("mid_block.attentions.0.to_") != std::string::npos && t.dim() == 2;
    put(out, p.vae + *name, attn_proj ? t.reshape({t.size(0), t.size(1), 1, 1}) : t, key);
  }
  if (parts.family == ModelFamily::sd2) {
    if (!parts.text_encoder.empty()) openclip_back(parts.text_encoder, p.text_encoder, true, carry_over, out);
  } else {
    for (const auto& [key, t] : parts.text_encoder) put(out, p.text_encoder + key, t, key);
  }
  if (parts.family == ModelFamily::sdxl && !parts.text_encoder_2.empty())
    openclip_back(parts.text_encoder_2, p.text_encoder_2, false, carry_over, out);
  return out;
}

}  // namespace sumi::nn
