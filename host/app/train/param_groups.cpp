#include "app/train/param_groups.h"

#include "core/error.h"
#include "core/typed_plugins.h"
#include "core/handle_scope.h"

#include <ATen/ATen.h>

#include <cstdio>
#include <map>

namespace sumi::app {

int64_t ParamGroups::numel() const {
  int64_t n = 0;
  for (const auto& p : all) n += p.numel();
  return n;
}

namespace {

using Groups = std::vector<std::pair<std::string, std::vector<at::Tensor>>>;

// sdxl_train's --block_lr: the UNet group split into the model's blocks, each at its own rate;
// a block at 0 is not trained. `group_lr` receives the rate of each new group.
Groups split_unet_blocks(Groups groups, const TrainSettings& s, const host::Registry& registry, const std::string& trained,
                         const ModelDescription::BlockLayout& layout, std::map<std::string, double>& group_lr) {
  std::vector<std::vector<at::Tensor>> blocks(static_cast<size_t>(layout.blocks));
  for (const auto& e : registry.entries()) {
    if (e.component != trained || !e.trainable || e.group != "unet") continue;
    const std::string name = e.name.substr(e.name.find('.') + 1);
    const int64_t b = layout.block_of(name);
    if (b < 0 || b >= layout.blocks)
      throw host::UserError("block_lr: the UNet parameter '" + name + "' is in none of the model's " + std::to_string(layout.blocks) +
                            " blocks (" + layout.description + "); the model plugin's block layout is incomplete");
    blocks[static_cast<size_t>(b)].push_back(e.tensor);
  }
  Groups regrouped;
  for (auto& g : groups) {
    if (g.first != "unet") {
      regrouped.push_back(std::move(g));
      continue;
    }
    for (size_t b = 0; b < blocks.size(); ++b) {
      const double lr = s.block_lr[b];
      if (lr == 0) {
        for (auto& p : blocks[b]) p.requires_grad_(false);
        continue;
      }
      if (blocks[b].empty()) continue;
      char name[32];
      std::snprintf(name, sizeof name, "unet_block%02zu", b);
      group_lr[name] = lr;
      regrouped.emplace_back(name, std::move(blocks[b]));
    }
  }
  return regrouped;
}

}  // namespace

ParamGroups build_param_groups(const TrainSettings& s, host::Registry& registry, const std::string& trained,
                               const ModelDescription& model) {
  ParamGroups out;
  out.groups = registry.param_groups(trained);
  std::map<std::string, double> group_lr;
  if (!s.block_lr.empty()) out.groups = split_unet_blocks(std::move(out.groups), s, registry, trained, *model.block_lr, group_lr);
  // A component's per-group learning-rate scales (param_group_lr_scale, e.g. kohya's LoRA
  // down/mid/up_lr_weight): a group at scale 0 is not trained, as kohya leaves it out of the
  // optimizer; its tensors stay registered and saved.
  std::map<std::string, double> group_scale;
  {
    decltype(out.groups) kept;
    for (auto& g : out.groups) {
      const double scale = registry.lr_scale(trained, g.first);
      if (scale == 0) {
        for (auto& p : g.second) p.requires_grad_(false);
        continue;
      }
      group_scale[g.first] = scale;
      kept.push_back(std::move(g));
    }
    out.groups = std::move(kept);
  }
  if (out.groups.empty())
    throw host::UserError(s.mode == TrainMode::network ? "the network adapts no module of this model: nothing to train"
                                                       : "the model registered no trainable parameters: nothing to train");
  if (s.full_bf16) {
    at::NoGradGuard ng;
    for (const auto& [gname, params] : out.groups)
      for (auto p : params) p.set_data(p.to(at::kBFloat16));
  }
  // Textual Inversion's gradients flow through the (frozen) text encoder to the new rows.
  out.trains_text_encoder = s.mode == TrainMode::textual_inversion;
  const std::string first_te = model.text_encoders.empty() ? "text_encoder" : model.text_encoders.front();
  const std::string second_te = model.text_encoders.size() > 1 ? model.text_encoders[1] : "";
  for (const auto& [gname, params] : out.groups) {
    const bool te = gname.rfind("text_encoder", 0) == 0 || gname == "textual_inversion";
    out.trains_text_encoder |= te;
    if (te && !out.first_text_encoder) out.first_text_encoder = out.base_lrs.size();
    if (!te && !out.first_unet) out.first_unet = out.base_lrs.size();
    out.text_encoder.push_back(te);
    double lr = te ? s.text_encoder_lr.value_or(s.learning_rate) : s.unet_lr.value_or(s.learning_rate);
    if (gname == first_te && s.text_encoder_lr1) lr = *s.text_encoder_lr1;
    if (!second_te.empty() && gname == second_te && s.text_encoder_lr2) lr = *s.text_encoder_lr2;
    if (group_lr.count(gname)) lr = group_lr.at(gname);
    lr *= group_scale.at(gname);
    out.base_lrs.push_back(lr);
    out.all.insert(out.all.end(), params.begin(), params.end());
  }
  return out;
}

void add_param_groups(host::Component& optimizer, const ParamGroups& groups) {
  for (const auto& [gname, params] : groups.groups) host::OptimizerPlugin(optimizer).add_param_group(gname, params);
}

}  // namespace sumi::app
