// What the host asks a network plugin about a weights file (ABI 1.3's network contract), and
// the model's module list in the layout each network was built for. The host knows no network
// by name: which plugin reads a file (probe), the settings the file implies (ranks, alphas,
// coverage: configure_from_weights) and what a saved file says (metadata) come from the plugin.
#pragma once

#include <sumi/sumi.h>

#include "core/component.h"
#include "core/plugin_manager.h"

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

namespace sumi::app {

// A weights file as probe / configure_from_weights see it: its tensors' names and shapes (the
// safetensors header only) and its metadata as a JSON object of strings.
struct WeightsFile {
  std::string path;
  std::vector<std::string> names;
  std::vector<std::vector<int64_t>> shapes;
  std::map<std::string, std::string> metadata;
  std::string metadata_json;
  // The ABI's view, pointing into this object.
  std::vector<sumi_file_tensor> tensors() const;
};
// Reads the header of a .safetensors file; anything else is refused naming the file.
WeightsFile read_weights_file(const std::string& path);

// The model's adaptable modules in this host's sumi_module_info layout, whatever ABI the model
// was built for (a 1.0 - 1.2 model's elements have no bias: NULL).
std::vector<sumi_module_info> model_modules(host::Component& model);
// network->attach with `modules` in the layout the network was built for (1.0 - 1.2 networks
// index a 104-byte array). `selected` gets one flag per module.
void attach_modules(host::Component& network, const std::vector<sumi_module_info>& modules, std::vector<int32_t>& selected);

// Per tensor of `f`, whether `network` would load it; nullopt for a network built before ABI 1.3
// (no probe slot).
std::optional<std::vector<int32_t>> probe_network(host::Component& network, const WeightsFile& f);
// Before attach: the network takes the ranks and coverage of `f` (configure_from_weights, kohya's
// create_network_from_weights). False for a network built before ABI 1.3 (no slot: its
// configuration stays the user's).
bool configure_network_from_file(host::Component& network, const WeightsFile& f);

// --network_weights without --network_module: the name of the network component that reads every
// tensor of `f`, asking each network plugin's probe. Several: the one the file's
// ss_network_module names, else the first by name. None: a UserError naming the tensors that no
// network understood (those of the network that understood most).
std::string find_network_component(host::PluginManager& pm, const WeightsFile& f);

// What a saved network file says about the network (ABI 1.3 metadata: ss_network_dim,
// ss_network_alpha, ...); empty for a network that says nothing or predates the slot.
std::map<std::string, std::string> network_metadata_of(host::Component& network);

}  // namespace sumi::app
