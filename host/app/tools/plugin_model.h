// A checkpoint loaded through its model plugin, for the tools that change or compare a model's
// weights: the plugin maps the checkpoint's tensors to kohya's module names (its `modules` call,
// the same list LoRA networks attach to and --network_merge merges into), so the host never
// carries a family's key names. Which component loads a file, and what kohya's family flags and
// metadata names mean, the model plugins say (probe, describe); the tools keep no tables.
#pragma once

#include "app/model_description.h"
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

// The model component that loads `path` (the model plugins' probe). `flag` names the option the
// path came from ("--sd_model"). `given`: the kohya family flags the user typed (without dashes,
// e.g. "v2"): each must name that component (kKohyaV1: a component no flag names), else a
// UserError says to drop it. `implied`: the flag the command's name stands for (sdxl_merge_lora:
// "sdxl"; "" for none): a file of a model it does not name is refused with `hint`. With no flag
// the component that accepts the file is used.
std::string tool_model_component(host::PluginManager& pm, const std::string& path, const std::string& flag,
                                 const std::vector<std::string>& given, const std::string& implied = "",
                                 const std::string& hint = "");

// What model component `component` says of itself without a file (describe before load) for
// kohya's metadata: v-prediction as `v_parameterization` (kohya's flag, set on a component that
// has that option), or when nullopt as kohya's default: on for the models its --v2 names.
ModelDescription describe_for_kohya(host::PluginManager& pm, const std::string& component,
                                    std::optional<bool> v_parameterization = std::nullopt);

// The model component kohya LoRA files were made for, from their metadata (ss_base_model_version
// when present, ss_v2) and the flag the command implies (`implied`, "" for none), with its
// description (v-prediction as ss_v2, as kohya marks such merges). Each model component is
// described without a file: the one whose kohya_base_model_version is the files' wins; else one
// of the files' ss_v2 that the implied flag (or, with none, no flag) names. Throws a UserError
// naming `what` when no component fits.
struct LoraModel {
  std::string component;
  ModelDescription description;
};
LoraModel model_for_lora_files(host::PluginManager& pm, const std::optional<std::string>& base_model_version, bool v2,
                               const std::string& implied, const std::string& what);

class PluginModel {
 public:
  // Loads `path` with model component `component`, weights in float32; `config` sets more of
  // the plugin's parameters (e.g. clip_skip).
  PluginModel(host::PluginManager& pm, host::Registry& registry, const std::string& component, const std::string& path,
              const std::string& ns, const std::map<std::string, std::string>& config = {});
  ~PluginModel();
  const std::vector<ModelModule>& modules() const { return modules_; }
  const ModelModule* find(const std::string& name) const;
  // The module list in this host's layout (for a network's attach).
  std::vector<sumi_module_info> module_infos() const;
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
