// sumi/targets.hpp — which of a model's modules kohya's LoRA-family networks wrap, and at what
// rank and alpha: networks/lora.py's create_modules / get_block_dims_and_alphas /
// get_block_index, shared by every adapter that targets kohya's module sets (lora, lora_fa,
// dylora, LyCORIS-style networks, third-party adapters). Pure selection logic over
// sumi_module_info: no tensors, no libtorch. Link sumi::targets (in-tree: sumi_targets).
//
// The sets: LierLa = every Linear and 1x1 Conv2d inside the U-Net's transformer blocks and the
// text encoders' attention / MLP (modules marked in_transformer); C3Lier adds the 3x3 (and 1x1)
// convolutions of the U-Net's ResNet blocks and down/up-samplers when a conv rank is set
// (conv_dim or conv_block_dims). block_dims gives every U-Net block its own rank.
#pragma once

#include <sumi/sumi.h>

#include <cstdint>
#include <string>
#include <vector>

namespace sumi::targets {

// The network's configuration as kohya's create_network sees it. "Unset" is conv_dim < 0 and
// empty lists (kohya's None).
struct Settings {
  // Prefix of error messages, e.g. "lora" gives "lora: block_dims has ...".
  std::string network = "network";
  int64_t dim = 4;
  double alpha = 1.0;
  int64_t conv_dim = -1;
  double conv_alpha = 1.0;
  std::vector<int64_t> block_dims;
  std::vector<double> block_alphas;
  std::vector<int64_t> conv_block_dims;
  std::vector<double> conv_block_alphas;
  bool unet = true;
  bool text_encoder = true;
};

// One module to wrap: its index in the model's list, rank and alpha (alpha 0 already replaced
// by the rank, as LoRAModule does).
struct Target {
  size_t index = 0;
  int64_t dim = 0;
  double alpha = 0;
};

// kohya's block number of a U-Net module for block_dims: 0..24 over diffusers names (SD1/SD2),
// 0..22 over SGM names (SDXL); -1 when the name belongs to no block.
int block_index(const std::string& name, bool sgm_names);

// True when the U-Net names are the original SGM ones (input_blocks_..., SDXL in sd-scripts).
bool uses_sgm_names(const std::vector<const sumi_module_info*>& modules);

// The wrapped modules in kohya's creation order (text encoder 1, text encoder 2, U-Net; model
// order within each). Throws sumi::Error (SUMI_ERR_INVALID_ARGUMENT) naming the setting on
// invalid block lists.
std::vector<Target> choose_targets(const std::vector<const sumi_module_info*>& modules, const Settings& s);

}  // namespace sumi::targets
