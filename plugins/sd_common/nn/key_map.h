// From original single-file checkpoints (CompVis LDM layout for SD 1.x/2.x, Stability SGM for
// SDXL) to diffusers / transformers names, which is what sumi's modules use. Besides renaming,
// the conversion reshapes the VAE mid-attention q/k/v/proj_out from 1x1 convs to linears,
// splits OpenCLIP's fused in_proj into q/k/v, transposes OpenCLIP's text_projection
// ([width, proj] in single files) into a Linear weight, and drops the last OpenCLIP block for
// SD2 (diffusers stores SD2's tower without it, so last_hidden_state is the penultimate layer).
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "detect.h"
#include "weights.h"

namespace sumi::nn {

struct ConvertedCheckpoint {
  ModelFamily family = ModelFamily::sd1;
  TensorMap unet, vae, text_encoder, text_encoder_2;  // diffusers names, no component prefix
  std::vector<std::string> unused;  // single-file keys that map to nothing (e.g. logit_scale)
};

// Names and shapes of loaded tensors, for detect_from_weights().
TensorShapes shapes_of(const TensorMap& weights);

// `weights`: every tensor of the single file under its original name.
ConvertedCheckpoint convert_single_file(const TensorMap& weights, ModelFamily family);

// Name-only maps, for tensors that keep their shape (also what LoRA key translation needs).
// `key` is without the "model.diffusion_model." / "first_stage_model." prefix; std::nullopt when
// the key is not part of the layout.
std::optional<std::string> unet_key_to_diffusers(const std::string& key, int64_t layers_per_block);
std::optional<std::string> vae_key_to_diffusers(const std::string& key, int64_t levels);

// diffusers folders written before diffusers 0.14 name the VAE's mid attention
// query/key/value/proj_attn; renames those to to_q/to_k/to_v/to_out.0 (other names unchanged).
TensorMap upgrade_legacy_vae_names(const TensorMap& vae);

// The way back: diffusers names to the original layout (what a saved single-file checkpoint
// and SDXL's kohya LoRA names use). The UNet needs the config to place the upsamplers.
std::optional<std::string> unet_key_to_original(const std::string& key, const UNetConfig& config);
std::optional<std::string> vae_key_to_original(const std::string& key, int64_t levels);

// Assembles a single-file checkpoint (original names, with the component prefixes) from
// diffusers-named parts; the inverse of convert_single_file. Tensors the diffusers form does not
// hold (OpenCLIP's logit_scale, SD2's last block and text_projection) are taken from
// `carry_over` (original names, e.g. the file the model came from) when given; otherwise they
// are filled with placeholders of the right shape, as sd-scripts does (SD2's last block is a
// copy of the one before it, SD2's text_projection an identity [width, width] as in the real
// model; SD2 and SDXL never use any of them).
TensorMap to_single_file(const ConvertedCheckpoint& parts, const UNetConfig& unet_config,
                         const TensorMap* carry_over = nullptr);

}  // namespace sumi::nn
