// A checkpoint loaded through its model plugin (sd1 / sd2 / sdxl), for the tools that change
// or compare a model's weights: the plugin maps the checkpoint's tensors to kohya's module
// names (its `modules` call, the same list LoRA networks attach to and --network_merge merges
// into), so the host never carries a family's key names.
#pragma once

#include "core/component.h"
#include "core/plugin_manager.h"
#include "core/registry.h"

#include <ATen/core/Tensor.h>

#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace sumi::app::tools {

struct ModelModule {
  std::string name;  // kohya LoRA module name ("lora_unet_..._proj_in")
  int32_t kind = 0;  // SUMI_MODULE_*
  int32_t role = 0;  // SUMI_ROLE_*
  bool in_transformer = false;
  at::Tensor weight;  // shares the model's storage: writing it changes the model
};

// The family a tool works on: `forced` ("sd1", "sd2", "sdxl" from --v2 / --sdxl / the
// command) checked against what the file's tensor names say; `flag` names the file's flag.
std::string model_family(const std::string& path, const std::string& flag, const std::string& forced,
                         const std::string& hint);

class PluginModel {
 public:
  // Loads `path` with the family's model plugin, weights in float32; `config` sets more of the
  // plugin's parameters (e.g. clip_skip).
  PluginModel(host::PluginManager& pm, host::Registry& registry, const std::string& family, const std::string& path,
              const std::string& ns, const std::map<std::string, std::string>& config = {});
  ~PluginModel();
  const std::vector<ModelModule>& modules() const { return modules_; }
  const ModelModule* find(const std::string& name) const;
  // The module list as the plugin gives it (for a network's attach).
  const sumi_module_info* raw_modules(int64_t& n) const;
  host::Component& component() { return *model_; }
  // Writes the whole model as a single original-layout .safetensors file (atomically);
  // `dtype` converts floating-point weights.
  void save(const std::string& path, std::optional<at::ScalarType> dtype);

 private:
  std::unique_ptr<host::Component> model_;
  std::vector<ModelModule> modules_;
};

// Plugin folders from the tools' --plugin-dir flags.
host::PluginManager tool_plugin_manager(const std::vector<std::string>& dirs);

}  // namespace sumi::app::tools
