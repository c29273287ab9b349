// Facts about a model file or folder the host needs before loading it: which model component
// loads it (asked of the model plugins through their probe slot; the host knows no families)
// and its A1111 hash.
#pragma once

#include <string>

namespace sumi::host {
class PluginManager;
}

namespace sumi::app {

// The name of the first model component (in plugin search order) whose probe accepts `path`.
// Throws UserError listing every component's answer when none does.
std::string find_model_component(host::PluginManager& pm, const std::string& path);

// A1111's "Model hash" (AutoV2): the first 10 hex digits of the file's SHA-256; "" for folders.
std::string a1111_hash(const std::string& path);

}  // namespace sumi::app
