// Shared set-up for tests that drive plugins through the host: a plugin manager over the build's plugin folders and a
// helper to instantiate a component with text configuration.
#pragma once

#include "core/component.h"
#include "core/plugin_manager.h"
#include "core/registry.h"

#include <map>
#include <memory>
#include <string>

namespace sumi::test {

inline host::PluginManager& plugins() {
  static host::PluginManager pm = [] {
    host::PluginManager m;
    m.add_search_dir(SUMI_PLUGIN_DIR);
    return m;
  }();
  return pm;
}

#ifdef SUMI_TEST_PLUGIN_DIR
inline std::string test_plugin(const std::string& name) { return std::string(SUMI_TEST_PLUGIN_DIR) + "/" + name + ".so"; }
#endif

inline std::unique_ptr<host::Component> make(int32_t kind, const std::string& name, host::Registry& reg,
                                             const std::map<std::string, std::string>& config = {},
                                             const std::string& ns = "test") {
  auto ref = plugins().find(kind, name);
  return std::make_unique<host::Component>(ref, ns, reg, host::make_config(*ref.component, config));
}

}  // namespace sumi::test
