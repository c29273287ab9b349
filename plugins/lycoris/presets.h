// presets.h — LyCORIS's module presets (`--network_args preset=...`, lycoris/config.py), restated
// over the model's module list: which Linear / Conv2d layers a LyCORIS network wraps. LyCORIS
// walks the diffusers / transformers module tree by class name (Transformer2DModel,
// ResnetBlock2D, Downsample2D, Upsample2D, CLIPAttention, CLIPMLP, the attention blocks) plus a
// few module names (conv_in, conv_out, time_embedding.linear_1/2); here each layer is placed by
// its kohya name (diffusers names for SD1/SD2, SGM names for SDXL) and in_transformer.
#pragma once

#include <sumi/sumi.h>

#include <cstddef>
#include <string>
#include <vector>

namespace sumi::lycoris {

struct Preset {
  const char* name;
  bool te_attention, te_mlp;  // CLIPAttention, CLIPMLP
  bool transformer;           // every layer of the U-Net's transformer blocks (Transformer2DModel)
  bool attention;             // the U-Net's attention projections only (attn-only)
  bool resnet, sampler;       // ResnetBlock2D; Downsample2D / Upsample2D
  bool conv_in_out;           // conv_in, conv_out
  bool time_embedding;        // time_embedding.linear_1 / linear_2
  bool enable_conv;           // k x k convolutions at conv_dim (off: only Linear and 1x1 convs)
};

// The preset of that name; throws sumi::Error listing the supported ones for any other (LyCORIS's
// ia3 preset and preset files are not supported).
const Preset& find_preset(const std::string& name);

// One module a preset wraps: its index in the model's list and whether it takes the conv rank
// (a k x k convolution, k > 1).
struct Choice {
  size_t index = 0;
  bool conv_rank = false;
};

// The modules `p` wraps, text encoders first (as kohya creates them), in model order within each;
// `unet` / `text_encoder` false leave that side out (train_unet_only / train_text_encoder_only).
std::vector<Choice> choose_modules(const std::vector<const sumi_module_info*>& modules, const Preset& p, bool unet,
                                   bool text_encoder);

}  // namespace sumi::lycoris
