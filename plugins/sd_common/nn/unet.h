// UNet2DConditionModel of SD 1.x, 2.x and XL as diffusers 0.21 computes it: the noise (or v)
// prediction for latents at given timesteps, cross-attending to text encoder states, plus
// SDXL's "text_time" conditioning (pooled text embedding + six size/crop values).
// Parameter names are diffusers' (`down_blocks.1.attentions.0.transformer_blocks.0...`).
#pragma once

#include <ATen/ATen.h>
#include <torch/nn/module.h>

#include <memory>

#include "unet_config.h"

namespace sumi::nn {

struct Conv2d;
struct GroupNorm;
struct TimestepEmbedding;
struct UNetDownBlock;
struct UNetMidBlock;
struct UNetUpBlock;
template <class T>
struct List;

// SDXL's extra inputs: pooled projected text embedding [B, P] and time ids [B, 6] =
// (original h, original w, crop top, crop left, target h, target w).
struct AddedConditioning {
  at::Tensor text_embeds;
  at::Tensor time_ids;
};

// Sinusoidal timestep features as diffusers' get_timestep_embedding: [N] -> [N, dim].
at::Tensor timestep_embedding(const at::Tensor& timesteps, int64_t dim, bool flip_sin_to_cos,
                              double freq_shift);

class UNet2DConditionModel : public torch::nn::Module {
 public:
  explicit UNet2DConditionModel(UNetConfig config);

  // sample [B, C, h, w]; timesteps: a scalar or [B]; context [B, L, cross_attention_dim];
  // `added` is required exactly when the config has text_time conditioning.
  at::Tensor forward(const at::Tensor& sample, const at::Tensor& timesteps,
                     const at::Tensor& context, const AddedConditioning* added = nullptr) const;

  // Recompute each resnet and transformer block during backward instead of keeping its
  // activations (training only; no effect without grad mode).
  void set_gradient_checkpointing(bool enabled);

  const UNetConfig& config() const { return config_; }

 private:
  UNetConfig config_;
  std::shared_ptr<TimestepEmbedding> time_embedding_, add_embedding_;
  std::shared_ptr<Conv2d> conv_in_, conv_out_;
  std::shared_ptr<List<UNetDownBlock>> down_blocks_;
  std::shared_ptr<UNetMidBlock> mid_block_;
  std::shared_ptr<List<UNetUpBlock>> up_blocks_;
  std::shared_ptr<GroupNorm> conv_norm_out_;
};

}  // namespace sumi::nn
