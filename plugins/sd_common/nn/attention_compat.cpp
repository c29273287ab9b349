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
int64_t rows_per_chunk(const at::Tensor& q, const at::Tensor& k, int64_t chunk_elements) {
  const int64_t per_row = std::max<int64_t>(1, q.size(0) * q.size(1) * k.size(2));
  return std::max<int64_t>(1, chunk_elements / per_row);
}

#if TORCH_VERSION_MAJOR >= 2

at::Tensor fused(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, bool causal) {
  return at::scaled_dot_product_attention(q, k, v, {}, 0.0, causal);
}

at::Tensor attend(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, bool causal, int64_t chunk_elements) {
  // Older 2.x CPU builds fall back to the math kernel, which builds the whole score matrix;
  // splitting the queries bounds it (exact without a mask; causal is only used for text).
  const int64_t rows = rows_per_chunk(q, k, chunk_elements);
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

at::Tensor attend(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, bool causal, int64_t chunk_elements) {
  const double scale = 1.0 / std::sqrt(static_cast<double>(q.size(-1)));
  auto kt = k.transpose(-1, -2);
  const int64_t lq = q.size(2), lk = k.size(2), rows = rows_per_chunk(q, k, chunk_elements);
  std::vector<at::Tensor> parts;
  for (int64_t begin = 0; begin < lq; begin += rows) {
    const int64_t len = std::min(rows, lq - begin);
    auto scores = at::matmul(q.narrow(2, begin, len), kt) * scale;
    if (causal) scores = scores + causal_bias(begin, len, lk, scores);
    parts.push_back(at::matmul(at::softmax(scores, -1).to(v.scalar_type()), v));
  }
  return parts.size() == 1 ? parts[0] : at::cat(parts, 2);
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
