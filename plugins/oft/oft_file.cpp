// The target rules of sd-scripts' networks/oft.py (OFTNetwork.__init__'s create_modules) and
// its file keys, restated over the model's module list.
//
// kohya walks its own U-Net's module tree: every Linear and 1x1 Conv2d below a CrossAttention
// (default) or a Transformer2DModel (enable_all_linear), and with enable_conv every Linear and
// Conv2d below ResnetBlock2D / Downsample2D / Upsample2D. The model marks transformer children
// with in_transformer; the attention and ResNet children are recognised from the kohya name.
#include "oft_file.h"

#include <map>
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

namespace {

// The part of an OFT key (".oft_blocks" / ".alpha") and its module; "" when it is not an OFT key.
std::string oft_part(const std::string& key, std::string* module) {
  for (const char* sfx : {".oft_blocks", ".alpha"}) {
    const std::string p = sfx;
    if (key.size() > p.size() && key.compare(key.size() - p.size(), p.size(), p) == 0) {
      const std::string mod = key.substr(0, key.size() - p.size());
      if (!starts_with(mod, kOftUnet)) return "";
      if (module) *module = mod;
      return p;
    }
  }
  return "";
}

int64_t numel(const std::vector<int64_t>& shape) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

}  // namespace

bool is_oft_tensor(const std::string& key, const std::vector<int64_t>& shape) {
  const std::string part = oft_part(key, nullptr);
  if (part == ".alpha") return numel(shape) == 1;
  return part == ".oft_blocks" && shape.size() == 3 && shape[0] >= 1 && shape[1] == shape[2];
}

FileLayout read_layout(const std::vector<std::string>& names, const std::vector<std::vector<int64_t>>& shapes) {
  if (names.size() != shapes.size()) invalid("got " + std::to_string(names.size()) + " names for " + std::to_string(shapes.size()) + " tensors");
  FileLayout f;
  std::map<std::string, std::set<std::string>> parts;
  std::string first_blocks;
  for (size_t i = 0; i < names.size(); ++i) {
    const std::string& key = names[i];
    std::string mod;
    const std::string part = oft_part(key, &mod);
    if (part.empty())
      invalid("the file's tensor '" + key +
              "' is not a kohya OFT key (expected oft_unet_<module>.oft_blocks or oft_unet_<module>.alpha); "
              "is this a network of another kind (a LoRA file has lora_down / lora_up keys)?");
    if (!is_oft_tensor(key, shapes[i]))
      invalid("the file's '" + key + "' has shape " + shape_str(shapes[i]) +
              (part == ".alpha" ? "; an alpha is one number" : "; OFT blocks are [num_blocks, n, n]"));
    if (!parts[mod].insert(part).second) invalid("the file's tensor '" + key + "' is given twice");
    f.modules[mod];
    if (part == ".oft_blocks" && (first_blocks.empty() || key < first_blocks)) {
      first_blocks = key;
      f.num_blocks = shapes[i][0];
    }
  }
  bool sgm = false;
  for (const auto& [mod, fm] : f.modules)
    if (sgm_path(mod.substr(std::char_traits<char>::length(kOftUnet)))) sgm = true;
  for (const auto& [mod, p] : parts) {
    if (!p.count(".oft_blocks")) invalid("the file has '" + mod + ".alpha' but no '" + mod + ".oft_blocks'");
    const std::string path = mod.substr(std::char_traits<char>::length(kOftUnet));
    if (in_resnet_or_sampler(path, sgm)) f.enable_conv = true;
    else if (!is_attention_linear(path)) f.enable_all_linear = true;
  }
  return f;
}

FileLayout read_file(const std::vector<std::string>& names, const std::vector<Tensor>& tensors) {
  if (names.size() != tensors.size()) invalid("load got " + std::to_string(names.size()) + " names for " + std::to_string(tensors.size()) + " tensors");
  std::vector<std::vector<int64_t>> shapes;
  for (const Tensor& t : tensors) shapes.push_back(t.sizes());
  FileLayout f = read_layout(names, shapes);
  std::string first_alpha;
  for (size_t i = 0; i < names.size(); ++i) {
    std::string mod;
    const std::string part = oft_part(names[i], &mod);
    FileModule& fm = f.modules.at(mod);
    if (part == ".oft_blocks") {
      fm.blocks = tensors[i];
      continue;
    }
    fm.alpha = tensors[i];
    if (first_alpha.empty() || names[i] < first_alpha) {
      first_alpha = names[i];
      f.alpha = tensors[i].item();
    }
  }
  return f;
}

}  // namespace sumi::oft
