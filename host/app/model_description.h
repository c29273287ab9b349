// What a loaded model says about itself (the ABI 1.2 `describe` slot), parsed once: the host
// asks this instead of knowing model families.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace sumi::host {
class Component;
}

namespace sumi::app {

struct ModelDescription {
  std::string prediction_type = "epsilon";
  // Latents: channels and the VAE's down-scaling factor (image size / latent size).
  int64_t latent_channels = 4, vae_scale_factor = 8;
  // Names of the model's text encoders, in order ("text_encoder", "text_encoder_2", ...): the
  // parts train_part accepts besides "unet".
  std::vector<std::string> text_encoders;
  int64_t default_width = 512, default_height = 512;
  // Per-image conditioning `denoise` takes as `added` [B, N], by name (original_height,
  // original_width, crop_top, crop_left, target_height, target_width); empty: none.
  std::vector<std::string> added_conditioning;
  // kohya's text-encoder output cache (--cache_text_encoder_outputs) applies to this model.
  bool text_encoder_output_cache = false;
  // kohya metadata: ss_base_model_version, ss_v2; modelspec.architecture (no /lora suffix) and
  // the modelspec.implementation of its LoRA files.
  std::string kohya_base_model_version, modelspec_architecture, modelspec_lora_implementation;
  bool kohya_v2 = false;
  // kohya's family flags that name this model (without dashes), as its probe answers them.
  std::vector<std::string> kohya_flags;
  // Whether kohya's DreamBooth script for this model trains the text encoders unless told
  // otherwise (train_db.py does; sdxl_train.py only with --train_text_encoder).
  bool kohya_trains_text_encoder = true;

  // sdxl_train's --block_lr groups: parameters (diffusers names under the UNet) map to a group
  // by their longest matching prefix.
  struct BlockLayout {
    int64_t blocks = 0;
    std::vector<std::pair<std::string, int64_t>> prefixes;
    std::string description;  // the groups in words, for messages
    // The group of `name`; -1 when no prefix matches.
    int64_t block_of(const std::string& name) const;
  };
  std::optional<BlockLayout> block_lr;
};

// The model's description; a model built for ABI < 1.2 gives the defaults above. Throws a
// UserError naming the model when describe returns invalid JSON. Before load a model answers
// what it knows without a file (kohya's names, default size, prediction type, text encoders).
ModelDescription describe(host::Component& model);

}  // namespace sumi::app
