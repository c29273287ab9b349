// Filling a module's parameters from a name -> tensor map (diffusers / transformers naming,
// i.e. what named_parameters() of sumi's modules yields). Values are copied and converted to
// each parameter's dtype and device, so an F16 file loads into an F32 (or bf16, or CUDA) model.
#pragma once

#include <ATen/ATen.h>

#include <functional>
#include <map>
#include <string>
#include <vector>

namespace torch::nn {
class Module;
}

namespace sumi::nn {

using TensorMap = std::map<std::string, at::Tensor>;

struct LoadOptions {
  // Strict: every parameter must be present and every map entry must be used.
  bool strict = true;
  // Only entries under this prefix are considered, with the prefix stripped ("unet." ...).
  std::string prefix;
};

struct LoadReport {
  std::vector<std::string> loaded;
  std::vector<std::string> missing;     // parameters the map did not provide
  std::vector<std::string> unexpected;  // map entries no parameter took (known extras excluded)
};

// Throws std::runtime_error naming the key, the expected and the found shape on a shape
// mismatch, and (strict) listing missing / unexpected names.
LoadReport load_weights(torch::nn::Module& module, const TensorMap& weights,
                        const LoadOptions& options = {});

// The module's parameters by name, for saving or comparing.
TensorMap named_tensors(const torch::nn::Module& module);

// Replaces every parameter of `module` by `replace(name, current)` (same shape; e.g. the copy
// a host registry made of it), both in the module's parameter table and in the layer that
// computes with it, so forward uses the new tensors (and autograd accumulates into them).
// Throws std::logic_error for a parameter held by a layer type it does not know.
using ParameterReplacer = std::function<at::Tensor(const std::string& name, const at::Tensor& current)>;
void replace_parameters(torch::nn::Module& module, const ParameterReplacer& replace);

}  // namespace sumi::nn
