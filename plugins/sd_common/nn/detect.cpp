#include "detect.h"

#include <algorithm>
#include <stdexcept>

namespace sumi::nn {

namespace {

bool starts_with(const std::string& s, const std::string& p) { return s.compare(0, p.size(), p) == 0; }

bool any_prefix(const TensorShapes& shapes, const std::string& prefix) {
  auto it = shapes.lower_bound(prefix);
  return it != shapes.end() && starts_with(it->first, prefix);
}

const std::vector<int64_t>& shape_of(const TensorShapes& shapes, const std::string& name,
                                     size_t rank) {
  auto it = shapes.find(name);
  if (it == shapes.end())
    throw std::runtime_error("detect: expected tensor '" + name +
                             "' is missing; the file is not a complete SD checkpoint");
  if (it->second.size() != rank)
    throw std::runtime_error("detect: tensor '" + name + "' has rank " +
                             std::to_string(it->second.size()) + ", expected " + std::to_string(rank));
  return it->second;
}

// Indices N present as `prefix N.` (sorted, unique).
std::vector<int64_t> indices(const TensorShapes& shapes, const std::string& prefix) {
  std::vector<int64_t> out;
  for (auto it = shapes.lower_bound(prefix); it != shapes.end() && starts_with(it->first, prefix); ++it) {
    const auto rest = it->first.substr(prefix.size());
    const auto dot = rest.find('.');
    const auto digits = rest.substr(0, dot);
    if (digits.empty() || !std::all_of(digits.begin(), digits.end(), ::isdigit)) continue;
    out.push_back(std::stoll(digits));
  }
  std::sort(out.begin(), out.end());
  out.erase(std::unique(out.begin(), out.end()), out.end());
  return out;
}

int64_t count(const TensorShapes& shapes, const std::string& prefix) {
  auto idx = indices(shapes, prefix);
  return idx.empty() ? 0 : idx.back() + 1;
}

int64_t heads_for_width(int64_t width) { return std::max<int64_t>(1, width / 64); }

UNetConfig detect_unet(const TensorShapes& s, const std::string& p, ModelFamily family,
                       int64_t pooled_dim) {
  UNetConfig c;
  const auto& conv_in = shape_of(s, p + "input_blocks.0.0.weight", 4);
  c.in_channels = conv_in[1];
  c.out_channels = shape_of(s, p + "out.2.weight", 4)[0];
  // Input blocks: conv_in, then per level `layers` resnets (+attention) and, except on the
  // last level, a downsampler ("op").
  std::vector<int64_t> ops;
  for (auto k : indices(s, p + "input_blocks."))
    if (s.count(p + "input_blocks." + std::to_string(k) + ".0.op.weight")) ops.push_back(k);
  const int64_t n_blocks = count(s, p + "input_blocks.");
  const int64_t layers = ops.empty() ? n_blocks - 1 : ops.front() - 1;
  const int64_t levels = static_cast<int64_t>(ops.size()) + 1;
  if (layers <= 0 || n_blocks != 1 + levels * layers + (levels - 1))
    throw std::runtime_error("detect: UNet input_blocks do not form levels of equal depth (" +
                             std::to_string(n_blocks) + " blocks, downsamplers at " +
                             std::to_string(ops.size()) + " places)");
  c.layers_per_block = layers;
  c.block_out_channels.clear();
  c.cross_attention.clear();
  c.transformer_depth.clear();
  c.num_heads.clear();
  int64_t context_dim = 0;
  bool linear = false;
  for (int64_t i = 0; i < levels; ++i) {
    const auto block = p + "input_blocks." + std::to_string(1 + i * (layers + 1)) + ".";
    const int64_t width = shape_of(s, block + "0.out_layers.3.weight", 4)[0];
    c.block_out_channels.push_back(width);
    const bool attn = s.count(block + "1.proj_in.weight") > 0;
    c.cross_attention.push_back(attn);
    int64_t depth = 1;
    if (attn) {
      depth = count(s, block + "1.transformer_blocks.");
      linear = s.at(block + "1.proj_in.weight").size() == 2;
      context_dim = shape_of(s, block + "1.transformer_blocks.0.attn2.to_k.weight", 2)[1];
    }
    c.transformer_depth.push_back(depth);
    c.num_heads.push_back(family == ModelFamily::sd1 ? 8 : heads_for_width(width));
  }
  c.mid_transformer_depth = count(s, p + "middle_block.1.transformer_blocks.");
  if (c.mid_transformer_depth == 0)
    throw std::runtime_error("detect: the UNet middle block has no transformer; not an SD UNet");
  if (context_dim == 0) context_dim = shape_of(s, p + "middle_block.1.transformer_blocks.0.attn2.to_k.weight", 2)[1];
  c.cross_attention_dim = context_dim;
  auto mid_proj = s.find(p + "middle_block.1.proj_in.weight");
  if (mid_proj == s.end())
    throw std::runtime_error("detect: '" + p + "middle_block.1.proj_in.weight' is missing");
  // Linear projections are stored [C, C]; the older convolutional ones [C, C, 1, 1].
  c.use_linear_projection = linear || mid_proj->second.size() == 2;
  c.upcast_attention = family == ModelFamily::sd2;
  if (s.count(p + "label_emb.0.0.weight")) {
    const int64_t adm = shape_of(s, p + "label_emb.0.0.weight", 2)[1];
    c.projection_class_embeddings_input_dim = adm;
    const int64_t pooled = pooled_dim > 0 ? pooled_dim : 1280;
    if (adm <= pooled || (adm - pooled) % 6 != 0)
      throw std::runtime_error("detect: label_emb takes " + std::to_string(adm) +
                               " features, which is not pooled (" + std::to_string(pooled) +
                               ") + 6 x time features; unsupported added conditioning");
    c.addition_time_embed_dim = (adm - pooled) / 6;
  }
  const int64_t temb = shape_of(s, p + "time_embed.0.weight", 2)[0];
  if (temb != c.time_embed_dim())
    throw std::runtime_error("detect: time embedding width " + std::to_string(temb) +
                             " is not 4 x model channels " + std::to_string(c.block_out_channels[0]));
  return c;
}

VaeConfig detect_vae(const TensorShapes& s, const std::string& p, ModelFamily family) {
  VaeConfig c;
  c.in_channels = shape_of(s, p + "encoder.conv_in.weight", 4)[1];
  c.out_channels = shape_of(s, p + "decoder.conv_out.weight", 4)[0];
  c.latent_channels = shape_of(s, p + "post_quant_conv.weight", 4)[0];
  const int64_t levels = count(s, p + "encoder.down.");
  c.block_out_channels.clear();
  for (int64_t i = 0; i < levels; ++i)
    c.block_out_channels.push_back(
        shape_of(s, p + "encoder.down." + std::to_string(i) + ".block.0.conv2.weight", 4)[0]);
  c.layers_per_block = count(s, p + "encoder.down.0.block.");
  c.scaling_factor = family == ModelFamily::sdxl ? 0.13025 : 0.18215;
  c.sample_size = family == ModelFamily::sdxl ? 1024 : 512;
  return c;
}

// OpenAI CLIP as stored by transformers (`text_model.` under the given prefix).
ClipTextConfig detect_clip(const TensorShapes& s, const std::string& p) {
  ClipTextConfig c;
  const auto& tok = shape_of(s, p + "embeddings.token_embedding.weight", 2);
  c.vocab_size = tok[0];
  c.hidden_size = tok[1];
  c.max_position_embeddings = shape_of(s, p + "embeddings.position_embedding.weight", 2)[0];
  c.num_hidden_layers = count(s, p + "encoder.layers.");
  c.intermediate_size = shape_of(s, p + "encoder.layers.0.mlp.fc1.weight", 2)[0];
  c.num_attention_heads = heads_for_width(c.hidden_size);
  c.hidden_act = "quick_gelu";
  c.projection_dim = 0;
  return c;
}

// OpenCLIP's text tower (`model.` prefix): SD2 keeps all but the last block in diffusers.
ClipTextConfig detect_openclip(const TensorShapes& s, const std::string& p, bool drop_last,
                               bool projection) {
  ClipTextConfig c;
  const auto& tok = shape_of(s, p + "token_embedding.weight", 2);
  c.vocab_size = tok[0];
  c.hidden_size = tok[1];
  c.max_position_embeddings = shape_of(s, p + "positional_embedding", 2)[0];
  c.num_hidden_layers = count(s, p + "transformer.resblocks.") - (drop_last ? 1 : 0);
  if (c.num_hidden_layers <= 0)
    throw std::runtime_error("detect: OpenCLIP text tower under '" + p + "' has no usable blocks");
  c.intermediate_size = shape_of(s, p + "transformer.resblocks.0.mlp.c_fc.weight", 2)[0];
  c.num_attention_heads = heads_for_width(c.hidden_size);
  c.hidden_act = "gelu";
  c.projection_dim = projection ? shape_of(s, p + "text_projection", 2)[1] : 0;
  return c;
}

}  // namespace

const char* to_string(ModelFamily family) {
  switch (family) {
    case ModelFamily::sd1: return "sd1";
    case ModelFamily::sd2: return "sd2";
    case ModelFamily::sdxl: return "sdxl";
  }
  return "?";
}

SingleFilePrefixes single_file_prefixes(ModelFamily family) {
  SingleFilePrefixes p;
  switch (family) {
    case ModelFamily::sd1: p.text_encoder = "cond_stage_model.transformer."; break;
    case ModelFamily::sd2: p.text_encoder = "cond_stage_model.model."; break;
    case ModelFamily::sdxl:
      p.text_encoder = "conditioner.embedders.0.transformer.";
      p.text_encoder_2 = "conditioner.embedders.1.model.";
      break;
  }
  return p;
}

DetectedModel detect_from_weights(const TensorShapes& shapes) {
  DetectedModel m;
  const std::string unet_prefix = "model.diffusion_model.";
  if (any_prefix(shapes, "conditioner.embedders.") || shapes.count(unet_prefix + "label_emb.0.0.weight"))
    m.family = ModelFamily::sdxl;
  else if (any_prefix(shapes, "cond_stage_model.model."))
    m.family = ModelFamily::sd2;
  else if (any_prefix(shapes, "cond_stage_model.transformer."))
    m.family = ModelFamily::sd1;
  else if (shapes.count(unet_prefix + "input_blocks.0.0.weight")) {
    // No text encoder stored: tell SD1 from SD2 by the cross-attention width.
    std::string probe;
    for (const auto& [name, shape] : shapes)
      if (starts_with(name, unet_prefix) && name.find("attn2.to_k.weight") != std::string::npos) {
        probe = name;
        break;
      }
    if (probe.empty()) throw std::runtime_error("detect: UNet without cross-attention; not an SD model");
    const int64_t ctx = shapes.at(probe).back();
    if (ctx == 768) m.family = ModelFamily::sd1;
    else if (ctx == 1024) m.family = ModelFamily::sd2;
    else
      throw std::runtime_error("detect: cannot tell SD1 from SD2: no text encoder in the file and "
                               "cross-attention width " + std::to_string(ctx) + " is neither 768 nor 1024");
  } else {
    throw std::runtime_error("detect: no SD1/SD2/SDXL tensors found (expected names starting with "
                             "model.diffusion_model., first_stage_model., cond_stage_model. or "
                             "conditioner.embedders.)");
  }
  if (m.family == ModelFamily::sdxl && any_prefix(shapes, "conditioner.embedders.0.model."))
    throw std::runtime_error("detect: this is an SDXL refiner (its first embedder is OpenCLIP); "
                             "only the SDXL base layout is supported");
  const auto p = single_file_prefixes(m.family);
  int64_t pooled_dim = 0;
  if (m.family == ModelFamily::sdxl) {
    if (any_prefix(shapes, p.text_encoder))
      m.text_encoder = detect_clip(shapes, p.text_encoder + "text_model.");
    if (any_prefix(shapes, p.text_encoder_2)) {
      m.text_encoder_2 = detect_openclip(shapes, p.text_encoder_2, false, true);
      pooled_dim = m.text_encoder_2->projection_dim;
    }
  } else if (m.family == ModelFamily::sd2) {
    if (any_prefix(shapes, p.text_encoder))
      m.text_encoder = detect_openclip(shapes, p.text_encoder, true, false);
  } else if (any_prefix(shapes, p.text_encoder)) {
    const bool nested = any_prefix(shapes, p.text_encoder + "text_model.");
    m.text_encoder = detect_clip(shapes, p.text_encoder + (nested ? "text_model." : ""));
  }
  if (shapes.count(p.unet + "input_blocks.0.0.weight"))
    m.unet = detect_unet(shapes, p.unet, m.family, pooled_dim);
  if (shapes.count(p.vae + "encoder.conv_in.weight")) m.vae = detect_vae(shapes, p.vae, m.family);
  return m;
}

}  // namespace sumi::nn
