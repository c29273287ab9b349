#include "network_settings.h"

#include "core/error.h"
#include "core/typed_plugins.h"
#include "sumi/io/safetensors.h"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cstring>
#include <filesystem>

namespace fs = std::filesystem;

namespace sumi::app {

namespace {

std::map<std::string, std::string> string_object(const std::string& json, const std::string& what) {
  std::map<std::string, std::string> out;
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(json);
  } catch (const std::exception& e) {
    throw host::UserError(what + " is not JSON: " + e.what());
  }
  if (!j.is_object()) throw host::UserError(what + " is not a JSON object: " + json);
  for (auto it = j.begin(); it != j.end(); ++it) {
    if (!it.value().is_string()) throw host::UserError(what + ": '" + it.key() + "' is not a string");
    out[it.key()] = it.value().get<std::string>();
  }
  return out;
}

std::string strip_networks(std::string s) {
  if (s.rfind("networks.", 0) == 0) s = s.substr(9);
  return s;
}

}  // namespace

std::vector<sumi_file_tensor> WeightsFile::tensors() const {
  std::vector<sumi_file_tensor> out(names.size());
  for (size_t i = 0; i < names.size(); ++i) {
    out[i].struct_size = sizeof(sumi_file_tensor);
    out[i].name = names[i].c_str();
    out[i].shape = shapes[i].data();
    out[i].ndim = static_cast<int32_t>(shapes[i].size());
  }
  return out;
}

WeightsFile read_weights_file(const std::string& path) {
  if (fs::path(path).extension() != ".safetensors")
    throw host::UserError("--network_weights '" + path +
                          "': only .safetensors files can be matched to a network plugin; name the plugin with --network_module");
  WeightsFile f;
  f.path = path;
  std::shared_ptr<io::SafetensorsFile> file;
  try {
    file = io::SafetensorsFile::open(path);
  } catch (const std::exception& e) {
    throw host::UserError("--network_weights '" + path + "': " + e.what());
  }
  for (const auto& t : file->tensors()) {
    f.names.push_back(t.name);
    f.shapes.push_back(t.shape);
  }
  f.metadata = file->metadata();
  nlohmann::json j = nlohmann::json::object();
  for (const auto& [k, v] : f.metadata) j[k] = v;
  f.metadata_json = j.dump();
  return f;
}

std::vector<sumi_module_info> model_modules(host::Component& model) {
  int64_t n = 0;
  const sumi_module_info* mods = host::ModelPlugin(model).modules(n);
  std::vector<sumi_module_info> out(static_cast<size_t>(n));
  if (n == 0) return out;
  // The model's array has the stride of its own struct (its elements' struct_size).
  const size_t stride = mods[0].struct_size;
  if (stride < SUMI_MODULE_INFO_SIZE_1_2)
    throw host::UserError(std::string("model '") + model.info().name + "' describes its modules with " + std::to_string(stride) +
                          "-byte records, smaller than ABI 1.0's " + std::to_string(SUMI_MODULE_INFO_SIZE_1_2));
  const char* base = reinterpret_cast<const char*>(mods);
  for (size_t i = 0; i < out.size(); ++i) {
    sumi_module_info m{};
    std::memcpy(&m, base + i * stride, std::min(stride, sizeof(sumi_module_info)));
    if (stride < sizeof(sumi_module_info)) m.bias = nullptr;
    m.struct_size = sizeof(sumi_module_info);
    out[i] = m;
  }
  return out;
}

