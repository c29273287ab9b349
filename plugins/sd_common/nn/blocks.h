// The pieces the UNet and the VAE share, named as diffusers names them: ResnetBlock2D,
// the down/up samplers, the spatial transformer (Transformer2DModel + BasicTransformerBlock)
// and the VAE's single-head mid attention. Internal to sumi_sd_nn.
#pragma once

#include <ATen/ATen.h>
#include <torch/nn/module.h>

#include <memory>

#include "layers.h"

namespace sumi::nn {

struct ResnetBlock2D : torch::nn::Module {
  // temb_channels 0: no time embedding (the VAE).
  ResnetBlock2D(int64_t in, int64_t out, int64_t temb_channels, int64_t groups, double eps);
  at::Tensor forward(const at::Tensor& x, const at::Tensor& temb = {}) const;
  at::Tensor compute(const at::Tensor& x, const at::Tensor& temb) const;
  bool gradient_checkpointing = false;
  std::shared_ptr<GroupNorm> norm1, norm2;
  std::shared_ptr<Conv2d> conv1, conv2, conv_shortcut;
  std::shared_ptr<Linear> time_emb_proj;
};

struct Downsample2D : torch::nn::Module {
  // padding 1: the UNet's conv; padding 0: the VAE's asymmetric (0,1,0,1) pad then conv.
  Downsample2D(int64_t channels, int64_t padding);
  at::Tensor forward(const at::Tensor& x) const;
  std::shared_ptr<Conv2d> conv;
  int64_t padding;
};

struct Upsample2D : torch::nn::Module {
  explicit Upsample2D(int64_t channels);
  // Nearest-neighbour to `size` (default: twice the input), then a 3x3 conv.
  at::Tensor forward(const at::Tensor& x, at::IntArrayRef size = {}) const;
  std::shared_ptr<Conv2d> conv;
};

// diffusers' Attention with the processor SD uses; q from `x`, k/v from `context` (or `x`).
// x, context: [B, L, C].
struct Attention : torch::nn::Module {
  Attention(int64_t query_dim, int64_t context_dim, int64_t heads, int64_t head_dim, bool qkv_bias,
            bool upcast);
  at::Tensor forward(const at::Tensor& x, const at::Tensor& context = {}) const;
  std::shared_ptr<Linear> to_q, to_k, to_v;
  std::shared_ptr<List<Linear>> to_out;
  int64_t heads;
  bool upcast;
  // Largest score matrix (elements) built at once; queries are split into chunks beyond it
  // (the model's mem_eff_attn option lowers it). Exact: each query row sees every key.
  int64_t chunk_elements = int64_t{1} << 25;
};

// GEGLU feed-forward: net.0.proj -> hidden * gelu(gate) -> net.2.
struct FeedForward : torch::nn::Module {
  FeedForward(int64_t dim, int64_t mult);
  at::Tensor forward(const at::Tensor& x) const;
  std::shared_ptr<torch::nn::Module> net;
  std::shared_ptr<Linear> proj, out;
};

struct BasicTransformerBlock : torch::nn::Module {
  BasicTransformerBlock(int64_t dim, int64_t heads, int64_t context_dim, bool upcast);
  at::Tensor forward(const at::Tensor& x, const at::Tensor& context) const;
  at::Tensor compute(at::Tensor x, const at::Tensor& context) const;
  bool gradient_checkpointing = false;
  std::shared_ptr<LayerNorm> norm1, norm2, norm3;
  std::shared_ptr<Attention> attn1, attn2;
  std::shared_ptr<FeedForward> ff;
};

struct Transformer2DModel : torch::nn::Module {
  Transformer2DModel(int64_t channels, int64_t heads, int64_t depth, int64_t context_dim,
                     int64_t groups, bool linear_projection, bool upcast);
  at::Tensor forward(const at::Tensor& x, const at::Tensor& context) const;
  std::shared_ptr<GroupNorm> norm;
  std::shared_ptr<Linear> proj_in_linear, proj_out_linear;
  std::shared_ptr<Conv2d> proj_in_conv, proj_out_conv;
  std::shared_ptr<List<BasicTransformerBlock>> transformer_blocks;
};

// The VAE's mid-block self-attention: group norm, one head over all channels, residual;
// parameters group_norm, to_q, to_k, to_v, to_out.0 as in diffusers.
struct VaeAttention : Attention {
  VaeAttention(int64_t channels, int64_t groups, double eps);
  at::Tensor forward(const at::Tensor& x) const;
  std::shared_ptr<GroupNorm> group_norm;
};

}  // namespace sumi::nn
