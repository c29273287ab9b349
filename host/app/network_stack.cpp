#include "network_stack.h"

#include "app.h"
#include "network_settings.h"

#include "core/error.h"
#include "core/typed_plugins.h"
#include "core/op_bridge.h"
#include "core/tensor_handle.h"

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>

#include <cstdio>
#include <mutex>
#include <stdexcept>

namespace sumi::app {

NetworkStack::~NetworkStack() {
  // The model must not call into networks that are about to be destroyed.
  if (applied_) host::ModelPlugin(model_).detach_network_noexcept();
}

void NetworkStack::add(std::unique_ptr<host::Component> network, std::vector<int32_t> selected) {
  if (applied_ || merged_) throw std::logic_error("NetworkStack::add after apply/merge");
  nets_.push_back({std::move(network), std::move(selected)});
}

void NetworkStack::set_multipliers(const std::vector<double>& multipliers) {
  if (merged_) throw host::UserError("network multipliers cannot change after --network_merge (the deltas are in the weights)");
  if (multipliers.size() != nets_.size())
    throw std::logic_error("NetworkStack::set_multipliers: " + std::to_string(multipliers.size()) + " values for " +
                           std::to_string(nets_.size()) + " networks");
  if (pre_calc_ && multipliers == merged_muls_) return;
  for (size_t i = 0; i < nets_.size(); ++i) {
    host::NetworkPlugin(*nets_[i].component).set_multiplier(multipliers[i]);
  }
  if (!pre_calc_) return;
  // kohya's restore_weights + pre_calculation: back to the base weights, then merged again.
  const std::vector<sumi_module_info> mods = model_modules(model_);
  at::NoGradGuard no_grad;
  for (const auto& [i, saved] : backup_) {
    host::unwrap(mods[static_cast<size_t>(i)].weight).copy_(saved.first);
    if (saved.second.defined()) host::unwrap(mods[static_cast<size_t>(i)].bias).copy_(saved.second);
  }
  add_deltas("--network_pre_calc");
  merged_muls_ = multipliers;
}

sumi_status NetworkStack::forward(void* self, int64_t module_index, sumi_tensor input, sumi_tensor base_output,
                                  sumi_tensor* out) {
  auto* stack = static_cast<NetworkStack*>(self);
  sumi_tensor current = nullptr;  // owned once a network has run
  for (const Net& n : stack->nets_) {
    if (!n.selected.at(static_cast<size_t>(module_index))) continue;
    const auto& nvt = n.component->vtable<sumi_network_vtable>();
    sumi_tensor next = nullptr;
    const sumi_status st = host::call_plugin(
        [&] { return nvt.forward(n.component->self(), module_index, input, current ? current : base_output, &next); });
    if (current) host::release_handle(current);
    if (st != SUMI_OK) return st;
    current = next;
  }
  if (!current) {
    const sumi_status st = host::guarded([&] { current = host::make_handle(host::unwrap(base_output)); });
    if (st != SUMI_OK) return st;
  }
  *out = current;
  return SUMI_OK;
}

void NetworkStack::apply() {
  if (merged_) throw std::logic_error("NetworkStack::apply after merge");
  if (nets_.empty()) return;
  static const sumi_network_vtable chain = [] {
    sumi_network_vtable v{};
    v.struct_size = sizeof(sumi_network_vtable);
    v.forward = &NetworkStack::forward;
    return v;
  }();
  std::vector<int32_t> any(nets_.front().selected.size(), 0);
  for (const Net& n : nets_)
    for (size_t i = 0; i < any.size(); ++i) any[i] = any[i] || n.selected.at(i);
  host::ModelPlugin(model_).set_network(this, &chain, any.data());
  applied_ = true;
}

void NetworkStack::detach() {
  if (!applied_) return;
  host::ModelPlugin(model_).set_network(nullptr, nullptr, nullptr);
  applied_ = false;
}

void NetworkStack::merge(const char* flag) {
  if (merged_ || pre_calc_) throw std::logic_error("NetworkStack::merge twice");
  detach();
  add_deltas(flag);
  merged_ = true;
}

void NetworkStack::pre_calc(const std::vector<double>& multipliers) {
  if (merged_ || pre_calc_) throw std::logic_error("NetworkStack::pre_calc after a merge");
  detach();
  const std::vector<sumi_module_info> mods = model_modules(model_);
  for (const Net& net : nets_)
    for (size_t i = 0; i < mods.size(); ++i) {
      if (!net.selected.at(i) || backup_.count(static_cast<int64_t>(i))) continue;
      if (!mods[i].weight)
        throw host::UserError(std::string("--network_pre_calc: the model gives no base weight for module '") + mods[i].name +
                              "'; apply the network at runtime instead (drop --network_pre_calc)");
      at::Tensor b = mods[i].bias ? host::unwrap(mods[i].bias).clone() : at::Tensor();
      backup_[static_cast<int64_t>(i)] = {host::unwrap(mods[i].weight).clone(), b};
    }
  pre_calc_ = true;
  set_multipliers(multipliers);
}

void NetworkStack::add_deltas(const char* flag) {
  const std::string f = flag;
  const std::vector<sumi_module_info> mods = model_modules(model_);
  const auto n = static_cast<int64_t>(mods.size());
  at::NoGradGuard no_grad;
  for (const Net& net : nets_) {
    host::NetworkPlugin network(*net.component);
    for (int64_t i = 0; i < n; ++i) {
      if (!net.selected.at(static_cast<size_t>(i))) continue;
      if (!mods[i].weight)
        throw host::UserError(std::string(f + ": the model gives no base weight for module '") + mods[i].name +
                              "'; apply the network at runtime instead (drop " + f + ")");
      const at::Tensor delta = network.weight_delta(i);
      at::Tensor w = host::unwrap(mods[i].weight);  // shares the model's storage
      if (!delta.defined() || !delta.sizes().equals(w.sizes()))
        throw host::UserError(std::string(f + ": the network's delta for module '") + mods[i].name +
                              "' does not have the shape of its weight");
      // Added in float32, then rounded once to the weight's dtype.
      w.copy_(w.to(at::kFloat).add_(delta.to(w.device(), at::kFloat)));
      // ABI 1.3: an output-scaling network changes the bias too.
      const at::Tensor bdelta = network.bias_delta(i);
      if (!bdelta.defined()) continue;
      if (!mods[i].bias)
        throw host::UserError(std::string(f + ": the network changes the bias of module '") + mods[i].name +
                              "', which has none (or the model, built before ABI 1.3, does not give it); drop " + f);
      at::Tensor b = host::unwrap(mods[i].bias);
      if (!bdelta.sizes().equals(b.sizes()))
        throw host::UserError(std::string(f + ": the network's bias delta for module '") + mods[i].name +
                              "' does not have the shape of its bias");
      b.copy_(b.to(at::kFloat).add_(bdelta.to(b.device(), at::kFloat)));
    }
  }
}

void merge_network_files(host::PluginManager& pm, host::Component& model, const std::vector<std::string>& files,
                         const std::vector<double>& multipliers) {
  if (multipliers.size() > files.size())
    throw host::UserError("--base_weights_multiplier: " + std::to_string(multipliers.size()) + " multipliers for " +
                          std::to_string(files.size()) + " --base_weights files; give one per file (a missing one is 1.0)");
  if (files.empty()) return;
  // Creating the base networks draws their initial values (then overwritten by the files) from the
  // global generator; its state is put back so the run's draws (the trained network's init, noise,
  // timesteps) are those of a run on a model merged beforehand.
  at::Generator cpu = at::detail::getDefaultCPUGenerator();
  at::Tensor rng_state;
  {
    std::lock_guard<std::mutex> lock(cpu.mutex());
    rng_state = cpu.get_state();
  }
  host::Registry scratch;  // the merged networks' tensors are not the run's
  NetworkStack stack(model);
  for (size_t i = 0; i < files.size(); ++i) {
    const double mul = i < multipliers.size() ? multipliers[i] : 1.0;
    const WeightsFile f = read_weights_file(files[i]);
    auto ref = pm.find(SUMI_KIND_NETWORK, find_network_component(pm, f));
    auto net = std::make_unique<host::Component>(ref, "base_weights" + std::to_string(i), scratch,
                                                 host::make_config(*ref.component, {}));
    configure_network_from_file(*net, f);
    auto selected = prepare_network(model, *net, files[i], mul, false);
    std::printf("[train] merging %s (%s) with multiplier %g\n", files[i].c_str(), ref.component->name, mul);
    stack.add(std::move(net), std::move(selected));
  }
  stack.merge("--base_weights");
  std::lock_guard<std::mutex> lock(cpu.mutex());
  cpu.set_state(rng_state);
}

}  // namespace sumi::app
