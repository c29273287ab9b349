#include "unet.h"

#include <cmath>
#include <stdexcept>
#include <string>

#include "blocks.h"
#include "layers.h"

namespace sumi::nn {

struct TimestepEmbedding : torch::nn::Module {
  TimestepEmbedding(int64_t in, int64_t dim) {
    linear_1 = register_module("linear_1", std::make_shared<Linear>(in, dim));
    linear_2 = register_module("linear_2", std::make_shared<Linear>(dim, dim));
  }
  at::Tensor forward(const at::Tensor& x) const {
    return linear_2->forward(at::silu(linear_1->forward(x)));
  }
  std::shared_ptr<Linear> linear_1, linear_2;
};

struct UNetDownBlock : torch::nn::Module {
  UNetDownBlock(const UNetConfig& c, size_t level, int64_t in) {
    const int64_t out = c.block_out_channels[level];
    resnets = register_module("resnets", std::make_shared<List<ResnetBlock2D>>());
    if (c.cross_attention[level])
      attentions = register_module("attentions", std::make_shared<List<Transformer2DModel>>());
    for (int64_t j = 0; j < c.layers_per_block; ++j) {
      resnets->add(std::make_shared<ResnetBlock2D>(j == 0 ? in : out, out, c.time_embed_dim(),
                                                   c.norm_num_groups, c.norm_eps));
      if (attentions)
        attentions->add(std::make_shared<Transformer2DModel>(
            out, c.num_heads[level], c.transformer_depth[level], c.cross_attention_dim,
            c.norm_num_groups, c.use_linear_projection, c.upcast_attention));
    }
    if (level + 1 < c.levels()) {
      downsamplers = register_module("downsamplers", std::make_shared<List<Downsample2D>>());
      downsamplers->add(std::make_shared<Downsample2D>(out, 1));
    }
  }
  std::shared_ptr<List<ResnetBlock2D>> resnets;
  std::shared_ptr<List<Transformer2DModel>> attentions;
  std::shared_ptr<List<Downsample2D>> downsamplers;
};

struct UNetMidBlock : torch::nn::Module {
  explicit UNetMidBlock(const UNetConfig& c) {
    const int64_t ch = c.block_out_channels.back();
    resnets = register_module("resnets", std::make_shared<List<ResnetBlock2D>>());
    attentions = register_module("attentions", std::make_shared<List<Transformer2DModel>>());
    resnets->add(std::make_shared<ResnetBlock2D>(ch, ch, c.time_embed_dim(), c.norm_num_groups, c.norm_eps));
    attentions->add(std::make_shared<Transformer2DModel>(
        ch, c.num_heads.back(), c.mid_transformer_depth, c.cross_attention_dim, c.norm_num_groups,
        c.use_linear_projection, c.upcast_attention));
    resnets->add(std::make_shared<ResnetBlock2D>(ch, ch, c.time_embed_dim(), c.norm_num_groups, c.norm_eps));
  }
  std::shared_ptr<List<ResnetBlock2D>> resnets;
  std::shared_ptr<List<Transformer2DModel>> attentions;
};

// Up block `i` mirrors down level n-1-i; its resnets take the running state concatenated with
// one skip connection each.
struct UNetUpBlock : torch::nn::Module {
  UNetUpBlock(const UNetConfig& c, size_t i) {
    const size_t n = c.levels(), level = n - 1 - i;
    const int64_t out = c.block_out_channels[level];
    const int64_t prev = c.block_out_channels[std::min(n - 1, level + 1)];
    const int64_t skip_in = c.block_out_channels[level == 0 ? 0 : level - 1];
    const int64_t layers = c.layers_per_block + 1;
    resnets = register_module("resnets", std::make_shared<List<ResnetBlock2D>>());
    if (c.cross_attention[level])
      attentions = register_module("attentions", std::make_shared<List<Transformer2DModel>>());
    for (int64_t j = 0; j < layers; ++j) {
      const int64_t skip = j == layers - 1 ? skip_in : out;
      const int64_t in = j == 0 ? prev : out;
      resnets->add(std::make_shared<ResnetBlock2D>(in + skip, out, c.time_embed_dim(),
                                                   c.norm_num_groups, c.norm_eps));
      if (attentions)
        attentions->add(std::make_shared<Transformer2DModel>(
            out, c.num_heads[level], c.transformer_depth[level], c.cross_attention_dim,
            c.norm_num_groups, c.use_linear_projection, c.upcast_attention));
    }
    if (level > 0) {
      upsamplers = register_module("upsamplers", std::make_shared<List<Upsample2D>>());
      upsamplers->add(std::make_shared<Upsample2D>(out));
    }
  }
  std::shared_ptr<List<ResnetBlock2D>> resnets;
  std::shared_ptr<List<Transformer2DModel>> attentions;
  std::shared_ptr<List<Upsample2D>> upsamplers;
};

at::Tensor timestep_embedding(const at::Tensor& timesteps, int64_t dim, bool flip_sin_to_cos,
                              double freq_shift) {
  const int64_t half = dim / 2;
  auto exponent = at::arange(half, timesteps.options().dtype(at::kFloat)) * (-std::log(10000.0));
  exponent = exponent / (static_cast<double>(half) - freq_shift);
  auto args = timesteps.to(at::kFloat).unsqueeze(1) * at::exp(exponent).unsqueeze(0);
  auto emb = flip_sin_to_cos ? at::cat({at::cos(args), at::sin(args)}, -1)
                             : at::cat({at::sin(args), at::cos(args)}, -1);
  if (dim % 2 == 1) emb = at::constant_pad_nd(emb, {0, 1}, 0);
  return emb;
}

UNet2DConditionModel::UNet2DConditionModel(UNetConfig config) : config_(std::move(config)) {
  const auto& c = config_;
  const size_t n = c.levels();
  if (n == 0 || c.cross_attention.size() != n || c.num_heads.size() != n ||
      c.transformer_depth.size() != n)
    throw std::invalid_argument("UNet2DConditionModel: block_out_channels, cross_attention, "
                                "num_heads and transformer_depth need one entry per level");
  for (size_t i = 0; i < n; ++i)
    if (c.num_heads[i] <= 0 || c.block_out_channels[i] % c.num_heads[i] != 0)
      throw std::invalid_argument("UNet2DConditionModel: level " + std::to_string(i) + " width " +
                                  std::to_string(c.block_out_channels[i]) +
                                  " is not divisible by its head count " +
                                  std::to_string(c.num_heads[i]));
  const int64_t ch0 = c.block_out_channels[0];
  time_embedding_ = register_module("time_embedding", std::make_shared<TimestepEmbedding>(ch0, c.time_embed_dim()));
  if (c.addition_time_embed_dim > 0)
    add_embedding_ = register_module(
        "add_embedding", std::make_shared<TimestepEmbedding>(c.projection_class_embeddings_input_dim,
                                                             c.time_embed_dim()));
  conv_in_ = register_module("conv_in", std::make_shared<Conv2d>(c.in_channels, ch0, 3, 1, 1));
  down_blocks_ = register_module("down_blocks", std::make_shared<List<UNetDownBlock>>());
  for (size_t i = 0; i < n; ++i)
    down_blocks_->add(std::make_shared<UNetDownBlock>(c, i, i == 0 ? ch0 : c.block_out_channels[i - 1]));
  mid_block_ = register_module("mid_block", std::make_shared<UNetMidBlock>(c));
  up_blocks_ = register_module("up_blocks", std::make_shared<List<UNetUpBlock>>());
  for (size_t i = 0; i < n; ++i) up_blocks_->add(std::make_shared<UNetUpBlock>(c, i));
  conv_norm_out_ = register_module("conv_norm_out", std::make_shared<GroupNorm>(c.norm_num_groups, ch0, c.norm_eps));
  conv_out_ = register_module("conv_out", std::make_shared<Conv2d>(ch0, c.out_channels, 3, 1, 1));
}

void UNet2DConditionModel::set_gradient_checkpointing(bool enabled) {
  for (const auto& m : modules(/*include_self=*/false)) {
    if (auto r = std::dynamic_pointer_cast<ResnetBlock2D>(m)) r->gradient_checkpointing = enabled;
    if (auto b = std::dynamic_pointer_cast<BasicTransformerBlock>(m)) b->gradient_checkpointing = enabled;
  }
}

at::Tensor UNet2DConditionModel::forward(const at::Tensor& sample, const at::Tensor& timesteps,
                                         const at::Tensor& context,
                                         const AddedConditioning* added) const {
  const auto& c = config_;
  if (sample.dim() != 4 || sample.size(1) != c.in_channels)
    throw std::invalid_argument("UNet: expected sample [B, " + std::to_string(c.in_channels) +
                                ", h, w], got " + std::to_string(sample.dim()) + " dims");
  if (context.dim() != 3 || context.size(2) != c.cross_attention_dim)
    throw std::invalid_argument("UNet: expected context [B, L, " +
                                std::to_string(c.cross_attention_dim) + "]");
  const int64_t b = sample.size(0);
  if (context.size(0) != b)
    throw std::invalid_argument("UNet: context batch " + std::to_string(context.size(0)) +
                                " differs from sample batch " + std::to_string(b) +
                                " (for classifier-free guidance concatenate both halves of each)");
  auto t = timesteps.dim() == 0 ? timesteps.reshape({1}).expand({b}) : timesteps;
  if (t.dim() != 1 || (t.size(0) != b && t.size(0) != 1))
    throw std::invalid_argument("UNet: timesteps must be a scalar or one per sample");
  t = t.expand({b});
  auto t_emb = timestep_embedding(t, c.block_out_channels[0], c.flip_sin_to_cos,
                                  static_cast<double>(c.freq_shift))
                   .to(sample.scalar_type());
  auto emb = time_embedding_->forward(t_emb);
  if (add_embedding_) {
    if (!added || !added->text_embeds.defined() || !added->time_ids.defined())
      throw std::invalid_argument("UNet: this model (SDXL text_time) needs text_embeds and time_ids");
    auto ids = added->time_ids.reshape({-1});
    auto time_embeds = timestep_embedding(ids, c.addition_time_embed_dim, c.flip_sin_to_cos,
                                          static_cast<double>(c.freq_shift))
                           .reshape({added->text_embeds.size(0), -1});
    auto add_in = at::cat({added->text_embeds, time_embeds.to(added->text_embeds.scalar_type())}, -1);
    if (add_in.size(-1) != c.projection_class_embeddings_input_dim)
      throw std::invalid_argument(
          "UNet: text_embeds + 6 * addition_time_embed_dim gives " + std::to_string(add_in.size(-1)) +
          " features but the model expects " + std::to_string(c.projection_class_embeddings_input_dim));
    emb = emb + add_embedding_->forward(add_in.to(emb.scalar_type()));
  } else if (added && added->text_embeds.defined()) {
    throw std::invalid_argument("UNet: added conditioning given but the model has no add_embedding");
  }

  auto h = conv_in_->forward(sample);
  std::vector<at::Tensor> skips{h};
  for (const auto& block : down_blocks_->items) {
    for (size_t j = 0; j < block->resnets->size(); ++j) {
      h = (*block->resnets)[j].forward(h, emb);
      if (block->attentions) h = (*block->attentions)[j].forward(h, context);
      skips.push_back(h);
    }
    if (block->downsamplers) {
      h = (*block->downsamplers)[0].forward(h);
      skips.push_back(h);
    }
  }
  h = (*mid_block_->resnets)[0].forward(h, emb);
  h = (*mid_block_->attentions)[0].forward(h, context);
  h = (*mid_block_->resnets)[1].forward(h, emb);

  for (const auto& block : up_blocks_->items) {
    for (size_t j = 0; j < block->resnets->size(); ++j) {
      h = (*block->resnets)[j].forward(at::cat({h, skips.back()}, 1), emb);
      skips.pop_back();
      if (block->attentions) h = (*block->attentions)[j].forward(h, context);
    }
    // Upsample to the size of the skip it meets next, which also covers odd latent sizes.
    if (block->upsamplers)
      h = (*block->upsamplers)[0].forward(h, {skips.back().size(2), skips.back().size(3)});
  }
  return conv_out_->forward(at::silu(conv_norm_out_->forward(h)));
}

}  // namespace sumi::nn
