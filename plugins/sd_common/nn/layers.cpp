#include "layers.h"

#include <cmath>
#include <stdexcept>

#include "flops.h"

namespace sumi::nn {

namespace {
// Parameters start empty-valued but correctly shaped; real values come from weight loading.
at::Tensor fresh(at::IntArrayRef shape, double bound) {
  return at::empty(shape, at::kFloat).uniform_(-bound, bound);
}
}  // namespace

Linear::Linear(int64_t in, int64_t out, bool with_bias) {
  double bound = 1.0 / std::sqrt(static_cast<double>(in));
  weight = register_parameter("weight", fresh({out, in}, bound));
  if (with_bias) bias = register_parameter("bias", fresh({out}, bound));
}

at::Tensor Linear::forward(const at::Tensor& x) const {
  at::Tensor y = at::linear(x, weight, bias.defined() ? c10::optional<at::Tensor>(bias) : c10::nullopt);
  if (FlopCount* f = active_flop_count()) f->linear += 2.0 * static_cast<double>(y.numel()) * weight.size(1);
  return adapter ? adapter(x, y) : y;
}

Conv2d::Conv2d(int64_t in, int64_t out, int64_t kernel, int64_t stride_, int64_t padding_)
    : stride(stride_), padding(padding_) {
  double bound = 1.0 / std::sqrt(static_cast<double>(in * kernel * kernel));
  weight = register_parameter("weight", fresh({out, in, kernel, kernel}, bound));
  bias = register_parameter("bias", fresh({out}, bound));
}

at::Tensor Conv2d::forward(const at::Tensor& x) const {
  // bf16 on the CPU: oneDNN convolves channels-last (NHWC) tensors directly and reorders NCHW
  // ones on every call (measured 1.5-2.5x slower); the output stays channels-last. float32 stays
  // NCHW so that its numbers do not change.
  at::Tensor y;
  if (x.scalar_type() == at::kBFloat16 && weight.scalar_type() == at::kBFloat16 && x.is_cpu() && x.dim() == 4) {
    const auto cl = at::MemoryFormat::ChannelsLast;
    y = at::conv2d(x.contiguous(cl), weight.is_contiguous(cl) ? weight : weight.contiguous(cl), bias,
                   {stride, stride}, {padding, padding});
  } else {
    y = at::conv2d(x, weight, bias, {stride, stride}, {padding, padding});
  }
  if (FlopCount* f = active_flop_count())
    f->conv += 2.0 * static_cast<double>(y.numel()) * static_cast<double>(weight.size(1) * weight.size(2) * weight.size(3));
  return adapter ? adapter(x, y) : y;
}

GroupNorm::GroupNorm(int64_t groups_, int64_t channels, double eps_) : groups(groups_), eps(eps_) {
  if (channels % groups != 0)
    throw std::invalid_argument("GroupNorm: " + std::to_string(channels) +
                                " channels are not divisible into " + std::to_string(groups) +
                                " groups; check norm_num_groups and the block widths");
  weight = register_parameter("weight", at::ones({channels}));
  bias = register_parameter("bias", at::zeros({channels}));
}

at::Tensor GroupNorm::forward(const at::Tensor& x) const {
  // Under autocast the input may be reduced precision while the affine parameters stay
  // float; group_norm wants one dtype, so normalise in float and hand back the input's dtype
  // (this is also what autocast does for norms on GPU).
  if (x.scalar_type() != weight.scalar_type()) {
    return at::group_norm(x.to(weight.scalar_type()), groups, weight, bias, eps)
        .to(x.scalar_type());
  }
  return at::group_norm(x, groups, weight, bias, eps);
}

LayerNorm::LayerNorm(int64_t dim, double eps_) : eps(eps_) {
  weight = register_parameter("weight", at::ones({dim}));
  bias = register_parameter("bias", at::zeros({dim}));
}

at::Tensor LayerNorm::forward(const at::Tensor& x) const {
  if (x.scalar_type() != weight.scalar_type()) {
    return at::layer_norm(x.to(weight.scalar_type()), {weight.size(0)}, weight, bias, eps)
        .to(x.scalar_type());
  }
  return at::layer_norm(x, {weight.size(0)}, weight, bias, eps);
}

Embedding::Embedding(int64_t count, int64_t dim) {
  weight = register_parameter("weight", at::randn({count, dim}) * 0.02);
}

at::Tensor Embedding::forward(const at::Tensor& ids) const { return at::embedding(weight, ids); }

void convs_to_channels_last(torch::nn::Module& root) {
  at::NoGradGuard no_grad;
  for (const auto& m : root.modules(/*include_self=*/true))
    if (auto* c = dynamic_cast<Conv2d*>(m.get()))
      if (c->weight.dim() == 4) c->weight.set_data(c->weight.contiguous(at::MemoryFormat::ChannelsLast));
}

at::Tensor activation(const std::string& name, const at::Tensor& x) {
  if (name == "silu" || name == "swish") return at::silu(x);
  if (name == "gelu") return at::gelu(x);
  if (name == "gelu_tanh" || name == "gelu_new" || name == "gelu_pytorch_tanh")
    return at::gelu(x, "tanh");
  if (name == "quick_gelu") return x * at::sigmoid(x * 1.702);
  throw std::invalid_argument("unknown activation '" + name +
                              "'; expected one of silu, gelu, gelu_tanh, quick_gelu");
}

}  // namespace sumi::nn
