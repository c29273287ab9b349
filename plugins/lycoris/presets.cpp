#include "presets.h"

#include <sumi/plugin.hpp>
#include <sumi/targets.hpp>

#include <algorithm>
#include <regex>

namespace sumi::lycoris {

namespace {

// LyCORIS's PRESET table, for the U-Net / text-encoder classes and names an SD model has.
const Preset kPresets[] = {
    // name                    te_attn te_mlp transf attn  resnet sampler conv_io temb  conv
    {"full",                   true,   true,  true,  false, true,  true,   true,   true,  true},
    {"full-lin",               true,   true,  true,  false, true,  false,  false,  true,  false},
    {"attn-mlp",               true,   true,  true,  false, false, false,  false,  false, false},
    {"attn-only",              true,   false, false, true,  false, false,  false,  false, false},
    {"unet-only",              false,  false, true,  false, true,  true,   true,   true,  true},
    {"unet-transformer-only",  false,  false, true,  false, false, false,  false,  false, false},
    {"unet-convblock-only",    false,  false, false, false, true,  true,   true,   false, true},
};

std::string names() {
  std::string s;
  for (const Preset& p : kPresets) s += (s.empty() ? "" : ", ") + std::string(p.name);
  return s;
}

bool matches(const std::string& s, const std::regex& re) { return std::regex_search(s, re); }

const std::regex kAttention("_attn[0-9]+_to_(q|k|v|out_0)$");
const std::regex kSgmDown("^input_blocks_[0-9]+_0_op$");
const std::regex kSgmUp("^output_blocks_[0-9]+_[0-9]+_conv$");
const std::regex kSgmResnet("^(input_blocks_[0-9]+_0|middle_block_[0-9]+|output_blocks_[0-9]+_0)_"
                            "(in_layers_[0-9]+|out_layers_[0-9]+|emb_layers_[0-9]+|skip_connection)$");
const std::regex kSampler("^(down_blocks_[0-9]+_downsamplers|up_blocks_[0-9]+_upsamplers)_[0-9]+_");
const std::regex kResnet("^(down_blocks_[0-9]+_resnets|up_blocks_[0-9]+_resnets|mid_block_resnets)_[0-9]+_");

// Where a U-Net layer sits, from its name after "lora_unet_".
struct UnetPlace {
  bool attention = false, resnet = false, sampler = false, conv_in_out = false, time_embedding = false;
};

UnetPlace place(const std::string& path, bool sgm, bool in_transformer) {
  UnetPlace u;
  if (in_transformer) {
    u.attention = matches(path, kAttention);
    return u;
  }
  if (sgm) {
    u.conv_in_out = path == "input_blocks_0_0" || path == "out_2";
    u.time_embedding = path == "time_embed_0" || path == "time_embed_2";
    u.sampler = matches(path, kSgmDown) || matches(path, kSgmUp);
    u.resnet = !u.sampler && matches(path, kSgmResnet);
    return u;
  }
  u.conv_in_out = path == "conv_in" || path == "conv_out";
  u.time_embedding = path == "time_embedding_linear_1" || path == "time_embedding_linear_2";
  u.sampler = matches(path, kSampler);
  u.resnet = matches(path, kResnet);
  return u;
}

bool takes(const sumi_module_info& m, const Preset& p, bool sgm) {
  const std::string name = m.name ? m.name : "";
  if (m.role != SUMI_ROLE_UNET)
    return (p.te_attention && name.find("_self_attn_") != std::string::npos) || (p.te_mlp && name.find("_mlp_") != std::string::npos);
  if (name.rfind("lora_unet_", 0) != 0) return false;
  if (p.transformer && m.in_transformer) return true;
  const UnetPlace u = place(name.substr(10), sgm, m.in_transformer != 0);
  return (p.attention && u.attention) || (p.resnet && u.resnet) || (p.sampler && u.sampler) || (p.conv_in_out && u.conv_in_out) ||
         (p.time_embedding && u.time_embedding);
}

int role_order(int32_t role) { return role == SUMI_ROLE_TEXT_ENCODER ? 0 : role == SUMI_ROLE_TEXT_ENCODER_2 ? 1 : 2; }

}  // namespace

const Preset& find_preset(const std::string& name) {
  for (const Preset& p : kPresets)
    if (name == p.name) return p;
  throw Error(SUMI_ERR_INVALID_ARGUMENT, "lycoris: preset '" + name + "' is not supported; sumi supports LyCORIS's presets " + names() +
                                             (name == "ia3" ? " (ia3 goes with LyCORIS's IA3 algorithm, which sumi does not have)"
                                                            : " (preset files are not read)"));
}

std::vector<Choice> choose_modules(const std::vector<const sumi_module_info*>& modules, const Preset& p, bool unet,
                                   bool text_encoder) {
  const bool sgm = targets::uses_sgm_names(modules);
  std::vector<Choice> out;
  for (size_t i = 0; i < modules.size(); ++i) {
    const sumi_module_info& m = *modules[i];
    if (m.kind != SUMI_MODULE_LINEAR && m.kind != SUMI_MODULE_CONV2D) continue;
    if (m.role == SUMI_ROLE_UNET ? !unet : !text_encoder) continue;
    if (!takes(m, p, sgm)) continue;
    const bool kxk = m.kind == SUMI_MODULE_CONV2D && (m.kernel[0] > 1 || m.kernel[1] > 1);
    if (kxk && !p.enable_conv) continue;  // LyCORIS: conv_lora_dim 0 without enable_conv
    out.push_back({i, kxk});
  }
  std::stable_sort(out.begin(), out.end(),
                   [&](const Choice& a, const Choice& b) { return role_order(modules[a.index]->role) < role_order(modules[b.index]->role); });
  return out;
}

}  // namespace sumi::lycoris
