// oft_file.h — which modules kohya's networks/oft.py wraps, and what an OFT file holds. Pure
// selection and key logic (no maths), kept apart so that "which keys do I read, how many blocks
// does this file have, which targets does it cover" can answer a probe / configure-from-weights
// call without building the network.
#pragma once

#include <sumi/sumi.h>
#include <sumi/tensor.hpp>

#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace sumi::oft {

// create_network's arguments: network_dim (number of blocks), network_alpha (the constraint
// per output channel) and the two network_args that widen the target set.
struct Settings {
  int64_t dim = 4;
  double alpha = 1.0;
  bool enable_all_linear = false;
  bool enable_conv = false;
};

// The OFT name of a U-Net module given the model's kohya LoRA name: "lora_unet_<path>" ->
// "oft_unet_<path>"; "" for a name without the "lora_unet_" prefix.
std::string oft_name(const std::string& lora_name);

// What kind of target a module is, judged from its name after "lora_unet_" / "oft_unet_":
// a Linear of kohya's CrossAttention (to_q, to_k, to_v, to_out.0), or a child of ResnetBlock2D /
// Downsample2D / Upsample2D (diffusers names for SD1/SD2, SGM names for SDXL).
bool is_attention_linear(const std::string& path);
bool in_resnet_or_sampler(const std::string& path, bool sgm_names);

// The wrapped modules (indices into `modules`), in model order: the U-Net's CrossAttention
// linears; with enable_all_linear every Linear and 1x1 conv of its transformer blocks; with
// enable_conv also every Linear and Conv2d of its ResNet blocks and up/down-samplers.
std::vector<size_t> choose_targets(const std::vector<const sumi_module_info*>& modules, const Settings& s);

// One module of an OFT file.
struct FileModule {
  Tensor blocks;  // "<name>.oft_blocks" [num_blocks, n, n]
  Tensor alpha;   // "<name>.alpha" (one number); undefined when the file has none
};

// An OFT file read by key: its modules and the settings it implies (what kohya's
// create_network_from_weights guesses, without its misses: enable_conv is seen from the
// module names, not from 4-d tensors that OFT files never hold).
struct FileLayout {
  std::map<std::string, FileModule> modules;  // by OFT module name
  int64_t num_blocks = 0;                     // of the first module (the network's dim)
  double alpha = 0;                           // of the first module with an alpha
  bool enable_all_linear = false;             // a module outside CrossAttention and ResNets
  bool enable_conv = false;                   // a module of a ResNet block or sampler
};

// Whether a file tensor is one an OFT network loads (a probe's answer): "oft_unet_<module>.oft_blocks"
// [B, n, n] or "oft_unet_<module>.alpha" (one number).
bool is_oft_tensor(const std::string& key, const std::vector<int64_t>& shape);

// The layout of a file from its names and shapes only (configure-from-weights): the modules
// (without tensors), num_blocks and the target flags; alpha stays 0. Throws as read_file.
FileLayout read_layout(const std::vector<std::string>& names, const std::vector<std::vector<int64_t>>& shapes);

// Sorts a file's tensors into modules. Throws sumi::Error naming the key for anything that is
// not "<oft module>.oft_blocks" [B, n, n] or "<oft module>.alpha" (one number).
FileLayout read_file(const std::vector<std::string>& names, const std::vector<Tensor>& tensors);

}  // namespace sumi::oft
