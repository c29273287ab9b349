// Scaled dot-product attention for every libtorch sumi builds against: the fused
// at::scaled_dot_product_attention on libtorch >= 2, a manual softmax(QK^T / sqrt(d)) V on 1.x.
// The manual path splits the query dimension into chunks so that the score matrix of a large
// latent (SDXL at 1024px: 4096 x 4096 per head) never has to exist at once. It runs bmm (not
// baddbmm, which has no fast bf16 CPU kernel in 1.13), scales the scores in place (fp32, so the
// numbers stay those of matmul(q, k^T) * scale) or folds the scale into q (bf16 / fp16: a pass
// over q instead of over the scores), and takes the softmax in place when no gradient is needed.
#pragma once

#include <ATen/ATen.h>

namespace sumi::nn {

struct AttentionOptions {
  bool causal = false;  // mask out keys after the query position (CLIP text encoders)
  bool upcast = false;  // compute scores and softmax in float32 (diffusers' upcast_attention)
  // Largest score matrix, in elements, built at once (the query rows are split to stay within
  // it); 0 = kAttentionChunkElements. The memory-efficient path (--mem_eff_attn, --xformers,
  // --sdpa) passes kMemEfficientChunkElements.
  int64_t chunk_elements = 0;
};

// q: [B, H, Lq, D], k and v: [B, H, Lk, D]. Returns [B, H, Lq, D] in q's dtype.
at::Tensor scaled_dot_product_attention(const at::Tensor& q, const at::Tensor& k,
                                        const at::Tensor& v, const AttentionOptions& opt = {});

// Largest score matrix, in elements, that the manual path builds per chunk by default, and with
// the memory-efficient path (32 MiB of bf16 scores at most; 4 MiB).
inline constexpr int64_t kAttentionChunkElements = int64_t{1} << 25;
inline constexpr int64_t kMemEfficientChunkElements = int64_t{1} << 21;

}  // namespace sumi::nn
