#include "app/tools/plugin_model.h"

#include "app/app.h"
#include "core/error.h"
#include "core/tensor_handle.h"
#include "app/model_file.h"
#include "core/plugin_manager.h"

#include <sumi/sumi.h>

#include <filesystem>

namespace sumi::app::tools {

std::string model_family(const std::string& path, const std::string& flag, const std::string& forced,
                         const std::string& hint) {
  if (!std::filesystem::exists(path)) throw host::UserError(flag + " '" + path + "' does not exist");
  // The model plugins say which component loads the file (their probe slot); a file none of them
  // takes is left to the forced family's load to refuse by name.
  std::string detected;
  try {
    host::PluginManager pm;
    detected = find_model_component(pm, path);
  } catch (const host::UserError&) {
  }
  if (!forced.empty() && !detected.empty() && detected != forced) {
    // SD2's names are the only ones --v2 is about; "sd1" forced means "not --v2".
    throw host::UserError(flag + " '" + path + "' is an " + detected + " checkpoint, not " + forced + "; " + hint);
  }
  if (!forced.empty()) return forced;
  return detected.empty() ? "sd1" : detected;
}

PluginModel::PluginModel(host::PluginManager& pm, host::Registry& registry, const std::string& family,
                         const std::string& path, const std::string& ns, const std::map<std::string, std::string>& config) {
  auto ref = pm.find(SUMI_KIND_MODEL, family);
  auto given = config;
  given["dtype"] = "fp32";
  model_ = std::make_unique<host::Component>(ref, ns, registry, host::make_config(*ref.component, given));
  const auto& mvt = model_->vtable<sumi_model_vtable>();
  model_->check(mvt.load(model_->self(), path.c_str()), ("load " + path).c_str());
  const sumi_module_info* mods = nullptr;
  int64_t n = 0;
  model_->check(mvt.modules(model_->self(), &mods, &n), "modules");
  for (int64_t i = 0; i < n; ++i) {
    ModelModule m;
    m.name = mods[i].name;
    m.kind = mods[i].kind;
    m.role = mods[i].role;
    m.in_transformer = mods[i].in_transformer != 0;
    if (mods[i].weight) m.weight = host::unwrap(mods[i].weight);
    modules_.push_back(std::move(m));
  }
}

PluginModel::~PluginModel() = default;

const ModelModule* PluginModel::find(const std::string& name) const {
  for (const auto& m : modules_)
    if (m.name == name) return &m;
  return nullptr;
}

const sumi_module_info* PluginModel::raw_modules(int64_t& n) const {
  const auto& mvt = model_->vtable<sumi_model_vtable>();
  const sumi_module_info* mods = nullptr;
  model_->check(mvt.modules(model_->self(), &mods, &n), "modules");
  return mods;
}

void PluginModel::save(const std::string& path, std::optional<at::ScalarType> dtype) {
  const auto& mvt = model_->vtable<sumi_model_vtable>();
  if (mvt.struct_size <= offsetof(sumi_model_vtable, save) || !mvt.save)
    throw host::UserError("the model plugin '" + std::string(model_->info().name) + "' cannot save models (ABI 1.0 plugin)");
  sumi_dtype d{};
  const sumi_dtype* dp = nullptr;
  if (dtype) {
    d = host::from_scalar_type(*dtype);
    dp = &d;
  }
  model_->check(mvt.save(model_->self(), path.c_str(), dp, 1), ("save " + path).c_str());
}

host::PluginManager tool_plugin_manager(const std::vector<std::string>& dirs) {
  CommonOptions o;
  o.plugin_dirs = dirs;
  return make_plugin_manager(o);
}

}  // namespace sumi::app::tools
