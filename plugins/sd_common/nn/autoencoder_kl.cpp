#include "autoencoder_kl.h"

#include <algorithm>
#include <functional>
#include <stdexcept>
#include <string>
#include <vector>

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

namespace {

constexpr double kTileOverlap = 0.25;  // diffusers' tile_overlap_factor

// diffusers' blend_v (dim 2) / blend_h (dim 3): b's first `extent` rows or columns fade in from
// a's last ones, in place.
void blend(const at::Tensor& a, at::Tensor& b, int64_t dim, int64_t extent) {
  extent = std::min({a.size(dim), b.size(dim), extent});
  for (int64_t y = 0; y < extent; ++y) {
    const double w = static_cast<double>(y) / static_cast<double>(extent);
    b.select(dim, y).copy_(a.select(dim, a.size(dim) - extent + y) * (1 - w) + b.select(dim, y) * w);
  }
}

// `f` over tiles of `in_tile` (stride in_tile * 3/4) whose results, `out_tile` big, are blended
// with the upper and left neighbours and cropped to out_tile * 3/4 before being stitched.
at::Tensor tiled(const at::Tensor& x, int64_t in_tile, int64_t out_tile,
                 const std::function<at::Tensor(const at::Tensor&)>& f) {
  const auto stride = static_cast<int64_t>(static_cast<double>(in_tile) * (1 - kTileOverlap));
  const auto extent = static_cast<int64_t>(static_cast<double>(out_tile) * kTileOverlap);
  const int64_t keep = out_tile - extent;
  if (stride <= 0) throw std::invalid_argument("VAE tiling: tile of " + std::to_string(in_tile) + " is too small");
  std::vector<std::vector<at::Tensor>> rows;
  for (int64_t i = 0; i < x.size(2); i += stride) {
    rows.emplace_back();
    for (int64_t j = 0; j < x.size(3); j += stride)
      rows.back().push_back(f(x.slice(2, i, i + in_tile).slice(3, j, j + in_tile)));
  }
  std::vector<at::Tensor> stitched;
  for (size_t i = 0; i < rows.size(); ++i) {
    std::vector<at::Tensor> parts;
    for (size_t j = 0; j < rows[i].size(); ++j) {
      at::Tensor& tile = rows[i][j];
      if (i > 0) blend(rows[i - 1][j], tile, 2, extent);
      if (j > 0) blend(rows[i][j - 1], tile, 3, extent);
      parts.push_back(tile.slice(2, 0, keep).slice(3, 0, keep));
    }
    stitched.push_back(at::cat(parts, 3));
  }
  return at::cat(stitched, 2);
}

}  // namespace

int64_t AutoencoderKL::tile_latent_size() const {
  // diffusers: int(sample_size / 2 ** (len(block_out_channels) - 1))
  return config_.sample_size >> (config_.block_out_channels.size() - 1);
}

at::Tensor AutoencoderKL::encode_moments(const at::Tensor& image) const {
  const int64_t tile = tile_sample_size();
  if (tiling_ && (image.size(2) > tile || image.size(3) > tile))
    return tiled(image, tile, tile_latent_size(),
                 [this](const at::Tensor& t) { return quant_conv_->forward(encoder_->forward(t)); });
  if (slicing_ && image.size(0) > 1) {
    std::vector<at::Tensor> parts;
    for (const auto& one : image.split(1)) parts.push_back(encoder_->forward(one));
    return quant_conv_->forward(at::cat(parts));
  }
  return quant_conv_->forward(encoder_->forward(image));
}

at::Tensor AutoencoderKL::decode_one(const at::Tensor& latent) const {
  const int64_t tile = tile_latent_size();
  if (tiling_ && (latent.size(2) > tile || latent.size(3) > tile))
    return tiled(latent, tile, tile_sample_size(),
                 [this](const at::Tensor& t) { return decoder_->forward(post_quant_conv_->forward(t)); });
  return decoder_->forward(post_quant_conv_->forward(latent));
}

LatentDistribution AutoencoderKL::encode(const at::Tensor& image) const {
  if (image.dim() != 4 || image.size(1) != config_.in_channels)
    throw std::invalid_argument("AutoencoderKL::encode: expected [B, " +
                                std::to_string(config_.in_channels) + ", H, W] images");
  LatentDistribution d;
  d.moments = encode_moments(image);
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
  if (slicing_ && latent.size(0) > 1) {
    std::vector<at::Tensor> parts;
    for (const auto& one : latent.split(1)) parts.push_back(decode_one(one));
    return at::cat(parts);
  }
  return decode_one(latent);
}

}  // namespace sumi::nn
