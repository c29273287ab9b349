#include "clip_text.h"

#include <stdexcept>
#include <string>

#include "attention_compat.h"
#include "checkpoint.h"
#include "layers.h"

namespace sumi::nn {

namespace {

struct ClipAttention : torch::nn::Module {
  ClipAttention(int64_t dim, int64_t heads_) : heads(heads_) {
    q_proj = register_module("q_proj", std::make_shared<Linear>(dim, dim));
    k_proj = register_module("k_proj", std::make_shared<Linear>(dim, dim));
    v_proj = register_module("v_proj", std::make_shared<Linear>(dim, dim));
    out_proj = register_module("out_proj", std::make_shared<Linear>(dim, dim));
  }
  at::Tensor forward(const at::Tensor& x) const {
    const int64_t b = x.size(0), l = x.size(1), c = x.size(2), d = c / heads;
    auto split = [&](const at::Tensor& t) { return t.view({b, l, heads, d}).transpose(1, 2); };
    AttentionOptions opt;
    opt.causal = true;
    auto o = scaled_dot_product_attention(split(q_proj->forward(x)), split(k_proj->forward(x)),
                                          split(v_proj->forward(x)), opt);
    return out_proj->forward(o.transpose(1, 2).reshape({b, l, c}));
  }
  int64_t heads;
  std::shared_ptr<Linear> q_proj, k_proj, v_proj, out_proj;
};

struct ClipMlp : torch::nn::Module {
  ClipMlp(int64_t dim, int64_t hidden, std::string act_) : act(std::move(act_)) {
    fc1 = register_module("fc1", std::make_shared<Linear>(dim, hidden));
    fc2 = register_module("fc2", std::make_shared<Linear>(hidden, dim));
  }
  at::Tensor forward(const at::Tensor& x) const {
    return fc2->forward(activation(act, fc1->forward(x)));
  }
  std::string act;
  std::shared_ptr<Linear> fc1, fc2;
};

struct ClipLayer : torch::nn::Module {
  explicit ClipLayer(const ClipTextConfig& c) {
    self_attn = register_module("self_attn",
                                std::make_shared<ClipAttention>(c.hidden_size, c.num_attention_heads));
    layer_norm1 = register_module("layer_norm1", std::make_shared<LayerNorm>(c.hidden_size, c.layer_norm_eps));
    mlp = register_module("mlp", std::make_shared<ClipMlp>(c.hidden_size, c.intermediate_size, c.hidden_act));
    layer_norm2 = register_module("layer_norm2", std::make_shared<LayerNorm>(c.hidden_size, c.layer_norm_eps));
  }
  at::Tensor forward(const at::Tensor& x) const {
    if (gradient_checkpointing && at::GradMode::is_enabled())
      return checkpointed(*this, [this](const std::vector<at::Tensor>& in) { return compute(in[0]); }, {x});
    return compute(x);
  }
  at::Tensor compute(at::Tensor x) const {
    x = x + self_attn->forward(layer_norm1->forward(x));
    return x + mlp->forward(layer_norm2->forward(x));
  }
  bool gradient_checkpointing = false;
  std::shared_ptr<ClipAttention> self_attn;
  std::shared_ptr<LayerNorm> layer_norm1, layer_norm2;
  std::shared_ptr<ClipMlp> mlp;
};

struct ClipEmbeddings : torch::nn::Module {
  explicit ClipEmbeddings(const ClipTextConfig& c) {
    token_embedding = register_module("token_embedding", std::make_shared<Embedding>(c.vocab_size, c.hidden_size));
    position_embedding = register_module(
        "position_embedding", std::make_shared<Embedding>(c.max_position_embeddings, c.hidden_size));
  }
  std::shared_ptr<Embedding> token_embedding, position_embedding;
};

struct ClipEncoder : torch::nn::Module {
  explicit ClipEncoder(const ClipTextConfig& c) {
    layers = register_module("layers", std::make_shared<List<ClipLayer>>());
    for (int64_t i = 0; i < c.num_hidden_layers; ++i) layers->add(std::make_shared<ClipLayer>(c));
  }
  std::shared_ptr<List<ClipLayer>> layers;
};

}  // namespace

struct ClipTextTransformer : torch::nn::Module {
  explicit ClipTextTransformer(const ClipTextConfig& c) {
    embeddings = register_module("embeddings", std::make_shared<ClipEmbeddings>(c));
    encoder = register_module("encoder", std::make_shared<ClipEncoder>(c));
    final_layer_norm = register_module("final_layer_norm", std::make_shared<LayerNorm>(c.hidden_size, c.layer_norm_eps));
  }
  std::shared_ptr<ClipEmbeddings> embeddings;
  std::shared_ptr<ClipEncoder> encoder;
  std::shared_ptr<LayerNorm> final_layer_norm;
};

ClipTextModel::ClipTextModel(ClipTextConfig config) : config_(std::move(config)) {
  if (config_.hidden_size % config_.num_attention_heads != 0)
    throw std::invalid_argument("ClipTextModel: hidden_size " + std::to_string(config_.hidden_size) +
                                " is not divisible by num_attention_heads " +
                                std::to_string(config_.num_attention_heads));
  activation(config_.hidden_act, at::zeros({1}));  // reject an unknown activation up front
  text_model_ = register_module("text_model", std::make_shared<ClipTextTransformer>(config_));
  if (config_.projection_dim > 0)
    text_projection_ = register_module(
        "text_projection", std::make_shared<Linear>(config_.hidden_size, config_.projection_dim, false));
}

ClipTextOutput ClipTextModel::forward(const at::Tensor& ids) const {
  if (ids.dim() != 2 || ids.size(1) > config_.max_position_embeddings)
    throw std::invalid_argument("ClipTextModel: expected token ids [batch, length <= " +
                                std::to_string(config_.max_position_embeddings) + "], got " +
                                std::to_string(ids.dim()) + " dims" +
                                (ids.dim() == 2 ? " with length " + std::to_string(ids.size(1)) : ""));
  auto ids_long = ids.to(at::kLong);
  const auto& emb = *text_model_->embeddings;
  auto positions = at::arange(ids.size(1), ids_long.options());
  auto x = embed_tokens(ids_long) + emb.position_embedding->forward(positions);
  ClipTextOutput out;
  out.hidden_states.reserve(config_.num_hidden_layers + 1);
  out.hidden_states.push_back(x);
  for (const auto& layer : text_model_->encoder->layers->items) {
    x = layer->forward(x);
    out.hidden_states.push_back(x);
  }
  out.last_hidden_state = text_model_->final_layer_norm->forward(x);
  // transformers pools at argmax(ids), the first EOS of a CLIP vocabulary. Added tokens
  // (ids above EOS) are left out, as sd-scripts' pool_workaround does for Textual Inversion.
  auto eos = (added_rows_.empty() ? ids_long : ids_long.masked_fill(ids_long >= config_.vocab_size, -1)).argmax(-1);
  const int64_t b = ids.size(0), l = ids.size(1);
  auto flat_index = at::arange(b, eos.options()) * l + eos;
  out.pooled = out.last_hidden_state.reshape({b * l, -1}).index_select(0, flat_index);
  if (text_projection_) out.text_embeds = text_projection_->forward(out.pooled);
  return out;
}

at::Tensor ClipTextModel::embed_tokens(const at::Tensor& ids) const {
  const at::Tensor& w = text_model_->embeddings->token_embedding->weight;
  const int64_t vocab = w.size(0);
  if (added_rows_.empty()) return text_model_->embeddings->token_embedding->forward(ids);
  std::vector<at::Tensor> blocks;
  for (const auto& b : added_rows_) blocks.push_back(b.to(w.device(), w.scalar_type()));
  const at::Tensor added = blocks.size() == 1 ? blocks.front() : at::cat(blocks, 0);
  const int64_t n = added.size(0);
  const int64_t top = ids.numel() ? ids.max().item<int64_t>() : 0;
  if (top >= vocab + n)
    throw std::invalid_argument("ClipTextModel: token id " + std::to_string(top) + " is beyond the vocabulary (" +
                                std::to_string(vocab) + ") and the " + std::to_string(n) + " added tokens");
  const at::Tensor is_added = ids >= vocab;
  const at::Tensor base = at::embedding(w, ids.clamp_max(vocab - 1));
  const at::Tensor extra = at::embedding(added, (ids - vocab).clamp(0, n - 1));
  return at::where(is_added.unsqueeze(-1), extra, base);
}

int64_t ClipTextModel::add_token_rows(const at::Tensor& rows) {
  if (rows.dim() != 2 || rows.size(1) != config_.hidden_size)
    throw std::invalid_argument("ClipTextModel: added token rows must be [n, " + std::to_string(config_.hidden_size) +
                                "] (the text encoder's width), got " + std::to_string(rows.dim()) + " dims" +
                                (rows.dim() == 2 ? " of width " + std::to_string(rows.size(1)) : ""));
  if (!at::isFloatingType(rows.scalar_type()))
    throw std::invalid_argument("ClipTextModel: added token rows must be floating point");
  const int64_t first = config_.vocab_size + num_added_tokens();
  added_rows_.push_back(rows);
  return first;
}

int64_t ClipTextModel::num_added_tokens() const {
  int64_t n = 0;
  for (const auto& b : added_rows_) n += b.size(0);
  return n;
}

at::Tensor ClipTextModel::added_token_rows(int64_t first_id, int64_t n) const {
  int64_t at = config_.vocab_size;
  for (const auto& b : added_rows_) {
    if (first_id >= at && first_id + n <= at + b.size(0)) return b.narrow(0, first_id - at, n);
    at += b.size(0);
  }
  throw std::out_of_range("ClipTextModel: no added tokens " + std::to_string(first_id) + ".." +
                          std::to_string(first_id + n - 1) + " in one block");
}

const at::Tensor& ClipTextModel::token_embedding() const { return text_model_->embeddings->token_embedding->weight; }

void ClipTextModel::set_gradient_checkpointing(bool enabled) {
  for (const auto& layer : text_model_->encoder->layers->items) layer->gradient_checkpointing = enabled;
}

at::Tensor ClipTextModel::final_layer_norm(const at::Tensor& hidden) const {
  return text_model_->final_layer_norm->forward(hidden);
}

}  // namespace sumi::nn
