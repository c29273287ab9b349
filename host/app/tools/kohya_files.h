// What kohya's tool scripts share: reading a LoRA / state dict the way they do (every tensor
// cast to float32, keys sorted as safetensors' load_file gives them), the save precision
// names, writing a file with the `sshs_*` hashes kohya computes over the serialisation with
// only the `ss_*` metadata (tensors laid out as the safetensors library lays them out: by
// dtype, then name), and Python's spelling of numbers in reports and metadata.
#pragma once

#include "sumi/io/safetensors_torch.h"
#include "app/train/train_metadata.h"

#include <ATen/core/Tensor.h>

#include <map>
#include <optional>
#include <string>
#include <vector>

namespace sumi::app::tools {

using Metadata = std::map<std::string, std::string>;

// A state dict as kohya loads it: tensors by name (sorted), float32 where floating, and the
// file's metadata (empty for .ckpt/.pt).
struct StateDict {
  std::string path;
  std::map<std::string, at::Tensor> tensors;
  Metadata metadata;
  const at::Tensor* find(const std::string& name) const;
};

// Reads a .safetensors or torch (.ckpt/.pt/.pth) file. `what` names the flag it came from,
// for errors ("--model"). Floating tensors are converted to `dtype` (kohya: float32).
StateDict read_state_dict(const std::string& path, const std::string& what, at::ScalarType dtype);

// The kohya LoRA modules of a state dict: the names before ".lora_down.weight", sorted.
struct LoraModule {
  std::string name;
  at::Tensor down, up;
  std::optional<at::Tensor> alpha;  // 0-dim
  int64_t rank() const { return down.size(0); }
};
std::vector<LoraModule> lora_modules(const StateDict& sd);

// kohya's --save_precision / --precision names: "float" / "fp32" -> float32, "fp16", "bf16".
// nullopt for "" (kohya's None).
std::optional<at::ScalarType> precision_type(const std::string& name);

// Refuses to write to a path that is one of the inputs (files are written to a temporary
// sibling and renamed, but replacing an input is never what a merge means) or that does not
// end with .safetensors (`flag` names the option).
void check_output(const std::string& out, const std::vector<std::string>& inputs, const std::string& flag);

struct Hashes {
  std::string model_hash, legacy_hash;
};
// kohya's precalculate_safetensors_hashes: sha256 of the data section of the file as the
// safetensors library serialises `tensors` with only the `ss_*` keys of `metadata`, and the
// first 8 hex digits of sha256 of its bytes 0x100000..0x10ffff.
Hashes kohya_hashes(const std::vector<std::pair<std::string, at::Tensor>>& tensors, const Metadata& metadata);

// Writes `tensors` atomically (temporary file + rename) in the safetensors library's layout.
void write_kohya(const std::string& path, std::vector<std::pair<std::string, at::Tensor>> tensors,
                 const Metadata& metadata);

// Python's repr() of a float ("2.0", "0.6666666865348816", "6.479024887084961e-05").
std::string py_float(double v);
// Python's format(v, ".Nf") and format(v, ".N%").
std::string py_fixed(double v, int decimals);
std::string py_percent(double v, int decimals);

// kohya's sai_model_spec.build_merged_from: each file's modelspec.title, else its file name
// without extension, joined with ", ".
std::string merged_from_titles(const std::vector<std::string>& files);

// A modelspec title from a file name: the name without folder and extension.
std::string file_stem(const std::string& path);

}  // namespace sumi::app::tools
