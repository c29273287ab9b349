#include "registry.h"

#include "error.h"

namespace sumi::host {

at::Tensor Registry::add(const std::string& component, const std::string& name, const at::Tensor& init,
                         const std::string& group, bool trainable) {
  if (!init.defined()) throw UserError("registry: '" + component + "/" + name + "' created from an undefined tensor");
  std::lock_guard<std::mutex> lock(mu_);
  std::string key = component + "/" + name;
  if (index_.count(key)) throw UserError("registry: '" + key + "' already exists; each name is created once");
  RegistryEntry e;
  e.component = component;
  e.name = name;
  e.group = group;
  e.trainable = trainable;
  {
    at::NoGradGuard no_grad;
    // On the run's device (host->device): a component's parameters and state live where it computes.
    e.tensor = init.device() == device_ ? init.detach().clone() : init.detach().to(device_);
  }
  if (trainable) e.tensor.set_requires_grad(true);
  index_[key] = entries_.size();
  entries_.push_back(e);
  return e.tensor;
}

const RegistryEntry* Registry::find(const std::string& component, const std::string& name) const {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = index_.find(component + "/" + name);
  return it == index_.end() ? nullptr : &entries_[it->second];
}

std::vector<RegistryEntry> Registry::entries() const {
  std::lock_guard<std::mutex> lock(mu_);
  return entries_;
}

std::vector<std::pair<std::string, std::vector<at::Tensor>>> Registry::param_groups(const std::string& component) const {
  std::lock_guard<std::mutex> lock(mu_);
  std::vector<std::pair<std::string, std::vector<at::Tensor>>> groups;
  for (const auto& e : entries_) {
    if (!e.trainable || e.component != component) continue;
    auto it = std::find_if(groups.begin(), groups.end(), [&](const auto& g) { return g.first == e.group; });
    if (it == groups.end()) {
      groups.push_back({e.group, {}});
      it = groups.end() - 1;
    }
    it->second.push_back(e.tensor);
  }
  return groups;
}

}  // namespace sumi::host

namespace sumi::host {

void Registry::set_lr_scale(const std::string& component, const std::string& group, double scale) {
  std::lock_guard<std::mutex> lock(mu_);
  lr_scale_[{component, group}] = scale;
}

double Registry::lr_scale(const std::string& component, const std::string& group) const {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = lr_scale_.find({component, group});
  return it == lr_scale_.end() ? 1.0 : it->second;
}

}  // namespace sumi::host
