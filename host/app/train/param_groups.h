// The trained parameters in optimizer groups with their base learning rates: the registry's
// groups of the trained component ("unet", "text_encoder", ..., a network's, Textual
// Inversion's), sdxl_train's --block_lr split of the UNet by the model's block layout, kohya's
// unet_lr / text_encoder_lr / learning_rate_te1/2 choice per group.
#pragma once

#include "app/model_description.h"
#include "app/train/trainer.h"
#include "core/component.h"
#include "core/registry.h"

#include <ATen/core/Tensor.h>

#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace sumi::app {

struct ParamGroups {
  std::vector<std::pair<std::string, std::vector<at::Tensor>>> groups;
  std::vector<double> base_lrs;   // per group
  std::vector<bool> text_encoder; // per group: a text-encoder (or Textual Inversion) group
  std::optional<size_t> first_text_encoder, first_unet;  // for the logged lr/textencoder, lr/unet
  std::vector<at::Tensor> all;    // every parameter, in group order
  bool trains_text_encoder = false;
  int64_t numel() const;
};

// Groups of `trained` (a registry component). With block_lr, UNet blocks at rate 0 are frozen
// (requires_grad off). Throws a UserError when nothing is trainable. full_bf16 turns the
// parameters to bf16 here.
ParamGroups build_param_groups(const TrainSettings& s, host::Registry& registry, const std::string& trained,
                               const ModelDescription& model);

// Hands every group to the optimizer plugin (add_param_group).
void add_param_groups(host::Component& optimizer, const ParamGroups& groups);

}  // namespace sumi::app
