// `sumi plugins` and `sumi plugins show NAME`: what is installed, and each component's
// parameters with types, defaults and docs.
#include "commands.h"

#include "app.h"
#include "core/error.h"

#include <algorithm>
#include <cstdio>
#include <iostream>

namespace sumi::app {


int cmd_plugins(const std::vector<std::string>& args) {
  CommonOptions o;
  std::string help;
  if (!parse_common(args, o, help)) {
    std::cout << "usage: sumi plugins [show NAME] [--kind KIND] [--plugin-dir DIR]...\n\n" << help;
    return 0;
  }
  refuse_device(o, "sumi plugins");
  std::string show, kind_filter;
  for (size_t i = 0; i < o.rest.size(); ++i) {
    if (o.rest[i] == "show" && i + 1 < o.rest.size()) show = o.rest[++i];
    else if (o.rest[i] == "--kind" && i + 1 < o.rest.size()) kind_filter = o.rest[++i];
    else throw host::UserError("sumi plugins: unexpected argument '" + o.rest[i] + "' (usage: sumi plugins [show NAME] [--kind KIND])");
  }
  if (!kind_filter.empty() && !host::kind_from_name(kind_filter))
    throw host::UserError("sumi plugins: unknown kind '" + kind_filter +
                          "'; kinds: model, network, optimizer, lr_scheduler, noise_scheduler, tagger");
  auto pm = make_plugin_manager(o);
  std::vector<std::string> refusals;
  auto libs = pm.scan(&refusals);
  bool found = false;
  // What users type elsewhere shows the component it loads: kohya's module paths
  // (networks.lora_fa), an optimizer's spellings (DAdaptation, prodigyopt.Prodigy), a library path.
  bool exact = false;
  for (const auto* lib : libs)
    for (const auto& c : lib->components) exact |= show == c.component->name;
  if (!show.empty() && !exact) {
    const int32_t kinds[] = {SUMI_KIND_NETWORK, SUMI_KIND_OPTIMIZER, SUMI_KIND_MODEL, SUMI_KIND_LR_SCHEDULER,
                             SUMI_KIND_NOISE_SCHEDULER, SUMI_KIND_TAGGER};
    for (int32_t k : kinds) {
      if (!kind_filter.empty() && kind_filter != host::kind_name(k)) continue;
      try {
        const auto ref = pm.find(k, show);
        show = ref.component->name;
        if (std::find(libs.begin(), libs.end(), ref.library) == libs.end()) libs.push_back(ref.library);
        break;
      } catch (const std::exception&) {
      }
    }
  }
  if (show.empty()) std::printf("%-16s %-24s %-8s %s\n", "KIND", "NAME", "VERSION", "LIBRARY");
  for (const auto* lib : libs) {
    for (const auto& c : lib->components) {
      const auto& comp = *c.component;
      if (!kind_filter.empty() && kind_filter != host::kind_name(comp.kind)) continue;
      if (show.empty()) {
        std::printf("%-16s %-24s %-8s %s%s\n", host::kind_name(comp.kind), comp.name, lib->descriptor->version,
                    lib->path.c_str(), lib->descriptor->native ? " (native)" : "");
        continue;
      }
      if (show != comp.name) continue;
      found = true;
      std::printf("%s '%s' — %s\n  library: %s (%s %s, ABI %u.%u%s)\n", host::kind_name(comp.kind), comp.name,
                  comp.summary ? comp.summary : "", lib->path.c_str(), lib->descriptor->library,
                  lib->descriptor->version, lib->descriptor->abi_major, lib->descriptor->abi_minor,
                  lib->descriptor->native ? ", native" : "");
      if (comp.n_params == 0) std::printf("  parameters: none\n");
      for (int64_t i = 0; i < comp.n_params; ++i) {
        const auto& p = comp.params[i];
        std::printf("  %-20s %-11s default %-12s %s\n", p.key, host::param_type_name(p.type),
                    p.default_value ? p.default_value : "(required)", p.doc ? p.doc : "");
      }
    }
  }
  for (const auto& r : refusals) std::fprintf(stderr, "refused: %s\n", r.c_str());
  if (!show.empty() && !found)
    throw host::UserError("no plugin component named '" + show + "'; `sumi plugins` lists what is installed");
  return 0;
}

}  // namespace sumi::app
