// Finding, loading and checking plugin libraries.
//
// Search order: directories given with --plugin-dir, then $SUMI_PLUGIN_PATH (colon-separated),
// then the plugin folder next to the running binary (build tree and install prefix share the
// layout <prefix>/lib/sumi/plugins). Libraries are opened RTLD_NOW | RTLD_LOCAL and never
// unloaded: a loaded plugin may own autograd nodes, vtables and strings the host still holds.
#pragma once

#include <sumi/sumi.h>

#include <memory>
#include <string>
#include <vector>

namespace sumi::host {

struct PluginLibrary;

// A component inside a loaded library.
struct ComponentRef {
  const PluginLibrary* library = nullptr;
  const sumi_component* component = nullptr;
};

struct PluginLibrary {
  std::string path;
  const sumi_plugin_descriptor* descriptor = nullptr;
  std::vector<ComponentRef> components;
};

const char* kind_name(int32_t kind);
// "network" -> SUMI_KIND_NETWORK; 0 when unknown.
int32_t kind_from_name(const std::string& name);

class PluginManager {
 public:
  PluginManager();
  // Directories searched first (--plugin-dir), in order.
  void add_search_dir(const std::string& dir);
  const std::vector<std::string>& search_dirs() const { return dirs_; }

  // Loads and checks one library; throws UserError saying why it was refused.
  const PluginLibrary& load(const std::string& path);

  // Finds a component by what a user typed: a name ("lora"), a Python-style module name
  // ("networks.lora"), or a path to a library. Throws with the available names on failure.
  ComponentRef find(int32_t kind, const std::string& spec);

  // Every loadable library in the search path; refusals are collected in `refusals`.
  std::vector<const PluginLibrary*> scan(std::vector<std::string>* refusals = nullptr);

 private:
  std::vector<std::string> dirs_;
  bool scanned_ = false;
};

// Host's own native build, as compared against sumi_native_info.
const sumi_native_info& host_native_info();

}  // namespace sumi::host
