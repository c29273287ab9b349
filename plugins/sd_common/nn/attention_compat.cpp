#include "attention_compat.h"

#include <ATen/Parallel.h>

#include <torch/csrc/autograd/custom_function.h>
#include <sumi/torch_compat.hpp>

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

#if SUMI_TORCH_HAS_SDPA

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

// softmax(q3 k3^T) v3 per head and block of query rows, without autograd: [BH, Lq, D]. Each
// block's scores (at most 2^20 elements, 2 MiB in bf16) are computed, normalised and used while
// they sit in the core's cache, instead of a chunk of all heads going through memory three times
// (mm, softmax, bmm); blocks are spread over the intra-op threads. Same kernels, same numbers up
// to the GEMM's blocking (measured, one thread, AMX, 16 x 4096^2, d = 40: 836 -> 490 ms; d = 64:
// 955 -> 435 ms; 16 x 1024^2, d = 80: 62 -> 37 ms CPU).
at::Tensor attend_blocked(const at::Tensor& q3, const at::Tensor& k3, const at::Tensor& v3) {
  const int64_t bh = q3.size(0), lq = q3.size(1), lk = k3.size(1), d = q3.size(2);
  const int64_t rows = std::clamp<int64_t>((int64_t{1} << 20) / std::max<int64_t>(1, lk), 16, 512);
  const int64_t blocks = (lq + rows - 1) / rows;
  at::Tensor out = at::empty({bh, lq, d}, q3.options());
  at::parallel_for(0, bh * blocks, 1, [&](int64_t begin, int64_t end) {
    at::Tensor buffer = at::empty({rows, lk}, q3.options());
    for (int64_t t = begin; t < end; ++t) {
      const int64_t h = t / blocks, first = (t % blocks) * rows, len = std::min(rows, lq - first);
      at::Tensor scores = len == rows ? buffer : buffer.narrow(0, 0, len);
      at::mm_out(scores, q3[h].narrow(0, first, len), k3[h].t());
      at::_softmax_out(scores, scores, -1, false);
      at::Tensor o = out[h].narrow(0, first, len);
      at::mm_out(o, scores, v3[h]);
    }
  });
  return out;
}

// Whether attend_blocked takes this problem: bf16 on the CPU, heads up to 96 wide (the per-head
// mm kernel, as scores_of), and enough work (4M score elements) for the blocking to pay.
bool blocked_applies(const at::Tensor& q3, const at::Tensor& k3) {
  return q3.scalar_type() == at::kBFloat16 && q3.is_cpu() && q3.size(2) <= 96 &&
         q3.size(0) * q3.size(1) * k3.size(1) >= (int64_t{1} << 22);
}

// softmax(q3 k3^T) v3 over chunks of `rows` query rows, without autograd: [BH, Lq, D].
at::Tensor attend_chunks(const at::Tensor& q3, const at::Tensor& k3, const at::Tensor& v3, int64_t rows) {
  if (blocked_applies(q3, k3)) return attend_blocked(q3, k3, v3);
  const int64_t lq = q3.size(1);
  std::vector<at::Tensor> parts;
  for (int64_t begin = 0; begin < lq; begin += rows) {
    const int64_t len = std::min(rows, lq - begin);
    at::Tensor scores = scores_of(rows < lq ? q3.narrow(1, begin, len).contiguous() : q3, k3, false);
    at::_softmax_out(scores, scores, -1, false);
    parts.push_back(at::bmm(scores, v3));
  }
  return parts.size() == 1 ? parts[0] : at::cat(parts, 1);
}

// The gradients of softmax(q3 k3^T) v3 per head and block of query rows (as attend_blocked):
// each block's probabilities are recomputed and used while in cache. Heads are spread over the
// threads (a head's dK and dV sum over its blocks, in float32). Undefined outputs are not wanted.
void backward_blocked(const at::Tensor& q3, const at::Tensor& k3, const at::Tensor& v3, const at::Tensor& go,
                      at::Tensor& dq, at::Tensor& dk, at::Tensor& dv) {
  const int64_t bh = q3.size(0), lq = q3.size(1), lk = k3.size(1);
  const int64_t rows = std::clamp<int64_t>((int64_t{1} << 20) / std::max<int64_t>(1, lk), 16, 512);
  at::parallel_for(0, bh, 1, [&](int64_t begin, int64_t end) {
    at::Tensor p_buf = at::empty({rows, lk}, q3.options()), dp_buf = at::empty({rows, lk}, q3.options());
    at::Tensor ds_buf = at::empty({rows, lk}, q3.options());
    for (int64_t h = begin; h < end; ++h) {
      const at::Tensor kh = k3[h], vh = v3[h];
      for (int64_t first = 0; first < lq; first += rows) {
        const int64_t len = std::min(rows, lq - first);
        const at::Tensor qb = q3[h].narrow(0, first, len), gb = go[h].narrow(0, first, len);
        at::Tensor p = len == rows ? p_buf : p_buf.narrow(0, 0, len);
        at::mm_out(p, qb, kh.t());
        at::_softmax_out(p, p, -1, false);
        if (dv.defined()) dv[h].add_(at::mm(p.t(), gb));
        if (!dq.defined() && !dk.defined()) continue;
        at::Tensor dp = len == rows ? dp_buf : dp_buf.narrow(0, 0, len);
        at::Tensor ds = len == rows ? ds_buf : ds_buf.narrow(0, 0, len);
        at::mm_out(dp, gb, vh.t());
        at::_softmax_backward_data_out(ds, dp, p, -1, p.scalar_type());
        if (dq.defined()) {
          at::Tensor out = dq[h].narrow(0, first, len);
          at::mm_out(out, ds, kh);
        }
        if (dk.defined()) dk[h].add_(at::mm(ds.t(), qb));
      }
    }
  });
}

