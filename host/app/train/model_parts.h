// Training the model's own parameters (DreamBooth, fine-tuning): kohya's SDXL UNet block split
// for --block_lr. (Textual Inversion's --weights file is read by the model: its load_token slot.)
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

}  // namespace sumi::app
