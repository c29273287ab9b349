// Scaled dot-product attention for every libtorch sumi builds against: the fused
// at::scaled_dot_product_attention on libtorch >= 2, a manual softmax(QK^T / sqrt(d)) V on 1.x.
// The manual path splits the query dimension into chunks so that the score matrix of a large
// latent (SDXL at 1024px: 4096 x 4096 per head) never has to exist at once.
#pragma once

#include <ATen/ATen.h>

namespace sumi::nn {

struct AttentionOptions {
  bool causal = false;  // mask out keys after the query position (CLIP text encoders)
  bool upcast = false;  // compute scores and softmax in float32 (diffusers' upcast_attention)
  int64_t chunk_elements = int64_t{1} << 25;  // largest score matrix built at once (kAttentionChunkElements)
};

// q: [B, H, Lq, D], k and v: [B, H, Lk, D]. Returns [B, H, Lq, D] in q's dtype.
at::Tensor scaled_dot_product_attention(const at::Tensor& q, const at::Tensor& k,
                                        const at::Tensor& v, const AttentionOptions& opt = {});

// Largest score matrix, in elements, that the manual path builds per chunk.
inline constexpr int64_t kAttentionChunkElements = int64_t{1} << 25;

}  // namespace sumi::nn
