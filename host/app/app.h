// The application layer shared by sumi's commands: common options (plugin folders, threads),
// loading a recipe with kohya flags applied, and turning recipe sections into live plugin
// components.
#pragma once

#include "core/component.h"
#include "core/plugin_manager.h"
#include "core/registry.h"

#include <sumi/recipe/plan.h>
#include <sumi/recipe/value.h>

#include <memory>
#include <string>
#include <vector>

namespace sumi::app {

struct CommonOptions {
  std::vector<std::string> plugin_dirs;
  int threads = 0;           // 0 = all cores
  std::string device;        // --device: "cpu", "cuda", "cuda:N"; empty = the default (run_device)
  std::string recipe;        // path or preset name; empty = flags only
  std::vector<std::string> rest;  // kohya flags and --set overrides
};

// Parses sumi's own options out of `args`; everything else goes to `rest`. Throws on --help
// requests by returning false (the caller prints `help`).
bool parse_common(const std::vector<std::string>& args, CommonOptions& out, std::string& help);

// The device a run computes on, from --device: "cpu", "cuda" (device 0) or "cuda:N"; empty
// picks CUDA device 0 when this libtorch build has CUDA and a GPU is present, else the CPU.
// Throws UserError naming what was given for anything else, for CUDA in a CPU-only build or
// on a machine without GPU, and for an index past the devices present.
c10::Device run_device(const std::string& text);
// For commands that compute nothing on a device: refuses --device, naming `command`.
void refuse_device(const CommonOptions& o, const std::string& command);

// Plugin manager with the search path of these options.
host::PluginManager make_plugin_manager(const CommonOptions& o);

// Tells the prompt reader which sampler names exist: every noise-scheduler component the plugin
// search path holds (so a third party's sampler can be picked with --ss / sample_sampler).
void register_sampler_names(host::PluginManager& pm);

// Folders searched for presets: ./presets, <prefix>/share/sumi/presets, the source tree's.
std::vector<std::string> preset_dirs();

// The recipe tree: the recipe file (or preset) with the kohya flags / --set of `o.rest` applied.
recipe::Value load_recipe_tree(const CommonOptions& o);

// The plugin schema of every plugin section the tree names (loading each plugin's descriptor,
// never its weights). Throws naming the section when a plugin is missing.
recipe::PluginSchemas plugin_schemas(const recipe::Value& root, host::PluginManager& pm);

// Resolves one section against the host's keys and its plugin's schema.
recipe::ResolvedSection resolve(const recipe::Value& root, const std::string& section, const recipe::PluginSchemas& s);

// Instantiates the plugin a resolved plugin section names, configured with the section's plugin keys.
std::unique_ptr<host::Component> instantiate(int32_t kind, const recipe::ResolvedSection& section,
                                             host::PluginManager& pm, host::Registry& registry);

// Attaches a network component to a model: lets it choose among the model's modules, fills it
// from `weights_file` (kohya keys; "" = keep its initial weights), sets the multiplier and
// training mode, and routes the model's forward through it. Returns the selection per module.
std::vector<int32_t> attach_network(host::Component& model, host::Component& network, const std::string& weights_file,
                                    double multiplier, bool training);
// The same without routing the model's forward through it (for several networks at once or a
// merge): attach, fill, multiplier, training mode; returns the selection.
std::vector<int32_t> prepare_network(host::Component& model, host::Component& network, const std::string& weights_file,
                                     double multiplier, bool training);

}  // namespace sumi::app
