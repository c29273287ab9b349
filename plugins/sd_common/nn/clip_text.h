// CLIP text encoder as transformers' CLIPTextModel / CLIPTextModelWithProjection compute it
// (pre-LN transformer, causal mask, no padding mask), with every layer's hidden state exposed so
// callers can take "penultimate" (SDXL), "clip skip" (A1111) or the last layer (SD1).
// Parameter names are transformers' (`text_model.encoder.layers.0.self_attn.q_proj.weight`,
// `text_projection.weight`), so a diffusers text_encoder folder loads with load_weights().
#pragma once

#include <ATen/ATen.h>
#include <torch/nn/module.h>

#include <memory>
#include <vector>

#include "clip_config.h"

namespace sumi::nn {

struct ClipTextTransformer;
struct Linear;

struct ClipTextOutput {
  // [0] = embeddings, [i] = output of layer i (no final layer norm); num_hidden_layers + 1.
  std::vector<at::Tensor> hidden_states;
  at::Tensor last_hidden_state;  // final_layer_norm(hidden_states.back()), [B, L, C]
  at::Tensor pooled;             // last_hidden_state at the first EOS (argmax of ids), [B, C]
  at::Tensor text_embeds;        // text_projection(pooled), [B, P]; undefined without projection
};

class ClipTextModel : public torch::nn::Module {
 public:
  explicit ClipTextModel(ClipTextConfig config);

  // ids: [B, L] integer token ids, L <= max_position_embeddings.
  ClipTextOutput forward(const at::Tensor& ids) const;
  // The tower's final layer norm, for "clip skip" style outputs of earlier layers.
  at::Tensor final_layer_norm(const at::Tensor& hidden) const;

  // Textual Inversion: token rows after the vocabulary. Ids >= vocab_size look up, in order,
  // the rows of the blocks added here ([n, hidden_size] each, any float dtype; cast to the
  // model's in forward). A block is kept by reference, so a trainable one (a registered
  // parameter) gets its gradient through forward. Returns the first id of the block.
  int64_t add_token_rows(const at::Tensor& rows);
  int64_t num_added_tokens() const;
  // The rows of added token `id` (>= vocab_size): a view into its block.
  at::Tensor added_token_rows(int64_t first_id, int64_t n) const;
  // The vocabulary's token embedding matrix [vocab_size, hidden_size].
  const at::Tensor& token_embedding() const;

  // Recompute each encoder layer during backward (training the text encoder).
  void set_gradient_checkpointing(bool enabled);

  const ClipTextConfig& config() const { return config_; }

 private:
  ClipTextConfig config_;
  std::shared_ptr<ClipTextTransformer> text_model_;
  std::shared_ptr<Linear> text_projection_;
  std::vector<at::Tensor> added_rows_;
  at::Tensor embed_tokens(const at::Tensor& ids) const;
};

}  // namespace sumi::nn
