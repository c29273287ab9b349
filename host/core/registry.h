// The one host-side registry of trainable parameters and persistent state, and the per-
// component context (validated configuration + registry namespace) behind sumi_context.
//
// Everything a component creates lives here under "<component>/<name>", so saving a network,
// checkpointing optimizer state for --resume and counting parameters all read one table.
#pragma once

#include <sumi/sumi.h>

#include <ATen/ATen.h>

#include <cstdint>
#include <map>
#include <mutex>
#include <string>
#include <vector>

namespace sumi::host {

struct RegistryEntry {
  std::string component;  // e.g. "network"
  std::string name;       // as the component named it, e.g. "lora_unet_x.lora_down.weight"
  std::string group;      // parameter group ("" = default); empty for state
  bool trainable = false;
  at::Tensor tensor;
  std::string key() const { return component + "/" + name; }
};

class Registry {
 public:
  // Registers a detached copy of `init` on this registry's device; trainable entries require
  // grad. Throws on duplicates.
  at::Tensor add(const std::string& component, const std::string& name, const at::Tensor& init,
                 const std::string& group, bool trainable);
  // The entry or nullptr.
  const RegistryEntry* find(const std::string& component, const std::string& name) const;
  // Snapshot of the entries, in creation order.
  std::vector<RegistryEntry> entries() const;
  // Trainable parameters of a component grouped by group name, groups in first-seen order.
  std::vector<std::pair<std::string, std::vector<at::Tensor>>> param_groups(const std::string& component) const;
  // The learning-rate multiplier of a component's group (param_group_lr_scale; 1 when unset).
  void set_lr_scale(const std::string& component, const std::string& group, double scale);
  double lr_scale(const std::string& component, const std::string& group) const;
  // The run's device (--device), which host->device answers to the components of this
  // registry; CPU unless set.
  void set_device(const c10::Device& device) { device_ = device; }
  const c10::Device& device() const { return device_; }

 private:
  mutable std::mutex mu_;
  std::vector<RegistryEntry> entries_;
  std::map<std::string, size_t> index_;
  std::map<std::pair<std::string, std::string>, double> lr_scale_;
  c10::Device device_{c10::kCPU};
};

// One typed configuration value (SUMI_PARAM_* in `type`).
struct ConfigValue {
  int32_t type = SUMI_PARAM_STRING;
  int64_t i = 0;
  double d = 0;
  bool b = false;
  std::string s;
  std::vector<double> doubles;
  std::vector<int64_t> ints;
};

}  // namespace sumi::host

struct sumi_context_s {
  std::string component;  // registry namespace, e.g. "optimizer"
  sumi::host::Registry* registry = nullptr;
  std::map<std::string, sumi::host::ConfigValue> config;
};
