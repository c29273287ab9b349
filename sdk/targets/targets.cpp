// The selection rules of sd-scripts' networks/lora.py (LoRANetwork.create_modules,
// get_block_dims_and_alphas, get_block_index), restated over the model's module list.
//
// kohya walks the torch module tree: children of Transformer2DModel / CLIPAttention / CLIPMLP
// always qualify; children of ResnetBlock2D / Downsample2D / Upsample2D only when conv_dim or
// conv_block_dims is given. The model marks the first set with in_transformer; the second set
// is recognised from the kohya name, since sumi_module_info carries no parent-class field.
#include <sumi/targets.hpp>

#include <sumi/tensor.hpp>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <regex>
#include <set>

namespace sumi::targets {

namespace {

bool starts_with(const std::string& s, const char* p) { return s.rfind(p, 0) == 0; }

[[noreturn]] void invalid(const Settings& s, const std::string& msg) { throw Error(SUMI_ERR_INVALID_ARGUMENT, s.network + ": " + msg); }

// A child of ResnetBlock2D / Downsample2D / Upsample2D, judged by its kohya name.
bool in_resnet_or_sampler(const std::string& name, bool sgm) {
  if (sgm) {
    // SGM U-Net: input_blocks.0.0 is conv_in; every other module of input/middle/output blocks
    // outside the SpatialTransformer (in_transformer) belongs to a ResBlock, Downsample or
    // Upsample.
    static const std::regex re("^lora_unet_(input_blocks_[0-9]+_[0-9]+|middle_block_[0-9]+|output_blocks_[0-9]+_[0-9]+)_");
    return !starts_with(name, "lora_unet_input_blocks_0_0") && std::regex_search(name, re);
  }
  static const std::regex re(
      "^lora_unet_(down_blocks_[0-9]+_(resnets|downsamplers)|up_blocks_[0-9]+_(resnets|upsamplers)|mid_block_resnets)_[0-9]+_");
  return std::regex_search(name, re);
}

int role_order(int32_t role) {
  switch (role) {
    case SUMI_ROLE_TEXT_ENCODER: return 0;
    case SUMI_ROLE_TEXT_ENCODER_2: return 1;
    default: return 2;
  }
}

std::string join(const std::vector<int64_t>& v) {
  std::string s;
  for (size_t i = 0; i < v.size(); ++i) s += (i ? "," : "") + std::to_string(v[i]);
  return s;
}

// kohya's get_block_dims_and_alphas: fills the lists that were left out and checks lengths.
struct Blocks {
  std::vector<int64_t> dims, conv_dims;
  std::vector<double> alphas, conv_alphas;
};

Blocks resolve_blocks(const Settings& s, bool sgm) {
  const size_t n = sgm ? 23 : 25;
  const char* family = sgm ? "an SDXL U-Net (SGM names, 1 + 9 input + 3 middle + 9 output + 1 out)"
                           : "an SD1/SD2 U-Net (12 down + 1 mid + 12 up)";
  auto check_len = [&](size_t got, const char* key) {
    if (got != n)
      invalid(s, std::string(key) + " has " + std::to_string(got) + " values but " + family + " needs " +
              std::to_string(n) + ", one per block in kohya's numbering");
  };
  Blocks b;
  check_len(s.block_dims.size(), "block_dims");
  b.dims = s.block_dims;
  if (!s.block_alphas.empty()) check_len(s.block_alphas.size(), "block_alphas");
  b.alphas = s.block_alphas.empty() ? std::vector<double>(n, s.alpha) : s.block_alphas;
  if (!s.conv_block_dims.empty()) {
    check_len(s.conv_block_dims.size(), "conv_block_dims");
    b.conv_dims = s.conv_block_dims;
    if (!s.conv_block_alphas.empty()) check_len(s.conv_block_alphas.size(), "conv_block_alphas");
    b.conv_alphas = s.conv_block_alphas.empty() ? std::vector<double>(n, s.conv_alpha) : s.conv_block_alphas;
  } else if (s.conv_dim >= 0) {
    b.conv_dims.assign(n, s.conv_dim);
    b.conv_alphas.assign(n, s.conv_alpha);
  }
  for (auto d : b.dims)
    if (d < 0) invalid(s, "block_dims has a negative rank (" + join(b.dims) + "); use 0 to leave a block out");
  for (auto d : b.conv_dims)
    if (d < 0) invalid(s, "conv_block_dims has a negative rank (" + join(b.conv_dims) + "); use 0 to leave a block out");
  return b;
}

}  // namespace

int block_index(const std::string& name, bool sgm) {
  if (!sgm) {
    static const std::regex re("(up|down)_blocks_([0-9]+)_(resnets|upsamplers|downsamplers|attentions)_([0-9]+)_");
    std::smatch m;
    if (std::regex_search(name, m, re)) {
      const int i = std::stoi(m[2].str()), j = std::stoi(m[4].str());
      const std::string kind = m[3].str();
      const int idx = (kind == "upsamplers" || kind == "downsamplers") ? 3 * i + 2 : 3 * i + j;
      return m[1].str() == "down" ? 1 + idx : 12 + 1 + idx;
    }
    if (name.find("mid_block_") != std::string::npos) return 12;
    return -1;
  }
  if (!starts_with(name, "lora_unet_")) return -1;
  const std::string rest = name.substr(10);
  auto number_after = [&](size_t prefix_len) {
    size_t end = rest.find('_', prefix_len);
    return std::stoi(rest.substr(prefix_len, end == std::string::npos ? std::string::npos : end - prefix_len));
  };
  if (starts_with(rest, "time_embed_") || starts_with(rest, "label_emb_")) return 0;
  if (starts_with(rest, "input_blocks_")) return 1 + number_after(13);
  if (starts_with(rest, "middle_block_")) return 10 + number_after(13);
  if (starts_with(rest, "output_blocks_")) return 13 + number_after(14);
  if (starts_with(rest, "out_")) return 22;
  return -1;
}

bool uses_sgm_names(const std::vector<const sumi_module_info*>& modules) {
  for (const auto* m : modules) {
    if (m->role != SUMI_ROLE_UNET || !m->name) continue;
    const std::string n = m->name;
    if (starts_with(n, "lora_unet_input_blocks_") || starts_with(n, "lora_unet_middle_block_") ||
        starts_with(n, "lora_unet_output_blocks_"))
      return true;
  }
  return false;
}

std::vector<Target> choose_targets(const std::vector<const sumi_module_info*>& modules, const Settings& s) {
  const bool sgm = uses_sgm_names(modules);
  const bool block_mode = !s.block_dims.empty() && s.module_dims.empty();
  Blocks blocks;
  if (block_mode) blocks = resolve_blocks(s, sgm);
  // kohya adds the ResNet/sampler containers whenever a conv rank is configured at all.
  const bool from_file = !s.module_dims.empty();
  const bool conv_containers = s.conv_dim >= 0 || !blocks.conv_dims.empty() || from_file;

  std::vector<Target> out;
  std::set<std::string> seen;
  for (size_t i = 0; i < modules.size(); ++i) {
    const sumi_module_info& m = *modules[i];
    if (!m.name || !*m.name) invalid(s, "module " + std::to_string(i) + " of the model has no name");
    const std::string name = m.name;
    const bool unet = m.role == SUMI_ROLE_UNET;
    if (unet ? !s.unet : !s.text_encoder) continue;
    if (m.kind != SUMI_MODULE_LINEAR && m.kind != SUMI_MODULE_CONV2D) continue;
    const bool container = m.in_transformer != 0 || (unet && conv_containers && in_resnet_or_sampler(name, sgm));
    if (!container) continue;

    const bool linear_like = m.kind == SUMI_MODULE_LINEAR || (m.kernel[0] == 1 && m.kernel[1] == 1);
    int64_t dim = 0;
    double alpha = 0;
    if (from_file) {
      auto it = s.module_dims.find(name);
      if (it == s.module_dims.end()) continue;
      dim = it->second;
      alpha = static_cast<double>(dim);  // the file's alpha comes with its tensors (load)
    } else if (unet && block_mode) {
      const int b = block_index(name, sgm);
      if (b < 0 || b >= static_cast<int>(blocks.dims.size()))
        invalid(s, "block_dims: module '" + name + "' belongs to no block of kohya's numbering (" +
                (sgm ? "SGM" : "diffusers") + " names); block_dims needs the model's standard module names");
      if (linear_like) {
        dim = blocks.dims[static_cast<size_t>(b)];
        alpha = blocks.alphas[static_cast<size_t>(b)];
      } else if (!blocks.conv_dims.empty()) {
        dim = blocks.conv_dims[static_cast<size_t>(b)];
        alpha = blocks.conv_alphas[static_cast<size_t>(b)];
      }
    } else if (linear_like) {
      dim = s.dim;
      alpha = s.alpha;
    } else if (s.conv_dim >= 0) {
      dim = s.conv_dim;
      alpha = s.conv_alpha;
    }
    if (dim <= 0) continue;  // kohya skips rank 0
    if (!seen.insert(name).second) invalid(s, "the model lists module '" + name + "' twice; kohya names must be unique");
    out.push_back({i, dim, alpha == 0 ? static_cast<double>(dim) : alpha});
  }
  std::stable_sort(out.begin(), out.end(), [&](const Target& a, const Target& b) {
    return role_order(modules[a.index]->role) < role_order(modules[b.index]->role);
  });
  return out;
}

std::string lora_key_module(const std::string& key, std::string* part) {
  for (const char* suffix : {".lora_down.weight", ".lora_up.weight", ".alpha"}) {
    const std::string sfx = suffix;
    if (key.size() > sfx.size() && key.compare(key.size() - sfx.size(), sfx.size(), sfx) == 0) {
      if (part) *part = sfx;
      return key.substr(0, key.size() - sfx.size());
    }
  }
  return "";
}

bool is_lora_tensor(const std::string& key, const std::vector<int64_t>& shape) {
  std::string part;
  if (lora_key_module(key, &part).empty()) return false;
  if (part == ".alpha") {
    int64_t n = 1;
    for (auto d : shape) n *= d;
    return n == 1;
  }
  if (shape.size() != 2 && shape.size() != 4) return false;
  if (part == ".lora_up.weight" && shape.size() == 4) return shape[2] == 1 && shape[3] == 1;
  return true;
}

std::map<std::string, int64_t> lora_file_ranks(const std::vector<std::string>& names, const std::vector<std::vector<int64_t>>& shapes,
                                               const std::string& network) {
  std::map<std::string, int64_t> out;
  for (size_t i = 0; i < names.size(); ++i) {
    const std::vector<int64_t> none;
    const auto& shape = i < shapes.size() ? shapes[i] : none;
    if (!is_lora_tensor(names[i], shape))
      throw Error(SUMI_ERR_INVALID_ARGUMENT, network + ": the file's tensor '" + names[i] +
                                                 "' is not a kohya LoRA tensor (expected <module>.lora_down.weight, "
                                                 "<module>.lora_up.weight or <module>.alpha); is this a LoRA of another kind?");
    std::string part;
    const std::string mod = lora_key_module(names[i], &part);
    if (part == ".lora_down.weight") out[mod] = shape[0];
  }
  for (size_t i = 0; i < names.size(); ++i) {
    std::string part;
    const std::string mod = lora_key_module(names[i], &part);
    if (part == ".lora_up.weight" && !out.count(mod))
      throw Error(SUMI_ERR_INVALID_ARGUMENT, network + ": the file has '" + names[i] + "' but no " + mod + ".lora_down.weight");
  }
  if (out.empty()) throw Error(SUMI_ERR_INVALID_ARGUMENT, network + ": the file has no lora_down weights; it is not a kohya LoRA file");
  return out;
}

namespace {

constexpr int kLrBlocks = 12;  // kohya's LoRANetwork.NUM_OF_BLOCKS

double parse_number(const std::string& text, const std::string& what) {
  const char* b = text.c_str();
  char* end = nullptr;
  const double v = std::strtod(b, &end);
  std::string rest = end ? std::string(end) : std::string();
  rest.erase(0, rest.find_first_not_of(" \t"));
  if (end == b || !rest.empty() || !std::isfinite(v)) throw Error(SUMI_ERR_INVALID_ARGUMENT, what + ": '" + text + "' is not a number");
  return v;
}

}  // namespace

std::vector<double> block_lr_weight_list(const std::string& text, const std::string& key, const std::string& network) {
  const std::string what = network + ": " + key;
  std::vector<double> out;
  if (text.find(',') != std::string::npos) {
    size_t start = 0;
    while (true) {
      const size_t comma = text.find(',', start);
      std::string item = text.substr(start, comma == std::string::npos ? std::string::npos : comma - start);
      item.erase(0, item.find_first_not_of(" \t"));
      item.erase(item.find_last_not_of(" \t") + 1);
      out.push_back(item.empty() ? 0.0 : parse_number(item, what));
      if (comma == std::string::npos) break;
      start = comma + 1;
    }
  } else {
    const size_t plus = text.find('+');
    const std::string name = text.substr(0, plus);
    const double offset = plus == std::string::npos ? 0.0 : parse_number(text.substr(plus + 1), what + " (the +offset)");
    const double pi = std::acos(-1.0);
    for (int k = 0; k < kLrBlocks; ++k) {
      const double up = static_cast<double>(k) / (kLrBlocks - 1);               // 0 .. 1
      const double down = static_cast<double>(kLrBlocks - 1 - k) / (kLrBlocks - 1);  // 1 .. 0
      if (name == "cosine") out.push_back(std::sin(pi * down / 2) + offset);
      else if (name == "sine") out.push_back(std::sin(pi * up / 2) + offset);
      else if (name == "linear") out.push_back(up + offset);
      else if (name == "reverse_linear") out.push_back(down + offset);
      else if (name == "zeros") out.push_back(0.0 + offset);
      else
        throw Error(SUMI_ERR_INVALID_ARGUMENT, what + " is '" + text +
                                                   "': expected comma-separated weights (one value needs a comma: '0.5,') or a preset "
                                                   "cosine, sine, linear, reverse_linear, zeros with an optional +offset ('sine+0.5')");
    }
  }
  if (out.size() > static_cast<size_t>(kLrBlocks))
    throw Error(SUMI_ERR_INVALID_ARGUMENT, what + " has " + std::to_string(out.size()) + " values; kohya's LoRA has " +
                                               std::to_string(kLrBlocks) + " blocks per side");
  out.resize(kLrBlocks, 1.0);  // kohya fills a short list with 1
  return out;
}

double BlockLrWeights::weight(int block) const {
  if (block < 0) return 1.0;
  if (block < kLrBlocks) return down.empty() ? 1.0 : down[static_cast<size_t>(block)];
  if (block == kLrBlocks) return mid;
  return up.empty() ? 1.0 : up[static_cast<size_t>(block - kLrBlocks - 1)];
}

BlockLrWeights block_lr_weights(const std::string& down, const std::string& mid, const std::string& up, double zero_threshold,
                                const std::string& network) {
  BlockLrWeights w;
  if (down.empty() && mid.empty() && up.empty()) return w;
  if (!std::isfinite(zero_threshold))
    throw Error(SUMI_ERR_INVALID_ARGUMENT, network + ": block_lr_zero_threshold must be a number");
  w.set = true;
  auto cut = [&](double v) { return v > zero_threshold ? v : 0.0; };
  if (!down.empty()) w.down = block_lr_weight_list(down, "down_lr_weight", network);
  if (!up.empty()) w.up = block_lr_weight_list(up, "up_lr_weight", network);
  if (!mid.empty()) w.mid = cut(parse_number(mid, network + ": mid_lr_weight"));
  for (double& v : w.down) v = cut(v);
  for (double& v : w.up) v = cut(v);
  return w;
}

}  // namespace sumi::targets
