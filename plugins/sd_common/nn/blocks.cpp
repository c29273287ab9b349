#include "blocks.h"

#include <stdexcept>
#include <string>

#include "attention_compat.h"
#include "checkpoint.h"

namespace sumi::nn {

namespace {

// Reduced precision without autograd (bf16 / fp16 generation, cached encodings): the
// temporaries a block makes are overwritten in place (the activation after a norm, the residual
// sums, the GEGLU gate), which saves a pass of memory allocation and traffic each. The values
// are those of the out-of-place ops; float32 keeps the out-of-place ops so that its numbers
// stay bit for bit what earlier sumi computed.
bool in_place(const at::Tensor& t) {
  return !at::GradMode::is_enabled() && t.scalar_type() != at::kFloat && t.scalar_type() != at::kDouble;
}

at::Tensor silu_of(at::Tensor t) { return in_place(t) ? at::silu_(t) : at::silu(t); }

// a + b, written into `a` (a temporary of the caller's) where that gives the same result.
at::Tensor add_into(at::Tensor a, const at::Tensor& b) {
  if (in_place(a) && a.scalar_type() == b.scalar_type() && at::infer_size(a.sizes(), b.sizes()) == a.sizes())
    return a.add_(b);
  return a + b;
}

}  // namespace

ResnetBlock2D::ResnetBlock2D(int64_t in, int64_t out, int64_t temb_channels, int64_t groups,
                             double eps) {
  norm1 = register_module("norm1", std::make_shared<GroupNorm>(groups, in, eps));
  conv1 = register_module("conv1", std::make_shared<Conv2d>(in, out, 3, 1, 1));
  if (temb_channels > 0)
    time_emb_proj = register_module("time_emb_proj", std::make_shared<Linear>(temb_channels, out));
  norm2 = register_module("norm2", std::make_shared<GroupNorm>(groups, out, eps));
  conv2 = register_module("conv2", std::make_shared<Conv2d>(out, out, 3, 1, 1));
  if (in != out) conv_shortcut = register_module("conv_shortcut", std::make_shared<Conv2d>(in, out, 1));
}

at::Tensor ResnetBlock2D::forward(const at::Tensor& x, const at::Tensor& temb) const {
  if (gradient_checkpointing && at::GradMode::is_enabled() && temb.defined())
    return checkpointed(*this, [this](const std::vector<at::Tensor>& in) { return compute(in[0], in[1]); },
                        {x, temb});
  return compute(x, temb);
}

at::Tensor ResnetBlock2D::compute(const at::Tensor& x, const at::Tensor& temb) const {
  auto h = conv1->forward(silu_of(norm1->forward(x)));
  if (time_emb_proj && temb.defined())
    h = add_into(h, time_emb_proj->forward(at::silu(temb)).unsqueeze(-1).unsqueeze(-1));
  h = conv2->forward(silu_of(norm2->forward(h)));
  return add_into(h, conv_shortcut ? conv_shortcut->forward(x) : x);
}

Downsample2D::Downsample2D(int64_t channels, int64_t padding_) : padding(padding_) {
  conv = register_module("conv", std::make_shared<Conv2d>(channels, channels, 3, 2, padding));
}

at::Tensor Downsample2D::forward(const at::Tensor& x) const {
  if (padding == 0) return conv->forward(at::constant_pad_nd(x, {0, 1, 0, 1}, 0));
  return conv->forward(x);
}

Upsample2D::Upsample2D(int64_t channels) {
  conv = register_module("conv", std::make_shared<Conv2d>(channels, channels, 3, 1, 1));
}

at::Tensor Upsample2D::forward(const at::Tensor& x, at::IntArrayRef size) const {
  std::vector<int64_t> target = size.empty() ? std::vector<int64_t>{x.size(2) * 2, x.size(3) * 2}
                                             : size.vec();
  // Nearest upsampling has no bf16 CPU kernel on older libtorch; do it in float there.
  at::Tensor up;
  if (x.scalar_type() == at::kBFloat16 && !x.is_cuda())
    up = at::upsample_nearest2d(x.to(at::kFloat), target).to(x.scalar_type());
  else
    up = at::upsample_nearest2d(x, target);
  return conv->forward(up);
}

Attention::Attention(int64_t query_dim, int64_t context_dim, int64_t heads_, int64_t head_dim,
                     bool qkv_bias, bool upcast_)
    : heads(heads_), upcast(upcast_) {
  const int64_t inner = heads * head_dim;
  to_q = register_module("to_q", std::make_shared<Linear>(query_dim, inner, qkv_bias));
  to_k = register_module("to_k", std::make_shared<Linear>(context_dim, inner, qkv_bias));
  to_v = register_module("to_v", std::make_shared<Linear>(context_dim, inner, qkv_bias));
  to_out = register_module("to_out", std::make_shared<List<Linear>>());
  to_out->add(std::make_shared<Linear>(inner, query_dim));
}

at::Tensor Attention::forward(const at::Tensor& x, const at::Tensor& context) const {
  const auto& ctx = context.defined() ? context : x;
  auto q = to_q->forward(x), k = to_k->forward(ctx), v = to_v->forward(ctx);
  const int64_t b = x.size(0), inner = q.size(-1), d = inner / heads;
  auto split = [&](const at::Tensor& t) { return t.view({b, t.size(1), heads, d}).transpose(1, 2); };
  AttentionOptions opt;
  opt.upcast = upcast;
  opt.chunk_elements = chunk_elements;
  auto o = scaled_dot_product_attention(split(q), split(k), split(v), opt);
  return (*to_out)[0].forward(o.transpose(1, 2).reshape({b, x.size(1), inner}));
}

FeedForward::FeedForward(int64_t dim, int64_t mult) {
  // diffusers nests GEGLU's projection as net.0.proj and the output Linear as net.2.
  auto seq = std::make_shared<torch::nn::Module>();
  auto geglu = std::make_shared<torch::nn::Module>();
  proj = geglu->register_module("proj", std::make_shared<Linear>(dim, dim * mult * 2));
  seq->register_module("0", geglu);
  out = seq->register_module("2", std::make_shared<Linear>(dim * mult, dim));
  net = register_module("net", seq);
}

at::Tensor FeedForward::forward(const at::Tensor& x) const {
  auto parts = proj->forward(x).chunk(2, -1);
  at::Tensor gate = at::gelu(parts[1]);
  return out->forward(in_place(gate) ? gate.mul_(parts[0]) : parts[0] * gate);
}

BasicTransformerBlock::BasicTransformerBlock(int64_t dim, int64_t heads, int64_t context_dim,
                                             bool upcast) {
  const int64_t head_dim = dim / heads;
  norm1 = register_module("norm1", std::make_shared<LayerNorm>(dim, 1e-5));
  attn1 = register_module("attn1", std::make_shared<Attention>(dim, dim, heads, head_dim, false, upcast));
  norm2 = register_module("norm2", std::make_shared<LayerNorm>(dim, 1e-5));
  attn2 = register_module("attn2",
                          std::make_shared<Attention>(dim, context_dim, heads, head_dim, false, upcast));
  norm3 = register_module("norm3", std::make_shared<LayerNorm>(dim, 1e-5));
  ff = register_module("ff", std::make_shared<FeedForward>(dim, 4));
}

at::Tensor BasicTransformerBlock::forward(const at::Tensor& x, const at::Tensor& context) const {
  if (gradient_checkpointing && at::GradMode::is_enabled())
    return checkpointed(*this, [this](const std::vector<at::Tensor>& in) { return compute(in[0], in[1]); },
                        {x, context});
  return compute(x, context);
}

at::Tensor BasicTransformerBlock::compute(at::Tensor x, const at::Tensor& context) const {
  x = add_into(attn1->forward(norm1->forward(x)), x);
  x = add_into(attn2->forward(norm2->forward(x), context), x);
  return add_into(ff->forward(norm3->forward(x)), x);
}

Transformer2DModel::Transformer2DModel(int64_t channels, int64_t heads, int64_t depth,
                                       int64_t context_dim, int64_t groups, bool linear_projection,
                                       bool upcast) {
  norm = register_module("norm", std::make_shared<GroupNorm>(groups, channels, 1e-6));
  if (linear_projection)
    proj_in_linear = register_module("proj_in", std::make_shared<Linear>(channels, channels));
  else
    proj_in_conv = register_module("proj_in", std::make_shared<Conv2d>(channels, channels, 1));
  transformer_blocks = register_module("transformer_blocks", std::make_shared<List<BasicTransformerBlock>>());
  for (int64_t i = 0; i < depth; ++i)
    transformer_blocks->add(std::make_shared<BasicTransformerBlock>(channels, heads, context_dim, upcast));
  if (linear_projection)
    proj_out_linear = register_module("proj_out", std::make_shared<Linear>(channels, channels));
  else
    proj_out_conv = register_module("proj_out", std::make_shared<Conv2d>(channels, channels, 1));
}

at::Tensor Transformer2DModel::forward(const at::Tensor& x, const at::Tensor& context) const {
  const int64_t b = x.size(0), c = x.size(1), h = x.size(2), w = x.size(3);
  auto to_tokens = [&](const at::Tensor& t) { return t.permute({0, 2, 3, 1}).reshape({b, h * w, c}); };
  // bf16 on the CPU keeps images channels-last (what Conv2d convolves there): tokens are then a
  // free view of the image and back.
  const auto layout = x.scalar_type() == at::kBFloat16 && x.is_cpu() ? at::MemoryFormat::ChannelsLast
                                                                      : at::MemoryFormat::Contiguous;
  auto to_image = [&](const at::Tensor& t) { return t.reshape({b, h, w, c}).permute({0, 3, 1, 2}).contiguous(layout); };
  auto y = norm->forward(x);
  y = proj_in_conv ? to_tokens(proj_in_conv->forward(y)) : proj_in_linear->forward(to_tokens(y));
  for (const auto& block : transformer_blocks->items) y = block->forward(y, context);
  y = proj_out_conv ? proj_out_conv->forward(to_image(y)) : to_image(proj_out_linear->forward(y));
  return add_into(y, x);
}

VaeAttention::VaeAttention(int64_t channels, int64_t groups, double eps)
    : Attention(channels, channels, 1, channels, true, true) {
  group_norm = register_module("group_norm", std::make_shared<GroupNorm>(groups, channels, eps));
}

at::Tensor VaeAttention::forward(const at::Tensor& x) const {
  const int64_t b = x.size(0), c = x.size(1), h = x.size(2), w = x.size(3);
  auto tokens = group_norm->forward(x).view({b, c, h * w}).transpose(1, 2);
  auto y = Attention::forward(tokens);
  return add_into(y.transpose(1, 2).reshape({b, c, h, w}), x);
}

}  // namespace sumi::nn
