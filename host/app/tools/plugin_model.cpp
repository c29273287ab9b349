#include "app/tools/plugin_model.h"

#include "app/app.h"
#include "app/model_file.h"
#include "app/network_settings.h"
#include "core/error.h"
#include "core/plugin_manager.h"
#include "core/tensor_handle.h"
#include "core/typed_plugins.h"

#include <sumi/sumi.h>

#include <algorithm>
#include <filesystem>
#include <iostream>

namespace sumi::app::tools {

namespace {

bool has(const std::vector<std::string>& v, const std::string& x) { return std::find(v.begin(), v.end(), x) != v.end(); }

// "no kohya family flag names" / "kohya's --v2 names": what a component's kohya_flags say.
std::string named_by(const std::vector<std::string>& flags) {
  std::string listed;
  for (const auto& f : flags) listed += (listed.empty() ? "--" : ", --") + f;
  return listed.empty() ? "no kohya family flag names" : "kohya's " + listed + " names";
}

bool has_param(const sumi_component& c, const char* key) {
  for (int64_t i = 0; i < c.n_params; ++i)
    if (std::string(c.params[i].key) == key) return true;
  return false;
}

}  // namespace

std::string tool_model_component(host::PluginManager& pm, const std::string& path, const std::string& flag,
                                 const std::vector<std::string>& given, const std::string& implied, const std::string& hint) {
  if (!std::filesystem::exists(path)) throw host::UserError(flag + " '" + path + "' does not exist");
  ModelFileMatch m;
  try {
    m = probe_model_file(pm, path);
  } catch (const host::UserError& e) {
    throw host::UserError(flag + " " + e.what());
  }
  for (const auto& f : given) {
    const bool names = f == kKohyaV1 ? m.kohya_flags.empty() : has(m.kohya_flags, f);
    if (!names)
      throw host::UserError(flag + " '" + path + "': --" + f + " was given, but the file is loaded by model component '" +
                            m.component + "', which " + named_by(m.kohya_flags) + "; drop --" + f +
                            " (sumi detects the model from the file)" + (hint.empty() ? "" : "; " + hint));
  }
  if (!implied.empty() && !has(m.kohya_flags, implied))
    throw host::UserError(flag + " '" + path + "' is loaded by model component '" + m.component + "', which " +
                          named_by(m.kohya_flags) + ", not by one kohya's --" + implied + " names (this command's model)" +
                          (hint.empty() ? "" : "; " + hint));
  return m.component;
}

ModelDescription describe_for_kohya(host::PluginManager& pm, const std::string& component,
                                    std::optional<bool> v_parameterization) {
  const auto ref = pm.find(SUMI_KIND_MODEL, component);
  auto described = [&](bool v) {
    std::map<std::string, std::string> cfg;
    if (v && has_param(*ref.component, "v_parameterization")) cfg["v_parameterization"] = "true";
    host::Registry registry;
    host::Component c(ref, "describe", registry, host::make_config(*ref.component, cfg));
    return describe(c);
  };
  ModelDescription d = described(v_parameterization.value_or(false));
  if (!v_parameterization && d.kohya_v2) d = described(true);
  return d;
}

LoraModel model_for_lora_files(host::PluginManager& pm, const std::optional<std::string>& base_model_version, bool v2,
                               const std::string& implied, const std::string& what) {
  // The components of the files' ss_v2 that the command's flag names, each described as kohya
  // marks the merge (v-prediction with ss_v2). A component that gives no kohya names (or cannot
  // describe itself without a file) is no model kohya's LoRA files are for.
  std::vector<LoraModel> fits;
  for (const auto* lib : pm.scan())
    for (const auto& ref : lib->components) {
      if (ref.component->kind != SUMI_KIND_MODEL) continue;
      LoraModel m{ref.component->name, {}};
      try {
        m.description = describe_for_kohya(pm, m.component, v2);
      } catch (const host::UserError&) {
        continue;
      }
      if (m.description.kohya_base_model_version.empty() || m.description.kohya_v2 != v2 ||
          (!implied.empty() && !has(m.description.kohya_flags, implied)))
        continue;
      fits.push_back(std::move(m));
    }
  if (base_model_version)
    for (const auto& m : fits)
      if (m.description.kohya_base_model_version == *base_model_version) return m;
  // No component spells the files' version (none given, or an older spelling): the one kohya's
  // flag for the files names (the command's, --v2 for ss_v2 files), or with neither the one its
  // scripts load without a family flag.
  const std::string flag = !implied.empty() ? implied : v2 ? kKohyaV2 : "";
  for (const auto& m : fits)
    if (flag.empty() ? m.description.kohya_flags.empty() : has(m.description.kohya_flags, flag)) {
      if (base_model_version)
        std::cerr << "sumi: " << what << ": no model plugin names ss_base_model_version '" << *base_model_version
                  << "'; the metadata is model component '" << m.component << "''s\n";
      return m;
    }
  throw host::UserError(what + ": no model plugin describes the model these LoRA files are for (ss_base_model_version '" +
                        base_model_version.value_or("") + "', ss_v2 " + (v2 ? "True" : "False") +
                        "), whose names the metadata needs; give --plugin-dir with its plugin, or --no_metadata");
}

PluginModel::PluginModel(host::PluginManager& pm, host::Registry& registry, const std::string& component,
                         const std::string& path, const std::string& ns, const std::map<std::string, std::string>& config) {
  auto ref = pm.find(SUMI_KIND_MODEL, component);
  auto given = config;
  given["dtype"] = "fp32";
  model_ = std::make_unique<host::Component>(ref, ns, registry, host::make_config(*ref.component, given));
  host::ModelPlugin(*model_).load(path);
  for (const sumi_module_info& info : model_modules(*model_)) {
    ModelModule m;
    m.name = info.name;
    m.kind = info.kind;
    m.role = info.role;
    m.in_transformer = info.in_transformer != 0;
    if (info.weight) m.weight = host::unwrap(info.weight);
    modules_.push_back(std::move(m));
  }
}

PluginModel::~PluginModel() = default;

const ModelModule* PluginModel::find(const std::string& name) const {
  for (const auto& m : modules_)
    if (m.name == name) return &m;
  return nullptr;
}

std::vector<sumi_module_info> PluginModel::module_infos() const { return model_modules(*model_); }

void PluginModel::save(const std::string& path, std::optional<at::ScalarType> dtype) {
  host::ModelPlugin(*model_).save(path, dtype, true);
}

host::PluginManager tool_plugin_manager(const std::vector<std::string>& dirs) {
  CommonOptions o;
  o.plugin_dirs = dirs;
  return make_plugin_manager(o);
}

}  // namespace sumi::app::tools
