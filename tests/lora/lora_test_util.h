// Test-side stand-in for a model plugin: builds the sumi_module_info list a model would hand
// the lora network, straight from a model's weight files, naming modules as kohya does.
#pragma once

#include <sumi/sumi.h>

#include <ATen/ATen.h>

#include <deque>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "../common/plugin_test.h"

namespace sumi::test {

inline std::string fixture(const std::string& f) { return std::string(SUMI_TEST_DATA) + "/fixtures/" + f; }

// A model's adaptable modules; owns the names and the weight handles the infos point to.
class ModuleList {
 public:
  ModuleList() = default;
  ModuleList(const ModuleList&) = delete;
  ModuleList& operator=(const ModuleList&) = delete;
  ~ModuleList();

  // Every Linear / Conv2d weight of a diffusers U-Net or CLIP text-encoder file, with kohya's
  // name (`prefix` + module path, dots as underscores). `sgm_unet` reads an original-layout
  // U-Net (keys under `strip`) instead of a diffusers one.
  enum class Kind { DiffusersUnet, SgmUnet, ClipText };
  void add_file(const std::string& path, Kind kind, int32_t role, const std::string& prefix, const std::string& strip = "");

  const std::vector<sumi_module_info>& infos() const { return infos_; }
  const at::Tensor& weight(size_t i) const { return weights_.at(i); }
  // Index of a kohya module name; throws when absent.
  size_t index(const std::string& kohya_name) const;

 private:
  std::deque<std::string> names_;
  std::vector<at::Tensor> weights_;
  std::vector<sumi_module_info> infos_;
};

ModuleList& tiny_sd(const std::string& name);  // "tiny-sd1" / "tiny-sd2v": U-Net + text encoder
ModuleList& tiny_sdxl();                       // SGM U-Net from the single file + both text encoders

// "key<TAB>[shape]<TAB>dtype" lines of a fixture key list, comments skipped.
std::vector<std::string> read_key_list(const std::string& path);

// A lora network attached to `modules`; `selected` receives attach's flags.
struct Attached {
  host::Registry registry;
  std::unique_ptr<host::Component> net;
  std::vector<int32_t> selected;
  const sumi_network_vtable& vt() const { return net->vtable<sumi_network_vtable>(); }
};
std::unique_ptr<Attached> attach_lora(const ModuleList& modules, const std::map<std::string, std::string>& config);

// The registry's entries of the network as "key<TAB>[shape]<TAB>dtype" lines, sorted, after a
// round trip through a safetensors file (what saving the network writes).
std::vector<std::string> saved_key_list(const Attached& a);

}  // namespace sumi::test
