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
#include <map>
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
  // kohya's modules_dim (create_network_from_weights): when not empty, exactly the modules named
  // here are wrapped, each at its own rank, among kohya's containers with the ResNet / sampler
  // ones included (as kohya does for a file); dim, conv_dim and the block lists are then unused.
  std::map<std::string, int64_t> module_dims;
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

// ---- kohya's block-wise learning rates (networks/lora.py down_lr_weight / mid_lr_weight /
// up_lr_weight / block_lr_zero_threshold), for SD1/SD2 U-Nets (diffusers names).

// A weight list as kohya reads it: "a,b,c" (empty entries are 0, a list shorter than 12 is
// filled with 1), or a preset "cosine", "sine", "linear", "reverse_linear", "zeros" with an
// optional "+offset" added to every value ("sine+.5"). 12 values, the down (or up) blocks
// from the shallowest to the deepest. Throws sumi::Error naming `key` on anything else
// (kohya ignores an unknown preset with a printed message; sumi refuses it).
std::vector<double> block_lr_weight_list(const std::string& text, const std::string& key, const std::string& network);

struct BlockLrWeights {
  bool set = false;            // any of the three given: the U-Net is split into block groups
  std::vector<double> down;    // 12 values or empty (all 1)
  double mid = 1.0;
  std::vector<double> up;      // 12 values or empty (all 1)
  // kohya's get_lr_weight: the weight of block_index() `block` (-1 and unset parts: 1).
  double weight(int block) const;
};

// kohya's parse_block_lr_kwargs: empty strings are "not given"; weights not above
// `zero_threshold` become 0 (those blocks are not trained).
BlockLrWeights block_lr_weights(const std::string& down, const std::string& mid, const std::string& up, double zero_threshold,
                                const std::string& network);

// ---- kohya's LoRA file format ("<module>.lora_down.weight", "<module>.lora_up.weight",
// "<module>.alpha"), shared by lora, lora_fa, DyLoRA's output and resized LoRAs.

// The module part of a LoRA file key, and in `part` its suffix (".lora_down.weight",
// ".lora_up.weight" or ".alpha"); "" when the key is none of these.
std::string lora_key_module(const std::string& key, std::string* part = nullptr);
// Whether a tensor of that name and shape is one a LoRA network loads: down [r, in] or
// [r, in, kh, kw], up [out, r] or [out, r, 1, 1], alpha one number.
bool is_lora_tensor(const std::string& key, const std::vector<int64_t>& shape);
// kohya's modules_dim from a LoRA file: each module's rank (its lora_down's first dimension).
// Throws sumi::Error naming the first tensor that is not a LoRA tensor (`network` prefixes it).
std::map<std::string, int64_t> lora_file_ranks(const std::vector<std::string>& names, const std::vector<std::vector<int64_t>>& shapes,
                                               const std::string& network);

}  // namespace sumi::targets
