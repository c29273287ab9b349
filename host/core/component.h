// A live component instance: its host context (configuration + registry namespace), the
// plugin's `self`, and checked calls into its vtable. Destroys the instance on scope exit.
#pragma once

#include "error.h"
#include "plugin_manager.h"
#include "registry.h"

#include <map>
#include <memory>
#include <string>

namespace sumi::host {

// "float", "list of ints", ... for a SUMI_PARAM_* code.
const char* param_type_name(int32_t type);

// Parses a value written in recipe syntax ("0.1", "true", "0.9,0.99") as the spec's type.
// Throws UserError naming `where` (e.g. "[optimizer] betas").
ConfigValue parse_config_value(const sumi_param_spec& spec, const std::string& text, const std::string& where);

// The full configuration of a component: `given` (text values by key) validated against its
// schema, defaults filled. Unknown keys and missing required ones are errors.
std::map<std::string, ConfigValue> make_config(const sumi_component& c, const std::map<std::string, std::string>& given);

class Component {
 public:
  // `ns` is the registry namespace (normally the recipe section, e.g. "network").
  Component(ComponentRef ref, std::string ns, Registry& registry, std::map<std::string, ConfigValue> config);
  ~Component();
  Component(const Component&) = delete;
  Component& operator=(const Component&) = delete;

  const sumi_component& info() const { return *ref_.component; }
  const PluginLibrary& library() const { return *ref_.library; }
  void* self() const { return self_; }
  sumi_context* context() { return &ctx_; }
  // The run's device (its registry's): where this component computes.
  const c10::Device& device() const { return ctx_.registry->device(); }
  template <class VT>
  const VT& vtable() const {
    return *static_cast<const VT*>(ref_.component->vtable);
  }
  // Throws UserError "<kind> '<name>': <what>: <plugin's message>" unless status is OK.
  void check(sumi_status status, const char* what) const;
  // Size of the vtable the plugin declared (its struct_size): slots appended in a later ABI
  // minor than the plugin's are absent.
  size_t vtable_size() const { return *static_cast<const size_t*>(ref_.component->vtable); }
  // Throws UserError naming the component, the slot and the minor that added it unless the
  // plugin's vtable has it. Use with SUMI_HAS_FIELD, e.g.
  //   c.require_slot(SUMI_HAS_FIELD(&vt, sumi_model_vtable, save), "save", "1.1");
  void require_slot(bool present, const char* slot, const char* since) const;

 private:
  ComponentRef ref_;
  sumi_context ctx_;
  void* self_ = nullptr;
};

// Runs a plugin call, converting a C++ exception that escaped a hand-written plugin into a
// status (the skin never lets one escape; raw C++ plugins might).
template <class F>
sumi_status call_plugin(F&& f) noexcept {
  try {
    return f();
  } catch (const std::exception& e) {
    set_last_error(std::string("exception escaped the plugin: ") + e.what());
    return SUMI_ERR_EXCEPTION;
  } catch (...) {
    set_last_error("unknown exception escaped the plugin");
    return SUMI_ERR_EXCEPTION;
  }
}

}  // namespace sumi::host
