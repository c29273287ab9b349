// Recognising an original single-file checkpoint (LDM layout for SD 1.x/2.x, SGM for SDXL)
// from its tensor names and shapes alone, and deriving the diffusers-equivalent configs.
// Widths, levels, depths, context and projection sizes come from shapes; what shapes cannot
// tell (attention heads) follows the family: SD1 8 heads, SD2/SDXL 64-wide heads, text
// encoders 64-wide heads. Pass a diffusers config where one exists; it is the truth.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "clip_config.h"
#include "unet_config.h"
#include "vae_config.h"

namespace sumi::nn {

enum class ModelFamily { sd1, sd2, sdxl };

const char* to_string(ModelFamily family);

using TensorShapes = std::map<std::string, std::vector<int64_t>>;

struct DetectedModel {
  ModelFamily family = ModelFamily::sd1;
  std::optional<UNetConfig> unet;                    // absent when the file holds no UNet
  std::optional<VaeConfig> vae;                      // absent when the file holds no VAE
  std::optional<ClipTextConfig> text_encoder;        // SD1/SDXL: OpenAI CLIP; SD2: OpenCLIP
  std::optional<ClipTextConfig> text_encoder_2;      // SDXL's OpenCLIP bigG-style tower
};

// Throws std::runtime_error when the names match no SD layout or shapes are inconsistent.
DetectedModel detect_from_weights(const TensorShapes& shapes);

// The single file's key prefixes per family.
struct SingleFilePrefixes {
  std::string unet = "model.diffusion_model.";
  std::string vae = "first_stage_model.";
  std::string text_encoder;    // OpenAI CLIP (".../text_model." stripped by the key map) or OpenCLIP
  std::string text_encoder_2;  // SDXL only
};
SingleFilePrefixes single_file_prefixes(ModelFamily family);

}  // namespace sumi::nn
