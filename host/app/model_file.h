// Facts about a model file or folder the host needs before loading it: which model component
// loads it (asked of the model plugins through their probe slot; the host knows no families)
// and its A1111 hash.
#pragma once

#include <string>
#include <vector>

namespace sumi::host {
class PluginManager;
}

namespace sumi::app {

// kohya's family flags as its scripts spell them (without dashes). The host gives them no
// meaning of its own: a model plugin's probe answer (and describe) lists the flags that name its
// model under "kohya_flags". kKohyaV1 is kohya's name for the model its scripts load when no
// family flag is given: a component no kohya flag names.
inline constexpr const char* kKohyaV1 = "v1";
inline constexpr const char* kKohyaV2 = "v2";
inline constexpr const char* kKohyaSdxl = "sdxl";

// The first model component (in plugin search order) whose probe accepts `path`, with the kohya
// flags its answer lists. Throws UserError listing every component's answer when none does.
struct ModelFileMatch {
  std::string component;
  std::vector<std::string> kohya_flags;
};
ModelFileMatch probe_model_file(host::PluginManager& pm, const std::string& path);

// The name of the first model component (in plugin search order) whose probe accepts `path`.
// Throws UserError listing every component's answer when none does. `kohya_flags` are the
// family flags the user gave (kohya's "v2", "sdxl", without dashes): each must be one the
// accepting component's probe answer lists under "kohya_flags" (the model says which of kohya's
// flags name it; the host knows none), else a UserError says which flag does not fit the file.
std::string find_model_component(host::PluginManager& pm, const std::string& path,
                                 const std::vector<std::string>& kohya_flags = {});

// A1111's "Model hash" (AutoV2): the first 10 hex digits of the file's SHA-256; "" for folders.
std::string a1111_hash(const std::string& path);

}  // namespace sumi::app
