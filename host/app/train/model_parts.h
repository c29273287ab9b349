// Training the model's own parameters (DreamBooth, fine-tuning, Textual Inversion): kohya's
// SDXL UNet block split for --block_lr, and Textual Inversion's initial embedding file
// (--weights).
#pragma once

#include "core/registry.h"

#include <string>

namespace sumi::app {

// sdxl_train.py's --block_lr blocks: 0 time/label embedding, 1-9 input_blocks 0-8, 10-12
// middle_block 0-2, 13-21 output_blocks 0-8, 22 out.
constexpr int kSdxlUnetBlocks = 23;

// The block of a parameter of an SDXL UNet given by its diffusers name ("down_blocks.1.attentions.0.
// proj_in.weight" is input_blocks.4, block 5). Throws a UserError for a name outside that layout.
int sdxl_unet_block(const std::string& diffusers_name);

// kohya's --weights for Textual Inversion: copies the vectors of the embedding file `path`
// (emb_params or A1111 .pt for SD 1.x/2.x; clip_l + clip_g for SDXL) into the token's trainable
// rows that `component` registered (ti.<token>.emb_params / .clip_l / .clip_g). The file must hold
// as many vectors as the token has (num_vectors_per_token) and match the text encoders' widths.
void load_initial_embedding(host::Registry& registry, const std::string& component, const std::string& token,
                            const std::string& path, const std::string& family);

}  // namespace sumi::app
