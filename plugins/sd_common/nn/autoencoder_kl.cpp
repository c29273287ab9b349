#include "autoencoder_kl.h"

#include <stdexcept>
#include <string>

#include "blocks.h"
#include "layers.h"

namespace sumi::nn {

namespace {

constexpr double kVaeEps = 1e-6;

// UNetMidBlock2D without time embedding: resnet, attention, resnet.
struct VaeMidBlock : torch::nn::Module {
  VaeMidBlock(int64_t ch, int64_t groups) {
    resnets = register_module("resnets", std::make_shared<List<ResnetBlock2D>>());
    attentions = register_module("attentions", std::make_shared<List<VaeAttention>>());
    resnets->add(std::make_shared<ResnetBlock2D>(ch, ch, 0, groups, kVaeEps));
    attentions->add(std::make_shared<VaeAttention>(ch, groups, kVaeEps));
    resnets->add(std::make_shared<ResnetBlock2D>(ch, ch, 0, groups, kVaeEps));
  }
  at::Tensor forward(const at::Tensor& x) const {
    auto h = (*resnets)[0].forward(x);
    h = (*attentions)[0].forward(h);
    return (*resnets)[1].forward(h);
  }
  std::shared_ptr<List<ResnetBlock2D>> resnets;
  std::shared_ptr<List<VaeAttention>> attentions;
};

struct EncoderBlock : torch::nn::Module {
  EncoderBlock(int64_t in, int64_t out, int64_t layers, int64_t groups, bool downsample) {
    resnets = register_module("resnets", std::make_shared<List<ResnetBlock2D>>());
    for (int64_t j = 0; j < layers; ++j)
      resnets->add(std::make_shared<ResnetBlock2D>(j == 0 ? in : out, out, 0, groups, kVaeEps));
    if (downsample) {
      downsamplers = register_module("downsamplers", std::make_shared<List<Downsample2D>>());
      downsamplers->add(std::make_shared<Downsample2D>(out, 0));
    }
  }
  std::shared_ptr<List<ResnetBlock2D>> resnets;
  std::shared_ptr<List<Downsample2D>> downsamplers;
};

struct DecoderBlock : torch::nn::Module {
  DecoderBlock(int64_t in, int64_t out, int64_t layers, int64_t groups, bool upsample) {
    resnets = register_module("resnets", std::make_shared<List<ResnetBlock2D>>());
    for (int64_t j = 0; j < layers; ++j)
      resnets->add(std::make_shared<ResnetBlock2D>(j == 0 ? in : out, out, 0, groups, kVaeEps));
    if (upsample) {
      upsamplers = register_module("upsamplers", std::make_shared<List<Upsample2D>>());
      upsamplers->add(std::make_shared<Upsample2D>(out));
    }
  }
  std::shared_ptr<List<ResnetBlock2D>> resnets;
  std::shared_ptr<List<Upsample2D>> upsamplers;
};

}  // namespace

struct VaeEncoder : torch::nn::Module {
  explicit VaeEncoder(const VaeConfig& c) {
    const auto& ch = c.block_out_channels;
    const int64_t g = c.norm_num_groups;
    conv_in = register_module("conv_in", std::make_shared<Conv2d>(c.in_channels, ch[0], 3, 1, 1));
    down_blocks = register_module("down_blocks", std::make_shared<List<EncoderBlock>>());
    for (size_t i = 0; i < ch.size(); ++i)
      down_blocks->add(std::make_shared<EncoderBlock>(i == 0 ? ch[0] : ch[i - 1], ch[i],
                                                      c.layers_per_block, g, i + 1 < ch.size()));
    mid_block = register_module("mid_block", std::make_shared<VaeMidBlock>(ch.back(), g));
    conv_norm_out = register_module("conv_norm_out", std::make_shared<GroupNorm>(g, ch.back(), kVaeEps));
    conv_out = register_module("conv_out", std::make_shared<Conv2d>(ch.back(), 2 * c.latent_channels, 3, 1, 1));
  }
  at::Tensor forward(const at::Tensor& x) const {
    auto h = conv_in->forward(x);
    for (const auto& block : down_blocks->items) {
      for (const auto& r : block->resnets->items) h = r->forward(h);
      if (block->downsamplers) h = (*block->downsamplers)[0].forward(h);
    }
    h = mid_block->forward(h);
    return conv_out->forward(at::silu(conv_norm_out->forward(h)));
  }
  std::shared_ptr<Conv2d> conv_in, conv_out;
  std::shared_ptr<List<EncoderBlock>> down_blocks;
  std::shared_ptr<VaeMidBlock> mid_block;
  std::shared_ptr<GroupNorm> conv_norm_out;
};

struct VaeDecoder : torch::nn::Module {
  explicit VaeDecoder(const VaeConfig& c) {
    std::vector<int64_t> ch(c.block_out_channels.rbegin(), c.block_out_channels.rend());
    const int64_t g = c.norm_num_groups;
    conv_in = register_module("conv_in", std::make_shared<Conv2d>(c.latent_channels, ch[0], 3, 1, 1));
    mid_block = register_module("mid_block", std::make_shared<VaeMidBlock>(ch[0], g));
    up_blocks = register_module("up_blocks", std::make_shared<List<DecoderBlock>>());
    for (size_t i = 0; i < ch.size(); ++i)
      up_blocks->add(std::make_shared<DecoderBlock>(i == 0 ? ch[0] : ch[i - 1], ch[i],
                                                    c.layers_per_block + 1, g, i + 1 < ch.size()));
    conv_norm_out = register_module("conv_norm_out", std::make_shared<GroupNorm>(g, ch.back(), kVaeEps));
    conv_out = register_module("conv_out", std::make_shared<Conv2d>(ch.back(), c.out_channels, 3, 1, 1));
  }
  at::Tensor forward(const at::Tensor& z) const {
    auto h = mid_block->forward(conv_in->forward(z));
    for (const auto& block : up_blocks->items) {
      for (const auto& r : block->resnets->items) h = r->forward(h);
      if (block->upsamplers) h = (*block->upsamplers)[0].forward(h);
    }
    return conv_out->forward(at::silu(conv_norm_out->forward(h)));
  }
  std::shared_ptr<Conv2d> conv_in, conv_out;
  std::shared_ptr<VaeMidBlock> mid_block;
  std::shared_ptr<List<DecoderBlock>> up_blocks;
  std::shared_ptr<GroupNorm> conv_norm_out;
};

at::Tensor LatentDistribution::sample(c10::optional<at::Generator> generator) const {
  auto noise = at::randn(mean.sizes(), generator, mean.options());
  return mean + std * noise;
}

AutoencoderKL::AutoencoderKL(VaeConfig config) : config_(std::move(config)) {
  if (config_.block_out_channels.empty())
    throw std::invalid_argument("AutoencoderKL: block_out_channels is empty");
  if (config_.act_fn != "silu")
    throw std::invalid_argument("AutoencoderKL: act_fn '" + config_.act_fn + "' unsupported (silu only)");
  const int64_t z = config_.latent_channels;
  encoder_ = register_module("encoder", std::make_shared<VaeEncoder>(config_));
  decoder_ = register_module("decoder", std::make_shared<VaeDecoder>(config_));
  quant_conv_ = register_module("quant_conv", std::make_shared<Conv2d>(2 * z, 2 * z, 1));
  post_quant_conv_ = register_module("post_quant_conv", std::make_shared<Conv2d>(z, z, 1));
}

LatentDistribution AutoencoderKL::encode(const at::Tensor& image) const {
  if (image.dim() != 4 || image.size(1) != config_.in_channels)
    throw std::invalid_argument("AutoencoderKL::encode: expected [B, " +
                                std::to_string(config_.in_channels) + ", H, W] images");
  LatentDistribution d;
  d.moments = quant_conv_->forward(encoder_->forward(image));
  auto parts = d.moments.chunk(2, 1);
  d.mean = parts[0];
  d.logvar = at::clamp(parts[1], -30.0, 20.0);
  d.std = at::exp(0.5 * d.logvar);
  return d;
}

at::Tensor AutoencoderKL::decode(const at::Tensor& latent) const {
  if (latent.dim() != 4 || latent.size(1) != config_.latent_channels)
    throw std::invalid_argument("AutoencoderKL::decode: expected [B, " +
                                std::to_string(config_.latent_channels) + ", h, w] latents");
  return decoder_->forward(post_quant_conv_->forward(latent));
}

}  // namespace sumi::nn
