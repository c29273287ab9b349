#include "lora_test_util.h"

#include "core/host_api.h"
#include "core/tensor_handle.h"
#include "sumi/io/safetensors_torch.h"

#include <algorithm>
#include <fstream>
#include <stdexcept>

namespace sumi::test {

namespace {

bool ends_with(const std::string& s, const std::string& x) {
  return s.size() >= x.size() && s.compare(s.size() - x.size(), x.size(), x) == 0;
}

std::string shape_text(const at::Tensor& t) {
  std::string s = "[";
  for (int64_t i = 0; i < t.dim(); ++i) s += (i ? ", " : "") + std::to_string(t.size(i));
  return s + "]";
}

}  // namespace

ModuleList::~ModuleList() {
  for (auto& m : infos_) host::host_api()->tensor_release(m.weight);
}

void ModuleList::add_file(const std::string& path, Kind kind, int32_t role, const std::string& prefix,
                          const std::string& strip) {
  for (auto& [key, t] : io::load_all(path, at::kFloat)) {
    if (!ends_with(key, ".weight") || (t.dim() != 2 && t.dim() != 4)) continue;
    if (!strip.empty() && key.rfind(strip, 0) != 0) continue;
    const std::string mod = key.substr(strip.size(), key.size() - strip.size() - 7);
    if (kind == Kind::ClipText && mod.find("embeddings.") != std::string::npos) continue;  // nn.Embedding
    sumi_module_info m{};
    m.struct_size = sizeof(sumi_module_info);
    m.kind = t.dim() == 4 ? SUMI_MODULE_CONV2D : SUMI_MODULE_LINEAR;
    m.role = role;
    m.out_features = t.size(0);
    m.in_features = t.size(1);
    m.kernel[0] = t.dim() == 4 ? t.size(2) : 1;
    m.kernel[1] = t.dim() == 4 ? t.size(3) : 1;
    const bool down = kind == Kind::SgmUnet ? ends_with(mod, ".op") : ends_with(mod, "downsamplers.0.conv");
    m.stride[0] = m.stride[1] = down ? 2 : 1;
    m.padding[0] = m.kernel[0] / 2;
    m.padding[1] = m.kernel[1] / 2;
    switch (kind) {
      case Kind::DiffusersUnet: m.in_transformer = mod.find("attentions.") != std::string::npos; break;
      case Kind::SgmUnet:
        m.in_transformer = mod.find(".transformer_blocks.") != std::string::npos || ends_with(mod, ".proj_in") ||
                           ends_with(mod, ".proj_out");
        break;
      case Kind::ClipText:
        m.in_transformer = mod.find(".self_attn.") != std::string::npos || mod.find(".mlp.") != std::string::npos;
        break;
    }
    std::string name = prefix + "." + mod;
    std::replace(name.begin(), name.end(), '.', '_');
    names_.push_back(name);
    m.name = names_.back().c_str();
    weights_.push_back(t);
    m.weight = host::make_handle(t);
    infos_.push_back(m);
  }
}

size_t ModuleList::index(const std::string& kohya_name) const {
  for (size_t i = 0; i < infos_.size(); ++i)
    if (kohya_name == infos_[i].name) return i;
  throw std::runtime_error("no module " + kohya_name);
}

ModuleList& tiny_sd(const std::string& name) {
  static std::map<std::string, std::unique_ptr<ModuleList>> cache;
  auto& slot = cache[name];
  if (!slot) {
    slot = std::make_unique<ModuleList>();
    slot->add_file(fixture(name + "/text_encoder/model.safetensors"), ModuleList::Kind::ClipText, SUMI_ROLE_TEXT_ENCODER,
                   "lora_te");
    slot->add_file(fixture(name + "/unet/diffusion_pytorch_model.safetensors"), ModuleList::Kind::DiffusersUnet,
                   SUMI_ROLE_UNET, "lora_unet");
  }
  return *slot;
}

ModuleList& tiny_sdxl() {
  static ModuleList* m = [] {
    auto* l = new ModuleList();
    // The U-Net first: the network must still create the text encoders' modules first.
    l->add_file(fixture("tiny-sdxl.safetensors"), ModuleList::Kind::SgmUnet, SUMI_ROLE_UNET, "lora_unet",
                "model.diffusion_model.");
    l->add_file(fixture("tiny-sdxl/text_encoder/model.safetensors"), ModuleList::Kind::ClipText, SUMI_ROLE_TEXT_ENCODER,
                "lora_te1");
    l->add_file(fixture("tiny-sdxl/text_encoder_2/model.safetensors"), ModuleList::Kind::ClipText,
                SUMI_ROLE_TEXT_ENCODER_2, "lora_te2");
    return l;
  }();
  return *m;
}

std::vector<std::string> read_key_list(const std::string& path) {
  std::ifstream in(path);
  if (!in) throw std::runtime_error("cannot read " + path);
  std::vector<std::string> out;
  std::string line;
  while (std::getline(in, line))
    if (!line.empty() && line[0] != '#') out.push_back(line);
  return out;
}

std::unique_ptr<Attached> attach_lora(const ModuleList& modules, const std::map<std::string, std::string>& config) {
  auto a = std::make_unique<Attached>();
  a->net = make(SUMI_KIND_NETWORK, "lora", a->registry, config, "network");
  a->selected.assign(modules.infos().size(), 0);
  a->net->check(a->vt().attach(a->net->self(), modules.infos().data(), static_cast<int64_t>(modules.infos().size()),
                               a->selected.data()),
                "attach");
  return a;
}

std::vector<std::string> saved_key_list(const Attached& a) {
  io::NamedTensors tensors;
  for (const auto& e : a.registry.entries())
    if (e.component == "network") tensors.emplace_back(e.name, e.tensor.detach());
  const std::string path = std::string(SUMI_BUILD_DIR) + "/test_lora_saved.safetensors";
  io::save_tensors(path, tensors);
  std::vector<std::string> out;
  for (auto& [key, t] : io::load_all(path))
    out.push_back(key + "\t" + shape_text(t) + "\t" + io::dtype_from_scalar_type(t.scalar_type()));
  std::sort(out.begin(), out.end());
  return out;
}

}  // namespace sumi::test
