#include "model_file.h"

#include "core/error.h"
#include "core/component.h"
#include "core/plugin_manager.h"
#include "core/typed_plugins.h"

#include <nlohmann/json.hpp>
#include <openssl/evp.h>

#include <algorithm>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <memory>
#include <vector>

namespace fs = std::filesystem;

namespace sumi::app {

namespace {

// The probe answer's "kohya_flags" (absent or not a list: none).
std::vector<std::string> kohya_flags_of(const char* json) {
  std::vector<std::string> out;
  if (!json) return out;
  const auto j = nlohmann::json::parse(json, nullptr, false);
  if (j.is_object() && j.contains("kohya_flags") && j["kohya_flags"].is_array())
    for (const auto& f : j["kohya_flags"])
      if (f.is_string()) out.push_back(f.get<std::string>());
  return out;
}

// Each flag the user gave must name the component that loads the file.
void check_kohya_flags(const std::string& path, const std::string& component, const std::vector<std::string>& names,
                       const std::vector<std::string>& given) {
  for (const auto& f : given) {
    if (std::find(names.begin(), names.end(), f) != names.end()) continue;
    std::string listed;
    for (const auto& n : names) listed += (listed.empty() ? "--" : ", --") + n;
    throw host::UserError(path + ": --" + f + " was given, but the file is loaded by model component '" + component +
                          "', which " + (listed.empty() ? "no kohya family flag names" : "kohya's " + listed + " names") +
                          "; drop --" + f + " (sumi detects the family from the file)");
  }
}

}  // namespace

ModelFileMatch probe_model_file(host::PluginManager& pm, const std::string& path) {
  if (!fs::exists(path)) throw host::UserError(path + ": no such file or folder");
  std::vector<std::string> answers;
  for (const auto* lib : pm.scan()) {
    for (const auto& ref : lib->components) {
      if (ref.component->kind != SUMI_KIND_MODEL) continue;
      host::Registry registry;
      host::Component c(ref, "probe", registry, host::make_config(*ref.component, {}));
      host::ModelPlugin model(c);
      const std::string name = ref.component->name;
      if (!model.has_probe()) {
        answers.push_back(name + ": built for an older ABI (no probe)");
        continue;
      }
      std::string why;
      if (const auto json = model.probe(path, &why)) return {name, kohya_flags_of(json->c_str())};
      answers.push_back(name + ": " + why);
    }
  }
  std::string msg = path + ": no model plugin loads it";
  for (const auto& a : answers) msg += "\n  " + a;
  throw host::UserError(msg + "\n(hint: name the model component, e.g. --set model.type=...; `sumi plugins` lists them)");
}

std::string find_model_component(host::PluginManager& pm, const std::string& path,
                                 const std::vector<std::string>& kohya_flags) {
  const ModelFileMatch m = probe_model_file(pm, path);
  check_kohya_flags(path, m.component, m.kohya_flags, kohya_flags);
  return m.component;
}

std::string a1111_hash(const std::string& path) {
  if (fs::is_directory(path)) return "";
  std::FILE* f = std::fopen(path.c_str(), "rb");
  if (!f) return "";
  std::unique_ptr<EVP_MD_CTX, void (*)(EVP_MD_CTX*)> ctx(EVP_MD_CTX_new(), EVP_MD_CTX_free);
  EVP_DigestInit_ex(ctx.get(), EVP_sha256(), nullptr);
  std::vector<unsigned char> buf(1 << 20);
  size_t n;
  while ((n = std::fread(buf.data(), 1, buf.size(), f)) > 0) EVP_DigestUpdate(ctx.get(), buf.data(), n);
  std::fclose(f);
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  EVP_DigestFinal_ex(ctx.get(), md, &len);
  char hex[2 * EVP_MAX_MD_SIZE + 1];
  for (unsigned int i = 0; i < len; ++i) std::snprintf(hex + 2 * i, 3, "%02x", md[i]);
  return std::string(hex).substr(0, 10);
}

}  // namespace sumi::app
