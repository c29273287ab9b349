#include "attention_compat.h"

#include <torch/version.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <stdexcept>
#include <string>
#include <vector>

namespace sumi::nn {

#if TORCH_VERSION_MAJOR < 2
namespace {

at::Tensor causal_bias(int64_t q_begin, int64_t q_len, int64_t k_len, const at::Tensor& like) {
  auto rows = at::arange(q_begin, q_begin + q_len, like.options().dtype(at::kLong)).unsqueeze(1);
  auto cols = at::arange(k_len, like.options().dtype(at::kLong)).unsqueeze(0);
  auto bias = at::zeros({q_len, k_len}, like.options());
  return bias.masked_fill(cols > rows, -std::numeric_limits<float>::infinity());
}

at::Tensor manual_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                            const AttentionOptions& opt) {
  const auto out_dtype = q.scalar_type();
  const double scale = 1.0 / std::sqrt(static_cast<double>(q.size(-1)));
  auto qc = opt.upcast ? q.to(at::kFloat) : q;
  auto kt = (opt.upcast ? k.to(at::kFloat) : k).transpose(-1, -2);
  const int64_t batch_heads = q.size(0) * q.size(1);
  const int64_t lq = q.size(2), lk = k.size(2);
  const int64_t rows = std::max<int64_t>(1, kAttentionChunkElements / std::max<int64_t>(1, batch_heads * lk));
  std::vector<at::Tensor> parts;
  for (int64_t begin = 0; begin < lq; begin += rows) {
    const int64_t len = std::min(rows, lq - begin);
    auto scores = at::matmul(qc.narrow(2, begin, len), kt) * scale;
    if (opt.causal) scores = scores + causal_bias(begin, len, lk, scores);
    auto probs = at::softmax(scores, -1).to(v.scalar_type());
    parts.push_back(at::matmul(probs, v));
  }
  auto out = parts.size() == 1 ? parts[0] : at::cat(parts, 2);
  return out.to(out_dtype);
}

}  // namespace
#endif

at::Tensor scaled_dot_product_attention(const at::Tensor& q, const at::Tensor& k,
                                        const at::Tensor& v, const AttentionOptions& opt) {
  if (q.dim() != 4 || k.dim() != 4 || v.dim() != 4)
    throw std::invalid_argument("attention: expected q, k, v of shape [B, H, L, D], got ranks " +
                                std::to_string(q.dim()) + ", " + std::to_string(k.dim()) + ", " +
                                std::to_string(v.dim()));
#if TORCH_VERSION_MAJOR >= 2
  if (opt.upcast && q.scalar_type() != at::kFloat) {
    auto out = at::scaled_dot_product_attention(q.to(at::kFloat), k.to(at::kFloat),
                                                v.to(at::kFloat), {}, 0.0, opt.causal);
    return out.to(q.scalar_type());
  }
  return at::scaled_dot_product_attention(q, k, v, {}, 0.0, opt.causal);
#else
  return manual_attention(q, k, v, opt);
#endif
}

}  // namespace sumi::nn