// Training attention in bf16 / fp16 that keeps only q, k and v for backward: the probabilities
// (8 x 4096 x 4096 per SD 1.5 level-1 layer, 256 MiB in bf16) are recomputed chunk by chunk in
// backward instead of held from forward to backward (the memory-efficient attention of xformers
// and PyTorch 2's SDPA do the same). Forward computes what the no-grad path computes; the
// gradients differ from autograd's through the stored probabilities by bf16 rounding only
// (dK and dV are summed over the chunks in float32).
struct RecomputedAttention : torch::autograd::Function<RecomputedAttention> {
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& q3, const at::Tensor& k3,
                            const at::Tensor& v3, int64_t rows) {
    ctx->save_for_backward({q3, k3, v3});
    ctx->saved_data["rows"] = rows;
    return attend_chunks(q3, k3, v3, rows);
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const at::Tensor &q3 = saved[0], &k3 = saved[1], &v3 = saved[2];
    const int64_t rows = ctx->saved_data["rows"].toInt(), lq = q3.size(1);
    const at::Tensor go = grads[0].contiguous();
    const bool want_q = ctx->needs_input_grad(0), want_k = ctx->needs_input_grad(1), want_v = ctx->needs_input_grad(2);
    at::Tensor dq = want_q ? at::empty_like(q3) : at::Tensor();
    at::Tensor dk = want_k ? at::zeros(k3.sizes(), k3.options().dtype(at::kFloat)) : at::Tensor();
    at::Tensor dv = want_v ? at::zeros(v3.sizes(), v3.options().dtype(at::kFloat)) : at::Tensor();
    if (blocked_applies(q3, k3)) {
      backward_blocked(q3, k3, v3, go, dq, dk, dv);
      return {dq, want_k ? dk.to(k3.scalar_type()) : dk, want_v ? dv.to(v3.scalar_type()) : dv, at::Tensor()};
    }
    for (int64_t begin = 0; begin < lq; begin += rows) {
      const int64_t len = std::min(rows, lq - begin);
      const at::Tensor qc = rows < lq ? q3.narrow(1, begin, len).contiguous() : q3;
      const at::Tensor goc = rows < lq ? go.narrow(1, begin, len) : go;
      at::Tensor p = scores_of(qc, k3, false);
      at::_softmax_out(p, p, -1, false);
      if (want_v) dv.add_(at::bmm(p.transpose(1, 2), goc));
      if (!want_q && !want_k) continue;
      // dP = dO V^T: per head as QK^T is (libtorch 1.13 bmm: 49 GFLOP/s, per-head mm: 130, d = 40, AMX).
      const at::Tensor ds = at::_softmax_backward_data(scores_of(goc.contiguous(), v3, false), p, -1, p.scalar_type());
      if (want_q) dq.narrow(1, begin, len).copy_(at::bmm(ds, k3));
      if (want_k) dk.add_(at::bmm(ds.transpose(1, 2), qc));
    }
    return {dq, want_k ? dk.to(k3.scalar_type()) : dk, want_v ? dv.to(v3.scalar_type()) : dv, at::Tensor()};
  }
};

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
  // Probabilities of at least 16M elements (32 MiB in bf16: SD 1.5's 64^2 and 32^2 self-attention)
  // are recomputed in backward; measured fwd + bwd, one thread, AMX: 1.45 vs 1.41 CPU s at
  // 8 x 4096^2, d = 40; 0.36 vs 0.35 at 8 x 2048^2, d = 80. Smaller ones are kept (cheaper).
  if (grad && !causal && bh * lq * lk >= (int64_t{1} << 24)) return RecomputedAttention::apply(q3, k3, v3, rows).view({b, h, lq, d});
  if (!grad && !causal) return attend_chunks(q3, k3, v3, rows).view({b, h, lq, d});
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
