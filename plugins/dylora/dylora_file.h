// dylora_file.h — what a DyLoRA file holds. kohya saves DyLoRA in the LoRA format
// ("<module>.lora_down.weight" [rank, in(, k, k)], "<module>.lora_up.weight" [out, rank(, 1, 1)],
// "<module>.alpha"); the unit is not in the tensors. Kept apart from the maths so that "which keys
// do I read, which ranks does this file have, which sides does it cover" can answer a probe /
// configure-from-weights call without building the network.
#pragma once

#include <sumi/tensor.hpp>

#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace sumi::dylora {

struct FileModule {
  Tensor down, up;
  Tensor alpha;  // undefined when the file has none (old LoRA files: alpha = rank)
};

struct FileLayout {
  std::map<std::string, FileModule> modules;  // by kohya module name
  int64_t rank = 0;           // of the first module (sorted by name)
  bool mixed_ranks = false;   // modules of different ranks
  bool conv3x3 = false;       // a module with a k x k (k > 1) lora_down: conv_dim was given
  bool unet = false, text_encoder = false;  // lora_unet_* / lora_te* modules present
};

// Sorts a file's tensors into modules. Throws sumi::Error naming the key for anything that is
// not a kohya LoRA key, and for a module with lora_down but no lora_up or the other way round.
FileLayout read_file(const std::vector<std::string>& names, const std::vector<Tensor>& tensors);

}  // namespace sumi::dylora
