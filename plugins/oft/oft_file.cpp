// The target rules of sd-scripts' networks/oft.py (OFTNetwork.__init__'s create_modules) and
// its file keys, restated over the model's module list.
//
// kohya walks its own U-Net's module tree: every Linear and 1x1 Conv2d below a CrossAttention
// (default) or a Transformer2DModel (enable_all_linear), and with enable_conv every Linear and
// Conv2d below ResnetBlock2D / Downsample2D / Upsample2D. The model marks transformer children
// with in_transformer; the attention and ResNet children are recognised from the kohya name.
#include "oft_file.h"

#include <regex>
#include <set>

namespace sumi::oft {

namespace {

using sumi::shape_str;

constexpr const char* kLoraUnet = "lora_unet_";
constexpr const char* kOftUnet = "oft_unet_";

bool starts_with(const std::string& s, const std::string& p) { return s.rfind(p, 0) == 0; }

[[noreturn]] void invalid(const std::string& msg) { throw Error(SUMI_ERR_INVALID_ARGUMENT, "oft: " + msg); }

bool sgm_path(const std::string& path) {
  return starts_with(path, "input_blocks_") || starts_with(path, "middle_block_") || starts_with(path, "output_blocks_");
}

}  // namespace

std::string oft_name(const std::string& lora_name) {
  if (!starts_with(lora_name, kLoraUnet)) return "";
  return kOftUnet + lora_name.substr(std::char_traits<char>::length(kLoraUnet));
}

bool is_attention_linear(const std::string& path) {
  static const std::regex re("_attn[0-9]+_to_(q|k|v|out_0)$");
  return std::regex_search(path, re);
}

bool in_resnet_or_sampler(const std::string& path, bool sgm) {
  if (sgm) {
    // SGM: a ResBlock's in_layers.2 / emb_layers.1 / out_layers.3 / skip_connection, a
    // Downsample's op, an Upsample's conv (input_blocks.0.0 is conv_in, which kohya leaves out).
    static const std::regex re(
        "^(input_blocks_[0-9]+_[0-9]+|middle_block_[0-9]+|output_blocks_[0-9]+_[0-9]+)_"
        "(in_layers_[0-9]+|out_layers_[0-9]+|emb_layers_[0-9]+|skip_connection|op|conv)$");
    return !starts_with(path, "input_blocks_0_0") && std::regex_search(path, re);
  }
  static const std::regex re(
      "^(down_blocks_[0-9]+_(resnets|downsamplers)|up_blocks_[0-9]+_(resnets|upsamplers)|mid_block_resnets)_[0-9]+_");
  return std::regex_search(path, re);
}

std::vector<size_t> choose_targets(const std::vector<const sumi_module_info*>& modules, const Settings& s) {
  bool sgm = false;
  for (const auto* m : modules)
    if (m->role == SUMI_ROLE_UNET && m->name && starts_with(m->name, kLoraUnet) &&
        sgm_path(std::string(m->name).substr(std::char_traits<char>::length(kLoraUnet))))
      sgm = true;
  std::vector<size_t> out;
  std::set<std::string> seen;
  for (size_t i = 0; i < modules.size(); ++i) {
    const sumi_module_info& m = *modules[i];
    if (m.role != SUMI_ROLE_UNET) continue;  // OFT never touches a text encoder
    if (m.kind != SUMI_MODULE_LINEAR && m.kind != SUMI_MODULE_CONV2D) continue;
    if (!m.name || !*m.name) invalid("module " + std::to_string(i) + " of the model has no name");
    const std::string name = m.name;
    if (!starts_with(name, kLoraUnet))
      invalid("U-Net module '" + name + "' does not have a kohya name (lora_unet_...); OFT names its modules after them");
    const std::string path = name.substr(std::char_traits<char>::length(kLoraUnet));
    const bool linear_like = m.kind == SUMI_MODULE_LINEAR || (m.kernel[0] == 1 && m.kernel[1] == 1);
    bool take = false;
    if (m.in_transformer) take = linear_like && (s.enable_all_linear || is_attention_linear(path));
    else if (s.enable_conv) take = in_resnet_or_sampler(path, sgm);
    if (!take) continue;
    if (!seen.insert(name).second) invalid("the model lists module '" + name + "' twice; kohya names must be unique");
    out.push_back(i);
  }
  return out;
}

FileLayout read_file(const std::vector<std::string>& names, const std::vector<Tensor>& tensors) {
  if (names.size() != tensors.size()) invalid("load got " + std::to_string(names.size()) + " names for " + std::to_string(tensors.size()) + " tensors");
  FileLayout f;
  std::string first_blocks, first_alpha;
  for (size_t i = 0; i < names.size(); ++i) {
    const std::string& key = names[i];
    const Tensor& t = tensors[i];
    std::string part;
    for (const char* sfx : {".oft_blocks", ".alpha"}) {
      const std::string s = sfx;
      if (key.size() > s.size() && key.compare(key.size() - s.size(), s.size(), s) == 0) part = s;
    }
    const std::string mod = part.empty() ? key : key.substr(0, key.size() - part.size());
    if (part.empty() || !starts_with(mod, kOftUnet))
      invalid("the file's tensor '" + key +
              "' is not a kohya OFT key (expected oft_unet_<module>.oft_blocks or oft_unet_<module>.alpha); "
              "is this a network of another kind (a LoRA file has lora_down / lora_up keys)?");
    FileModule& fm = f.modules[mod];
    if (part == ".alpha") {
      if (t.numel() != 1) invalid("the file's '" + key + "' has shape " + shape_str(t.sizes()) + "; an alpha is one number");
      if (fm.alpha.defined()) invalid("the file's tensor '" + key + "' is given twice");
      fm.alpha = t;
      if (first_alpha.empty() || key < first_alpha) {
        first_alpha = key;
        f.alpha = t.item();
      }
    } else {
      const auto s = t.sizes();
      if (s.size() != 3 || s[1] != s[2] || s[0] < 1)
        invalid("the file's '" + key + "' has shape " + shape_str(s) + "; OFT blocks are [num_blocks, n, n]");
      if (fm.blocks.defined()) invalid("the file's tensor '" + key + "' is given twice");
      fm.blocks = t;
      if (first_blocks.empty() || key < first_blocks) {
        first_blocks = key;
        f.num_blocks = s[0];
      }
    }
  }
  bool sgm = false;
  for (const auto& [mod, fm] : f.modules)
    if (sgm_path(mod.substr(std::char_traits<char>::length(kOftUnet)))) sgm = true;
  for (const auto& [mod, fm] : f.modules) {
    if (!fm.blocks.defined()) invalid("the file has '" + mod + ".alpha' but no '" + mod + ".oft_blocks'");
    const std::string path = mod.substr(std::char_traits<char>::length(kOftUnet));
    if (in_resnet_or_sampler(path, sgm)) f.enable_conv = true;
    else if (!is_attention_linear(path)) f.enable_all_linear = true;
  }
  return f;
}

}  // namespace sumi::oft
