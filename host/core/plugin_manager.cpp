#include "plugin_manager.h"

#include "error.h"
#include "host_api.h"

#include <boost/dll/runtime_symbol_info.hpp>
#include <boost/dll/shared_library.hpp>

#include <torch/version.h>

#include <algorithm>
#include <cctype>
#include <cstdlib>
#include <filesystem>
#include <map>
#include <mutex>
#include <sstream>

namespace fs = std::filesystem;

namespace sumi::host {

namespace {

// Libraries stay loaded for the life of the process, whichever manager loaded them.
struct LoadedSet {
  std::mutex mu;
  std::map<std::string, std::unique_ptr<PluginLibrary>> by_path;
  std::vector<boost::dll::shared_library> handles;
};
LoadedSet& loaded() {
  static auto* set = new LoadedSet;  // never destroyed: unloading is off
  return *set;
}

std::string canonical(const std::string& p) {
  std::error_code ec;
  auto c = fs::weakly_canonical(p, ec);
  return ec ? p : c.string();
}

uint32_t host_component_api(int32_t kind) {
  switch (kind) {
    case SUMI_KIND_MODEL: return SUMI_MODEL_API;
    case SUMI_KIND_NETWORK: return SUMI_NETWORK_API;
    case SUMI_KIND_OPTIMIZER: return SUMI_OPTIMIZER_API;
    case SUMI_KIND_LR_SCHEDULER: return SUMI_LR_SCHEDULER_API;
    case SUMI_KIND_NOISE_SCHEDULER: return SUMI_NOISE_SCHEDULER_API;
    case SUMI_KIND_TAGGER: return SUMI_TAGGER_API;
    default: return 0;
  }
}

// Size of each kind's vtable as of ABI 1.0: a plugin must provide at least that much.
size_t min_vtable_size(int32_t kind) {
  switch (kind) {
    case SUMI_KIND_MODEL: return SUMI_MODEL_VTABLE_SIZE_1_0;  // 1.1 appended training slots
    case SUMI_KIND_NETWORK: return SUMI_NETWORK_VTABLE_SIZE_1_2;  // 1.3 appended probe ... bias_delta
    case SUMI_KIND_OPTIMIZER: return sizeof(sumi_optimizer_vtable);
    case SUMI_KIND_LR_SCHEDULER: return sizeof(sumi_lr_scheduler_vtable);
    case SUMI_KIND_NOISE_SCHEDULER: return SUMI_NOISE_SCHEDULER_VTABLE_SIZE_1_3;  // 1.4 appended describe
    case SUMI_KIND_TAGGER: return sizeof(sumi_tagger_vtable);
    default: return 0;
  }
}

std::string str(const char* s) { return s ? s : "(null)"; }

void check_descriptor(const std::string& path, const sumi_plugin_descriptor* d) {
  const std::string who = "plugin " + path;
  if (!d) throw UserError(who + " returned no descriptor from sumi_plugin_entry");
  if (d->struct_size < offsetof(sumi_plugin_descriptor, native) + sizeof(void*))
    throw UserError(who + " has a descriptor of " + std::to_string(d->struct_size) + " bytes, smaller than ABI 1.0's");
  if (d->abi_major != SUMI_ABI_MAJOR) {
    throw UserError(who + " was built for sumi ABI " + std::to_string(d->abi_major) + "." +
                    std::to_string(d->abi_minor) + ", but this host speaks ABI " + std::to_string(SUMI_ABI_MAJOR) +
                    "." + std::to_string(SUMI_ABI_MINOR) + " (major versions must match); rebuild it against this SDK");
  }
  if (d->abi_minor > SUMI_ABI_MINOR) {
    throw UserError(who + " needs sumi ABI " + std::to_string(d->abi_major) + "." + std::to_string(d->abi_minor) +
                    ", newer than this host's " + std::to_string(SUMI_ABI_MAJOR) + "." + std::to_string(SUMI_ABI_MINOR) +
                    "; upgrade sumi or rebuild the plugin against the older SDK");
  }
  if (d->native) {
    const auto& h = host_native_info();
    const auto& n = *d->native;
    const bool same = n.struct_size >= sizeof(sumi_native_info) && str(n.torch_version) == h.torch_version &&
                      n.cxx11_abi == h.cxx11_abi && str(n.cuda_version) == h.cuda_version;
    if (!same) {
      std::ostringstream m;
      m << who << " is a native plugin built for libtorch " << str(n.torch_version) << " (C++11 ABI "
        << n.cxx11_abi << ", CUDA '" << str(n.cuda_version) << "'), but this host runs libtorch "
        << h.torch_version << " (C++11 ABI " << h.cxx11_abi << ", CUDA '" << h.cuda_version
        << "'); native plugins must match exactly: rebuild it against this libtorch";
      throw UserError(m.str());
    }
  }
  if (d->n_components < 0 || (d->n_components > 0 && !d->components))
    throw UserError(who + " lists an invalid component array");
  for (int64_t i = 0; i < d->n_components; ++i) {
    const auto& c = d->components[i];
    const std::string cw = who + " component #" + std::to_string(i) + " '" + str(c.name) + "'";
    if (c.struct_size < sizeof(sumi_component)) throw UserError(cw + " has a truncated descriptor");
    if (!c.name || !*c.name) throw UserError(cw + " has no name");
    const uint32_t api = host_component_api(c.kind);
    if (!api) throw UserError(cw + " has unknown kind " + std::to_string(c.kind));
    if (c.api_version > api) {
      throw UserError(cw + " implements " + kind_name(c.kind) + " API " + std::to_string(c.api_version) +
                      ", newer than this host's " + std::to_string(api) + "; upgrade sumi");
    }
    if (!c.create || !c.destroy || !c.vtable) throw UserError(cw + " lacks create/destroy/vtable");
    const size_t vt_size = *static_cast<const size_t*>(c.vtable);
    if (vt_size < min_vtable_size(c.kind))
      throw UserError(cw + " has a " + kind_name(c.kind) + " vtable of " + std::to_string(vt_size) +
                      " bytes; ABI 1.0 needs " + std::to_string(min_vtable_size(c.kind)));
    if (c.n_params < 0 || (c.n_params > 0 && !c.params)) throw UserError(cw + " has an invalid parameter schema");
    for (int64_t k = 0; k < c.n_params; ++k) {
      if (!c.params[k].key || !*c.params[k].key || c.params[k].type < SUMI_PARAM_BOOL ||
          c.params[k].type > SUMI_PARAM_INT_LIST)
        throw UserError(cw + " has an invalid parameter #" + std::to_string(k));
    }
  }
}

std::string normalise_name(int32_t kind, std::string s) {
  // kohya users type Python module paths: networks.lora, networks.lora_fa, ...
  for (const char* prefix : {"networks.", "library.", "sumi."}) {
    if (s.rfind(prefix, 0) == 0) s = s.substr(std::string(prefix).size());
  }
  if (kind == SUMI_KIND_OPTIMIZER) {
    // kohya matches --optimizer_type case-insensitively and imports any other name as
    // module.Class: torch.optim.AdamW, prodigyopt.Prodigy, dadaptation.DAdaptAdam,
    // dadaptation.experimental.DAdaptAdanIP, transformers.optimization.Adafactor,
    // bitsandbytes.optim.AdamW8bit.
    if (const auto dot = s.rfind('.'); dot != std::string::npos) s = s.substr(dot + 1);
    std::transform(s.begin(), s.end(), s.begin(), [](unsigned char c) { return std::tolower(c); });
    if (s == "dadaptation") s = "dadaptadampreprint";  // kohya's DAdaptation is the preprint's Adam
  }
  return s;
}

bool looks_like_path(const std::string& s) {
  return s.find('/') != std::string::npos || (s.size() > 3 && s.substr(s.size() - 3) == ".so");
}

}  // namespace

const char* kind_name(int32_t kind) {
  switch (kind) {
    case SUMI_KIND_MODEL: return "model";
    case SUMI_KIND_NETWORK: return "network";
    case SUMI_KIND_OPTIMIZER: return "optimizer";
    case SUMI_KIND_LR_SCHEDULER: return "lr_scheduler";
    case SUMI_KIND_NOISE_SCHEDULER: return "noise_scheduler";
    case SUMI_KIND_TAGGER: return "tagger";
    default: return "unknown";
  }
}

int32_t kind_from_name(const std::string& name) {
  for (int32_t k = SUMI_KIND_MODEL; k <= SUMI_KIND_TAGGER; ++k)
    if (name == kind_name(k)) return k;
  return 0;
}

const sumi_native_info& host_native_info() {
#ifndef SUMI_TORCH_CUDA_VERSION
#define SUMI_TORCH_CUDA_VERSION ""
#endif
  static const sumi_native_info info = {sizeof(sumi_native_info), TORCH_VERSION,
#if defined(_GLIBCXX_USE_CXX11_ABI)
                                        _GLIBCXX_USE_CXX11_ABI,
#else
                                        0,
#endif
                                        0, SUMI_TORCH_CUDA_VERSION};
  return info;
}

PluginManager::PluginManager() {}

void PluginManager::add_search_dir(const std::string& dir) {
  dirs_.push_back(dir);
  scanned_ = false;
}

const PluginLibrary& PluginManager::load(const std::string& path_in) {
  const std::string path = canonical(path_in);
  auto& set = loaded();
  std::lock_guard<std::mutex> lock(set.mu);
  auto it = set.by_path.find(path);
  if (it != set.by_path.end()) return *it->second;
  if (!fs::exists(path)) throw UserError("plugin library '" + path_in + "' does not exist");

  boost::dll::shared_library lib;
  try {
    lib.load(path, boost::dll::load_mode::rtld_now | boost::dll::load_mode::rtld_local);
  } catch (const std::exception& e) {
    throw UserError("cannot load plugin library '" + path + "': " + e.what() +
                    " (a missing dependency or an undefined symbol; check `ldd` on it)");
  }
  if (!lib.has(SUMI_PLUGIN_ENTRY_NAME)) {
    throw UserError("'" + path + "' is not a sumi plugin: it exports no '" SUMI_PLUGIN_ENTRY_NAME
                    "' symbol (export it with SUMI_PLUGIN(...) from sumi/plugin.hpp)");
  }
  auto entry = lib.get<sumi_status(const sumi_host_api*, const sumi_plugin_descriptor**)>(SUMI_PLUGIN_ENTRY_NAME);
  const sumi_plugin_descriptor* desc = nullptr;
  sumi_status s = SUMI_ERR_EXCEPTION;
  set_last_error("");
  try {
    s = entry(host_api(), &desc);
  } catch (...) {
    throw UserError("plugin '" + path + "' threw an exception from its entry point");
  }
  if (s != SUMI_OK) {
    throw UserError("plugin '" + path + "' refused to load (status " + std::to_string(s) + "): " + last_error());
  }
  check_descriptor(path, desc);

  auto pl = std::make_unique<PluginLibrary>();
  pl->path = path;
  pl->descriptor = desc;
  for (int64_t i = 0; i < desc->n_components; ++i) pl->components.push_back({pl.get(), &desc->components[i]});
  set.handles.push_back(std::move(lib));
  auto* raw = pl.get();
  set.by_path.emplace(path, std::move(pl));
  return *raw;
}

std::vector<const PluginLibrary*> PluginManager::scan(std::vector<std::string>* refusals) {
  std::vector<std::string> dirs = dirs_;
  if (const char* env = std::getenv("SUMI_PLUGIN_PATH")) {
    std::stringstream ss(env);
    std::string d;
    while (std::getline(ss, d, ':'))
      if (!d.empty()) dirs.push_back(d);
  }
  try {
    auto exe = boost::dll::program_location().parent_path();
    dirs.push_back((exe.parent_path() / "lib" / "sumi" / "plugins").string());
  } catch (...) {
  }
#ifdef SUMI_INSTALL_PLUGIN_DIR
  dirs.push_back(SUMI_INSTALL_PLUGIN_DIR);
#endif
  std::vector<const PluginLibrary*> libs;
  std::vector<std::string> seen;
  for (const auto& d : dirs) {
    std::error_code ec;
    if (!fs::is_directory(d, ec)) continue;
    std::vector<fs::path> files;
    for (const auto& e : fs::directory_iterator(d, ec))
      if (e.path().extension() == ".so") files.push_back(e.path());
    std::sort(files.begin(), files.end());
    for (const auto& f : files) {
      const auto c = canonical(f.string());
      if (std::find(seen.begin(), seen.end(), c) != seen.end()) continue;
      seen.push_back(c);
      try {
        libs.push_back(&load(c));
      } catch (const std::exception& e) {
        if (refusals) refusals->push_back(e.what());
      }
    }
  }
  return libs;
}

ComponentRef PluginManager::find(int32_t kind, const std::string& spec) {
  if (looks_like_path(spec)) {
    const auto& lib = load(spec);
    std::vector<ComponentRef> of_kind;
    for (const auto& c : lib.components)
      if (c.component->kind == kind) of_kind.push_back(c);
    if (of_kind.size() == 1) return of_kind.front();
    const auto stem = fs::path(spec).stem().string();
    for (const auto& c : of_kind)
      if (stem == c.component->name || stem == std::string("lib") + c.component->name) return c;
    throw UserError("plugin library '" + spec + "' has " + std::to_string(of_kind.size()) + " " + kind_name(kind) +
                    " components; name one of them instead of the path");
  }
  const std::string name = normalise_name(kind, spec);
  std::vector<std::string> refusals;
  auto libs = scan(&refusals);
  std::vector<std::string> names;
  for (const auto* lib : libs) {
    for (const auto& c : lib->components) {
      if (c.component->kind != kind) continue;
      if (name == c.component->name) return c;
      names.push_back(c.component->name);
    }
  }
  std::sort(names.begin(), names.end());
  std::string msg = std::string("no ") + kind_name(kind) + " plugin named '" + spec + "'";
  msg += names.empty() ? std::string("; none are installed") : "; available: ";
  for (size_t i = 0; i < names.size(); ++i) msg += (i ? ", " : "") + names[i];
  msg += ". Hint: `sumi plugins` lists what is installed; add directories with --plugin-dir or $SUMI_PLUGIN_PATH";
  for (const auto& r : refusals) msg += "\n  refused while searching: " + r;
  throw UserError(msg);
}

}  // namespace sumi::host