void attach_modules(host::Component& network, const std::vector<sumi_module_info>& modules, std::vector<int32_t>& selected) {
  host::NetworkPlugin net(network);
  selected.assign(modules.size(), 0);
  const auto n = static_cast<int64_t>(modules.size());
  if (net.has_probe()) {
    net.attach(modules.data(), n, selected.data());
    return;
  }
  // Built for ABI 1.0 - 1.2: an array of the old, shorter records. Kept alive as long as the
  // network may read it (attach's infos stay valid while the network lives): owned by a table
  // keyed by the network instance.
  static std::map<const void*, std::vector<char>> old_arrays;
  auto& buf = old_arrays[network.self()];
  buf.assign(modules.size() * SUMI_MODULE_INFO_SIZE_1_2, 0);
  for (size_t i = 0; i < modules.size(); ++i) {
    sumi_module_info m = modules[i];
    m.struct_size = SUMI_MODULE_INFO_SIZE_1_2;
    std::memcpy(buf.data() + i * SUMI_MODULE_INFO_SIZE_1_2, &m, SUMI_MODULE_INFO_SIZE_1_2);
  }
  net.attach(reinterpret_cast<const sumi_module_info*>(buf.data()), n, selected.data());
}

std::optional<std::vector<int32_t>> probe_network(host::Component& network, const WeightsFile& f) {
  host::NetworkPlugin net(network);
  if (!net.has_probe()) return std::nullopt;
  return net.probe(f.tensors(), f.metadata_json, f.path);
}

bool configure_network_from_file(host::Component& network, const WeightsFile& f) {
  return host::NetworkPlugin(network).configure_from_weights(f.tensors(), f.metadata_json, f.path);
}

std::string find_network_component(host::PluginManager& pm, const WeightsFile& f) {
  struct Answer {
    std::string name;
    std::vector<int32_t> understood;
    size_t count = 0;
  };
  std::vector<Answer> answers;
  std::vector<std::string> older;
  for (const auto* lib : pm.scan()) {
    for (const auto& ref : lib->components) {
      if (ref.component->kind != SUMI_KIND_NETWORK) continue;
      host::Registry scratch;
      std::optional<std::vector<int32_t>> u;
      try {
        host::Component c(ref, "probe", scratch, host::make_config(*ref.component, {}));
        u = probe_network(c, f);
      } catch (const std::exception& e) {
        // A network that needs settings to be created, or whose probe fails, reads nothing here.
        older.push_back(std::string(ref.component->name) + " (" + e.what() + ")");
        continue;
      }
      if (!u) {
        older.push_back(ref.component->name);
        continue;
      }
      Answer a{ref.component->name, *u, 0};
      for (auto x : a.understood) a.count += x != 0;
      answers.push_back(std::move(a));
    }
  }
  std::vector<std::string> full;
  for (const auto& a : answers)
    if (a.count == f.names.size()) full.push_back(a.name);
  if (!full.empty()) {
    auto it = f.metadata.find("ss_network_module");
    if (it != f.metadata.end()) {
      const std::string named = strip_networks(it->second);
      if (std::find(full.begin(), full.end(), named) != full.end()) return named;
    }
    return *std::min_element(full.begin(), full.end());
  }
  std::string msg = "--network_weights '" + f.path + "': no network plugin reads this file";
  if (answers.empty()) {
    msg += " (no network plugin answers probe)";
  } else {
    const auto best = std::max_element(answers.begin(), answers.end(),
                                       [](const Answer& a, const Answer& b) { return a.count < b.count; });
    std::vector<std::string> missed;
    for (size_t i = 0; i < f.names.size(); ++i)
      if (!best->understood[i]) missed.push_back(f.names[i]);
    msg += "; " + std::to_string(missed.size()) + " of its " + std::to_string(f.names.size()) +
           " tensors are understood by none (the closest, '" + best->name + "', does not read: ";
    for (size_t i = 0; i < missed.size() && i < 5; ++i) msg += (i ? ", " : "") + missed[i];
    if (missed.size() > 5) msg += ", ...";
    msg += ")";
  }
  if (!older.empty()) {
    msg += "; not asked (built before ABI 1.3, or failed to answer):";
    for (const auto& o : older) msg += " " + o;
  }
  throw host::UserError(msg + "\n(hint: name the plugin with --network_module; `sumi plugins` lists the network plugins)");
}

std::map<std::string, std::string> network_metadata_of(host::Component& network) {
  const std::optional<std::string> json = host::NetworkPlugin(network).metadata();
  if (!json) return {};
  return string_object(*json, std::string("network '") + network.info().name + "' metadata");
}

}  // namespace sumi::app
