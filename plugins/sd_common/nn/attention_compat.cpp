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

// float32 / float64: softmax(matmul(q, k^T) * scale) V exactly as earlier sumi and the goldens
// computed it; every sample's numbers are independent of the batch it is in.
at::Tensor attend_full_precision(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, bool causal,
                                 int64_t chunk_elements) {
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

// QK^T of one chunk of query rows, [BH, len, D] x [BH, Lk, D] -> [BH, len, Lk]. On the CPU in
// bf16 with heads up to 96 wide, one mm per head: the kernel libtorch 1.13 picks for mm is 2-3x
// faster than its bmm there (measured with AMX: d = 40: 80 vs 35 GFLOP/s, d = 64: 230 vs 70,
// d = 80: 250 vs 160; at d = 160 bmm is faster).
at::Tensor scores_of(const at::Tensor& qc, const at::Tensor& k3, bool grad) {
  const int64_t bh = qc.size(0), d = qc.size(2);
  if (!(qc.scalar_type() == at::kBFloat16 && qc.is_cpu() && d <= 96)) return at::bmm(qc, k3.transpose(1, 2));
  if (grad) {
    std::vector<at::Tensor> heads;
    heads.reserve(static_cast<size_t>(bh));
    for (int64_t i = 0; i < bh; ++i) heads.push_back(at::mm(qc[i], k3[i].t()));
    return at::stack(heads);
  }
  at::Tensor scores = at::empty({bh, qc.size(1), k3.size(1)}, qc.options());
  for (int64_t i = 0; i < bh; ++i) {
    at::Tensor out = scores[i];
    at::mm_out(out, qc[i], k3[i].t());
  }
  return scores;
}

// bf16 / fp16: the scale folded into q (a pass over [Lq, D] instead of the [Lq, Lk] scores),
// bmm rather than matmul's baddbmm (no fast bf16 CPU kernel in 1.13), the softmax written over
// the scores when no gradient is needed. Values differ from the float32 order by rounding only.
at::Tensor attend_reduced_precision(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, bool causal,
                                    int64_t chunk_elements) {
  const double scale = 1.0 / std::sqrt(static_cast<double>(q.size(-1)));
  const int64_t b = q.size(0), h = q.size(1), lq = q.size(2), lk = k.size(2), d = q.size(3), bh = b * h;
  const int64_t rows = rows_per_chunk(q, k, chunk_elements);
  const bool grad = at::GradMode::is_enabled() && (q.requires_grad() || k.requires_grad() || v.requires_grad());
  const at::Tensor q3 = (q * scale).reshape({bh, lq, d});
  const at::Tensor k3 = k.reshape({bh, lk, d});
  const at::Tensor v3 = v.reshape({bh, lk, d});
  std::vector<at::Tensor> parts;
  for (int64_t begin = 0; begin < lq; begin += rows) {
    const int64_t len = std::min(rows, lq - begin);
    at::Tensor scores = scores_of(rows < lq ? q3.narrow(1, begin, len).contiguous() : q3, k3, grad);
    // Neither mm, bmm nor stack keeps its output for backward: adding the mask in place is safe.
    if (causal) scores.add_(causal_bias(begin, len, lk, scores));
    if (grad) scores = at::softmax(scores, -1);
    else at::_softmax_out(scores, scores, -1, false);
    parts.push_back(at::bmm(scores, v3));
  }
  const at::Tensor o = parts.size() == 1 ? parts[0] : at::cat(parts, 1);
  return o.view({b, h, lq, d});
}

at::Tensor attend(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, bool causal, int64_t chunk_elements) {
  if (q.scalar_type() == at::kFloat || q.scalar_type() == at::kDouble)
    return attend_full_precision(q, k, v, causal, chunk_elements);
  return attend_reduced_precision(q, k, v, causal, chunk_elements);
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
