// Several networks (LoRAs...) on one model, as gen_img's --network_module lists them: applied at
// runtime through one chain the model calls (each network adds its part to the output of the
// ones before it, the order kohya's wrapped forwards run in), or merged once into the model's
// weights (W += each network's weight_delta at its multiplier; no runtime cost afterwards).
#pragma once

#include "core/component.h"
#include "core/plugin_manager.h"

#include <ATen/core/Tensor.h>

#include <map>
#include <memory>
#include <string>
#include <vector>

namespace sumi::app {

class NetworkStack {
 public:
  explicit NetworkStack(host::Component& model) : model_(model) {}
  ~NetworkStack();
  NetworkStack(const NetworkStack&) = delete;
  NetworkStack& operator=(const NetworkStack&) = delete;

  // Takes a network already attached to this model and loaded; `selected` is its attach result.
  void add(std::unique_ptr<host::Component> network, std::vector<int32_t> selected);
  size_t size() const { return nets_.size(); }
  host::Component& network(size_t i) { return *nets_.at(i).component; }

  // One multiplier per network. After pre_calc(): restores the base weights and merges the
  // networks again at these multipliers (nothing when they are the ones merged already).
  void set_multipliers(const std::vector<double>& multipliers);
  // Routes the model's wrapped modules through every network, in the order added.
  void apply();
  // Adds every network's delta to the model's base weights, then detaches them from the
  // forward (the model runs plain, merged weights). Done once: merging again would add twice.
  // `flag` names what asked for the merge in errors ("--base_weights").
  void merge(const char* flag = "--network_merge");
  bool merged() const { return merged_; }
  // gen_img's --network_pre_calc: keeps a copy of every wrapped module's weight and bias, then
  // merges as merge() does; unlike merge(), set_multipliers (a prompt's --am) may change the
  // multipliers later, each change restoring the copies and merging again.
  void pre_calc(const std::vector<double>& multipliers);

 private:
  struct Net {
    std::unique_ptr<host::Component> component;
    std::vector<int32_t> selected;
  };
  static sumi_status forward(void* self, int64_t module_index, sumi_tensor input, sumi_tensor base_output,
                             sumi_tensor* out);

  // Adds every network's weight (and bias) delta at its current multiplier to the model.
  void add_deltas(const char* flag);
  void detach();

  host::Component& model_;
  std::vector<Net> nets_;
  bool applied_ = false, merged_ = false, pre_calc_ = false;
  // --network_pre_calc: module index -> its base weight and bias (undefined when none), and the
  // multipliers merged now.
  std::map<int64_t, std::pair<at::Tensor, at::Tensor>> backup_;
  std::vector<double> merged_muls_;
};

// kohya's --base_weights (train_network.py): each file merged into `model`'s weights at its
// multiplier (entries missing from `multipliers`: 1.0), by the network plugin whose probe reads it,
// configured from the file, as sumi generate loads a file without --network_module. The networks
// live in a scratch registry and are gone afterwards; only the model's weights changed. More
// multipliers than files, or a file that no plugin reads, is a UserError naming it.
void merge_network_files(host::PluginManager& pm, host::Component& model, const std::vector<std::string>& files,
                         const std::vector<double>& multipliers);

}  // namespace sumi::app
