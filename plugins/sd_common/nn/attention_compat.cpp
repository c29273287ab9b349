#include "attention_compat.h"

#include <torch/version.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <stdexcept>
#include <string>
#include <vector>

#include "flops.h"

namespace sumi::nn {

namespace {

// Query rows per chunk so that one chunk's scores stay within kAttentionChunkElements.
int64_t rows_per_chunk(const at::Tensor& q, const at::Tensor& k, int64_t chunk) {
  const int64_t per_row = std::max<int64_t>(1, q.size(0) * q.size(1) * k.size(2));
  return std::max<int64_t>(1, (chunk > 0 ? chunk : kAttentionChunkElements) / per_row);
}

#if TORCH_VERSION_MAJOR >= 2

at::Tensor fused(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, bool causal) {
  return at::scaled_dot_product_attention(q, k, v, {}, 0.0, causal);
}

at::Tensor attend(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, bool causal, int64_t chunk) {
  // Older 2.x CPU builds fall back to the math kernel, which builds the whole score matrix;
  // splitting the queries bounds it (exact without a mask; causal is only used for text).
  const int64_t rows = rows_per_chunk(q, k, chunk);
  if (causal || !q.device().is_cpu() || q.size(2) <= rows) return fused(q, k, v, causal);
  std::vector<at::Tensor> parts;
  for (int64_t begin = 0; begin < q.size(2); begin += rows)
    parts.push_back(fused(q.narrow(2, begin, std::min(rows, q.size(2) - begin)), k, v, false));
  return at::cat(parts, 2);
}

#else

at::Tensor causal_bias(int64_t q_begin, int64_t q_len, int64_t k_len, const at::Tensor& like) {
  auto rows = at::arange(q_begin, q_begin + q_len, like.options().dtype(at::kLong)).unsqueeze(1);
  auto cols = at::arange(k_len, like.options().dtype(at::kLong)).unsqueeze(0);
  auto bias = at::zeros({q_len, k_len}, like.options());
  return bias.masked_fill(cols > rows, -std::numeric_limits<float>::infinity());
}

at::Tensor attend(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, bool causal, int64_t chunk) {
  const double scale = 1.0 / std::sqrt(static_cast<double>(q.size(-1)));
  const int64_t b = q.size(0), h = q.size(1), lq = q.size(2), lk = k.size(2), d = q.size(3), bh = b * h;
  const int64_t rows = rows_per_chunk(q, k, chunk);
  const bool grad = at::GradMode::is_enabled() && (q.requires_grad() || k.requires_grad() || v.requires_grad());
  // Reduced precision: scale q (Lq x D) rather than the scores (Lq x Lk); in fp32 the scores are
  // scaled after the product, as matmul(q, k^T) * scale computes them.
  const bool fold = q.scalar_type() != at::kFloat && q.scalar_type() != at::kDouble;
  // [B, H, L, D] -> [B*H, L, D]; k^T as matmul lays it out ([B*H, D, Lk], contiguous) so that
  // the fp32 products are bit for bit those of at::matmul.
  const at::Tensor q3 = (fold ? q * scale : q).reshape({bh, lq, d});
  const at::Tensor kt = k.transpose(-1, -2).reshape({bh, d, lk});
  const at::Tensor v3 = v.reshape({bh, lk, d});
  std::vector<at::Tensor> parts;
  for (int64_t begin = 0; begin < lq; begin += rows) {
    const int64_t len = std::min(rows, lq - begin);
    at::Tensor scores = at::bmm(rows < lq ? q3.narrow(1, begin, len).contiguous() : q3, kt);
    // bmm keeps neither its output nor needs it for backward: scaling in place is safe under autograd.
    if (!fold) scores.mul_(scale);
    if (causal) scores.add_(causal_bias(begin, len, lk, scores));
    if (grad) scores = at::softmax(scores, -1);
    else at::_softmax_out(scores, scores, -1, false);
    parts.push_back(at::bmm(scores.scalar_type() == v3.scalar_type() ? scores : scores.to(v3.scalar_type()), v3));
  }
  const at::Tensor o = parts.size() == 1 ? parts[0] : at::cat(parts, 1);
  return o.view({b, h, lq, d});
}

#endif

}  // namespace

at::Tensor scaled_dot_product_attention(const at::Tensor& q, const at::Tensor& k,
                                        const at::Tensor& v, const AttentionOptions& opt) {
  if (q.dim() != 4 || k.dim() != 4 || v.dim() != 4)
    throw std::invalid_argument("attention: expected q, k, v of shape [B, H, L, D], got ranks " +
                                std::to_string(q.dim()) + ", " + std::to_string(k.dim()) + ", " +
                                std::to_string(v.dim()));
  if (k.size(2) != v.size(2) || q.size(-1) != k.size(-1))
    throw std::invalid_argument("attention: k and v lengths or q and k head sizes differ");
  if (FlopCount* f = active_flop_count())
    f->attention += 4.0 * static_cast<double>(q.numel()) * static_cast<double>(k.size(2));
  if (opt.upcast && q.scalar_type() != at::kFloat)
    return attend(q.to(at::kFloat), k.to(at::kFloat), v.to(at::kFloat), opt.causal, opt.chunk_elements)
        .to(q.scalar_type());
  return attend(q, k, v, opt.causal, opt.chunk_elements);
}

}  // namespace sumi::nn
