// Several networks (LoRAs...) on one model, as gen_img's --network_module lists them: applied at
// runtime through one chain the model calls (each network adds its part to the output of the
// ones before it, the order kohya's wrapped forwards run in), or merged once into the model's
// weights (W += each network's weight_delta at its multiplier; no runtime cost afterwards).
#pragma once

#include "core/component.h"

#include <memory>
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

  // One multiplier per network.
  void set_multipliers(const std::vector<double>& multipliers);
  // Routes the model's wrapped modules through every network, in the order added.
  void apply();
  // Adds every network's delta to the model's base weights, then detaches them from the
  // forward (the model runs plain, merged weights). Done once: merging again would add twice.
  void merge();
  bool merged() const { return merged_; }

 private:
  struct Net {
    std::unique_ptr<host::Component> component;
    std::vector<int32_t> selected;
  };
  static sumi_status forward(void* self, int64_t module_index, sumi_tensor input, sumi_tensor base_output,
                             sumi_tensor* out);

  host::Component& model_;
  std::vector<Net> nets_;
  bool applied_ = false, merged_ = false;
};

}  // namespace sumi::app
