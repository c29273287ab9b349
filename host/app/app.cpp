#include "app.h"

#include "core/error.h"
#include "core/op_bridge.h"
#include "core/runtime.h"
#include "core/tensor_handle.h"
#include "core/typed_plugins.h"
#include "network_settings.h"
#include "sumi/io/safetensors_torch.h"

#include <sumi/prompt/prompt_file.h>
#include <sumi/recipe/kohya.h>
#include <sumi/recipe/load.h>
#include <sumi/recipe/preset.h>
#include <sumi/recipe/schema.h>
#include <sumi/recipe/sections.h>

#include <boost/dll/runtime_symbol_info.hpp>
#include <boost/program_options.hpp>

#include <sumi/torch_compat.hpp>

#include <filesystem>
#include <map>
#include <sstream>

namespace po = boost::program_options;
namespace fs = std::filesystem;

namespace sumi::app {

bool parse_common(const std::vector<std::string>& args, CommonOptions& out, std::string& help) {
  po::options_description desc("sumi options");
  desc.add_options()("help,h", "show this help")(
      "plugin-dir", po::value<std::vector<std::string>>(&out.plugin_dirs)->composing(),
      "extra folder searched for plugins (repeatable; searched before $SUMI_PLUGIN_PATH)")(
      "threads", po::value<int>(&out.threads)->default_value(0),
      "intra-op CPU threads (0 = all cores)")("device", po::value<std::string>(&out.device),
                                              "where to compute: cpu, cuda or cuda:N (default: CUDA when this "
                                              "build has it and a GPU is present, else cpu)")(
      "recipe", po::value<std::string>(&out.recipe), "recipe file (.toml/.yaml) or preset name");
  auto parsed = po::command_line_parser(args).options(desc).allow_unregistered().run();
  po::variables_map vm;
  po::store(parsed, vm);
  po::notify(vm);
  out.rest = po::collect_unrecognized(parsed.options, po::include_positional);
  std::ostringstream os;
  os << desc;
  help = os.str();
  return !vm.count("help");
}

c10::Device run_device(const std::string& text) {
  try {
    return torch_compat::parse_device(text);
  } catch (const std::invalid_argument& e) {
    throw host::UserError(e.what());
  }
}

void refuse_device(const CommonOptions& o, const std::string& command) {
  if (!o.device.empty())
    throw host::UserError(command + ": --device does not apply (this command computes nothing on a device); remove it");
}

host::PluginManager make_plugin_manager(const CommonOptions& o) {
  host::PluginManager pm;
  for (const auto& d : o.plugin_dirs) pm.add_search_dir(d);
  return pm;
}

void register_sampler_names(host::PluginManager& pm) {
  std::vector<std::string> names;
  for (const host::PluginLibrary* lib : pm.scan())
    for (const auto& ref : lib->components)
      if (ref.component->kind == SUMI_KIND_NOISE_SCHEDULER) names.emplace_back(ref.component->name);
  prompt::set_sampler_names(std::move(names));
}

std::vector<std::string> preset_dirs() {
  std::vector<std::string> dirs{"presets"};
  try {
    auto prefix = boost::dll::program_location().parent_path().parent_path();
    dirs.push_back((prefix / "share" / "sumi" / "presets").string());
  } catch (...) {
  }
#ifdef SUMI_SOURCE_PRESETS
  dirs.push_back(SUMI_SOURCE_PRESETS);
#endif
  return dirs;
}

recipe::Value load_recipe_tree(const CommonOptions& o) {
  recipe::Value root = recipe::Value::table("command line");
  if (!o.recipe.empty()) {
    fs::path path = o.recipe;
    if (!fs::exists(path)) {
      std::vector<fs::path> dirs;
      for (const auto& d : preset_dirs()) dirs.emplace_back(d);
      path = recipe::find_preset(o.recipe, dirs);
    }
    root = recipe::load_recipe(path);
  }
  recipe::apply_kohya_args(root, o.rest);
  recipe::check_sections(root);
  return root;
}

recipe::PluginSchemas plugin_schemas(const recipe::Value& root, host::PluginManager& pm) {
  recipe::PluginSchemas schemas;
  for (const auto& section : recipe::plugin_section_names()) {
    const std::string type = recipe::plugin_type(root, section);
    if (type.empty()) continue;
    const auto ref = pm.find(host::kind_from_name(section), type);
    schemas[section] = recipe::to_specs(ref.component->params, ref.component->n_params);
  }
  return schemas;
}

recipe::ResolvedSection resolve(const recipe::Value& root, const std::string& section, const recipe::PluginSchemas& s) {
  static const recipe::Value missing = recipe::Value::null("(not in the recipe)");
  const recipe::Value* v = root.find(section);
  auto it = s.find(section);
  return recipe::resolve_section(v ? *v : missing, section, recipe::host_schema(section),
                                 it == s.end() ? std::vector<recipe::ParamSpec>{} : it->second);
}

std::unique_ptr<host::Component> instantiate(int32_t kind, const recipe::ResolvedSection& section,
                                             host::PluginManager& pm, host::Registry& registry) {
  const auto ref = pm.find(kind, section.get_string("type"));
  std::map<std::string, host::ConfigValue> config;
  for (int64_t i = 0; i < ref.component->n_params; ++i) {
    const auto& spec = ref.component->params[i];
    if (!section.has(spec.key)) continue;
    host::ConfigValue cv;
    cv.type = spec.type;
    switch (spec.type) {
      case SUMI_PARAM_BOOL: cv.b = section.get_bool(spec.key); break;
      case SUMI_PARAM_INT: cv.i = section.get_int(spec.key); break;
      case SUMI_PARAM_DOUBLE: cv.d = section.get_double(spec.key); break;
      case SUMI_PARAM_STRING: cv.s = section.get_string(spec.key); break;
      case SUMI_PARAM_DOUBLE_LIST: cv.doubles = section.get_double_list(spec.key); break;
      case SUMI_PARAM_INT_LIST: cv.ints = section.get_int_list(spec.key); break;
    }
    config[spec.key] = cv;
  }
  return std::make_unique<host::Component>(ref, section.name(), registry, std::move(config));
}

std::vector<int32_t> attach_network(host::Component& model, host::Component& network, const std::string& weights_file,
                                    double multiplier, bool training) {
  std::vector<int32_t> selected = prepare_network(model, network, weights_file, multiplier, training);
  host::ModelPlugin(model).set_network(network.self(), &host::NetworkPlugin(network).vtable(), selected.data());
  return selected;
}

std::vector<int32_t> prepare_network(host::Component& model, host::Component& network, const std::string& weights_file,
                                     double multiplier, bool training) {
  host::NetworkPlugin net(network);
  // The model's modules in this host's layout; attach's infos stay valid while the network lives
  // (it may keep them), so the copy is kept per network instance.
  static std::map<const void*, std::vector<sumi_module_info>> infos;
  auto& mods = infos[network.self()];
  mods = model_modules(model);
  std::vector<int32_t> selected;
  attach_modules(network, mods, selected);
  if (!weights_file.empty()) {
    std::vector<std::string> names;
    std::vector<at::Tensor> tensors;
    for (auto& [name, t] : io::load_all(weights_file)) {
      names.push_back(name);
      tensors.push_back(std::move(t));
    }
    net.load(names, tensors, weights_file);
  }
  net.set_multiplier(multiplier);
  net.set_training(training);
  return selected;
}

}  // namespace sumi::app
