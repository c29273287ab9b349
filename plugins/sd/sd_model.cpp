#include "sd_model.h"

#include <sumi/tensor.hpp>

#include <torch/nn/module.h>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <filesystem>
#include <stdexcept>

#include "embedding_file.h"
#include "model_files.h"
#include "nn/autoencoder_kl.h"
#include "nn/blocks.h"
#include "nn/clip_text.h"
#include "nn/layers.h"
#include "nn/unet.h"
#include "nn/weights.h"
#include "sd_common/tokenizer/clip_tokenizer.h"
#include "sd_common/prompt/chunking.h"

namespace sumi::sd {

using nn::ModelFamily;

namespace {

bool contains(const std::string& s, const char* x) { return s.find(x) != std::string::npos; }

void load_part(torch::nn::Module& module, const nn::TensorMap& weights, const std::string& path,
               const char* part) {
  if (weights.empty())
    throw std::runtime_error(path + ": the checkpoint has no " + part + " weights");
  try {
    nn::load_weights(module, weights);
  } catch (const std::exception& e) {
    throw std::runtime_error(path + " (" + part + "): " + e.what());
  }
}

at::Tensor ids_tensor(const sd::ClipTokenizer& tok, const std::vector<std::string>& prompts) {
  std::vector<int64_t> ids;
  for (const auto& p : prompts) {
    auto v = tok.encode_padded(p);
    ids.insert(ids.end(), v.begin(), v.end());
  }
  return at::tensor(ids, at::kLong).view({static_cast<int64_t>(prompts.size()), ClipTokenizer::kModelMaxLength});
}

// The prompts of one call framed together with one tokenizer: ids [B, chunks * 77] and one
// weight per position of the concatenated chunk embeddings [B, L] (double).
struct FramedBatch {
  int64_t chunks = 1;
  at::Tensor ids;
  at::Tensor weights;
};

FramedBatch frame_batch(const ClipTokenizer& tok, const std::vector<std::string>& prompts,
                        const prompt::ChunkOptions& options, const prompt::Warn& warn) {
  prompt::TokenizerSpec spec;
  spec.tokenize = [&tok](std::string_view text) { return tok.encode(text); };
  spec.pad = tok.pad_id();
  std::vector<prompt::WeightedTokens> tokens;
  for (const auto& p : prompts) {
    try {
      tokens.push_back(prompt::tokenize_weighted(p, spec, options, warn));
    } catch (const std::invalid_argument& e) {
      throw std::invalid_argument("prompt '" + p + "': " + e.what());
    }
  }
  auto framed = prompt::frame(tokens, spec, options);
  FramedBatch out;
  out.chunks = framed.front().chunks;
  std::vector<int64_t> ids;
  std::vector<double> weights;
  for (const auto& f : framed) {
    ids.insert(ids.end(), f.chunk_ids.begin(), f.chunk_ids.end());
    weights.insert(weights.end(), f.weights.begin(), f.weights.end());
  }
  const auto batch = static_cast<int64_t>(prompts.size());
  out.ids = at::tensor(ids, at::kLong).view({batch, -1});
  out.weights = at::tensor(weights, at::kDouble).view({batch, -1});
  return out;
}

std::string network_error(const char* what, const std::string& module) {
  return std::string("network ") + what + " failed for module '" + module + "': " + api().last_error();
}

}  // namespace

at::Tensor apply_prompt_weights(const at::Tensor& embeddings, const at::Tensor& weights) {
  // Contiguous, so both means reduce in the same order: all weights 1 then give exactly 1.
  const at::Tensor emb = embeddings.contiguous();
  const auto dt = emb.scalar_type();
  const at::Tensor before = emb.to(at::kFloat).mean({-2, -1}).to(dt);
  at::Tensor out = emb * weights.to(emb.device(), dt).unsqueeze(-1);
  const at::Tensor after = out.to(at::kFloat).mean({-2, -1}).to(dt);
  // sd-scripts divides unguarded. A weighted mean of exactly 0 (a layer norm's output centres
  // on 0; it happens, and then before is 0 too when every weight is 1) would make the whole
  // prompt NaN or inf: no scale can restore the mean there, so that prompt is left as weighted.
  const at::Tensor ratio = at::where(after != 0, before / after, at::ones_like(after));
  return out * ratio.unsqueeze(-1).unsqueeze(-1);
}

namespace {

// SD1 and SDXL's first encoder pad with <|endoftext|>, SD2 and SDXL's second with "!".
std::unique_ptr<ClipTokenizer> new_tokenizer(ModelFamily family, int encoder) {
  const bool bang = family == ModelFamily::sd2 || encoder == 1;
  return std::make_unique<ClipTokenizer>(bang ? ClipTokenizer::kBangPad : ClipTokenizer::kEndOfText);
}

// The token strings add_embedding_token would create, each refused if taken.
void check_token_free(const ClipTokenizer& tok, const std::string& token, int64_t n, const std::string& what) {
  if (token.empty()) throw std::invalid_argument(what + ": the token string is empty");
  for (int64_t i = 0; i < n; ++i) {
    const std::string t = i == 0 ? token : token + std::to_string(i);
    if (tok.token_to_id(t) >= 0)
      throw std::invalid_argument(what + ": '" + t + "' is already a token (of the CLIP vocabulary or added before); " +
                                  "use another token string");
  }
}

}  // namespace

at::Tensor& SdModel::Layer::weight() const { return linear ? linear->weight : conv->weight; }
at::Tensor& SdModel::Layer::bias() const { return linear ? linear->bias : conv->bias; }

SdModel::SdModel(ModelOptions options) : options_(std::move(options)) {
  if (options_.clip_skip < 1)
    throw std::invalid_argument("clip_skip must be >= 1 (1 = the last layer), got " + std::to_string(options_.clip_skip));
  if (options_.max_embeddings_multiples < 1)
    throw std::invalid_argument("max_embeddings_multiples must be >= 1 (chunks of 75 prompt tokens), got " +
                                std::to_string(options_.max_embeddings_multiples));
  if (options_.family == ModelFamily::sdxl && options_.clip_skip != 1)
    throw std::invalid_argument("clip_skip does not apply to SDXL (its conditioning is fixed to the penultimate "
                                "layers of both encoders); leave it at 1");
  tok1_ = new_tokenizer(options_.family, 0);
  if (options_.family == ModelFamily::sdxl) tok2_ = new_tokenizer(options_.family, 1);
}

SdModel::~SdModel() { release_module_list(); }

void SdModel::load(const std::string& path) {
  ReadOptions ro;
  ro.expect = options_.family;
  ModelFiles f = read_model(path, ro);
  const char* title = family_title(f.family);
  if (!f.unet_config) throw std::runtime_error(path + ": no UNet in the checkpoint; an " + std::string(title) + " model needs one");
  if (!f.te_config) throw std::runtime_error(path + ": no text encoder in the checkpoint");
  if (f.family == ModelFamily::sdxl && !f.te2_config)
    throw std::runtime_error(path + ": no second text encoder (OpenCLIP) in the SDXL checkpoint");
  nn::TensorMap vae_weights = f.parts.vae;
  nn::VaeConfig vae_config;
  if (f.vae_config) vae_config = *f.vae_config;
  else vae_config.scaling_factor = f.family == ModelFamily::sdxl ? 0.13025 : 0.18215;
  if (!options_.vae.empty()) {
    vae_weights = read_vae(options_.vae);
  } else if (!f.vae_config) {
    throw std::runtime_error(path + ": no VAE in the checkpoint; pass a separate one with the 'vae' option");
  }
  // Build and fill everything before replacing the current model, so a refused file leaves it intact.
  const at::ScalarType dt = options_.dtype;
  auto te = std::make_shared<nn::ClipTextModel>(*f.te_config);
  te->to(dt);
  load_part(*te, f.parts.text_encoder, path, "text_encoder");
  std::shared_ptr<nn::ClipTextModel> te2;
  if (f.te2_config) {
    te2 = std::make_shared<nn::ClipTextModel>(*f.te2_config);
    te2->to(dt);
    load_part(*te2, f.parts.text_encoder_2, path, "text_encoder_2");
  }
  auto unet = std::make_shared<nn::UNet2DConditionModel>(*f.unet_config);
  unet->to(dt);
  load_part(*unet, f.parts.unet, path, "unet");
  auto vae = std::make_shared<nn::AutoencoderKL>(vae_config);
  // The SD VAEs overflow in fp16 (force_upcast); keep them in fp32 then.
  vae->to(dt == at::kHalf && vae_config.force_upcast ? at::kFloat : dt);
  load_part(*vae, vae_weights, options_.vae.empty() ? path : options_.vae, "vae");
  // bf16 convolutions run channels-last on the CPU (nn::Conv2d): store their weights that way once.
  if (dt == at::kBFloat16) {
    nn::convs_to_channels_last(*unet);
    if (vae->parameters().front().scalar_type() == at::kBFloat16) nn::convs_to_channels_last(*vae);
  }
  if (options_.mem_eff_attn)
    for (torch::nn::Module* m : {static_cast<torch::nn::Module*>(unet.get()), static_cast<torch::nn::Module*>(vae.get())})
      for (const auto& sub : m->modules())
        if (auto* a = dynamic_cast<nn::Attention*>(sub.get())) a->chunk_elements = int64_t{1} << 21;
  vae->set_tiling(options_.vae_tiling);
  vae->set_slicing(options_.vae_slicing);
  for (torch::nn::Module* m : {static_cast<torch::nn::Module*>(te.get()), static_cast<torch::nn::Module*>(te2.get()),
                               static_cast<torch::nn::Module*>(unet.get()), static_cast<torch::nn::Module*>(vae.get())})
    if (m)
      for (auto& p : m->parameters()) p.requires_grad_(false);
  const int64_t layers = f.te_config->num_hidden_layers;
  if (options_.clip_skip > layers)
    throw std::invalid_argument("clip_skip " + std::to_string(options_.clip_skip) + " exceeds the text encoder's " +
                                std::to_string(layers) + " layers");

  // Textual Inversion embeddings: each file's vectors become new tokens of fresh tokenizers.
  auto tok1 = new_tokenizer(f.family, 0);
  auto tok2 = f.family == ModelFamily::sdxl ? new_tokenizer(f.family, 1) : nullptr;
  std::vector<AddedToken> tokens;
  for (const auto& file : options_.textual_inversion_embeddings) {
    EmbeddingFile e = read_embedding_file(file, f.family, te->config().hidden_size, te2 ? te2->config().hidden_size : 0);
    const int64_t n = e.rows.size(0);
    const std::string what = "textual inversion embedding " + file;
    check_token_free(*tok1, e.token, n, what);
    if (tok2) check_token_free(*tok2, e.token, n, what);
    AddedToken t;
    t.token = e.token;
    t.ids = tok1->add_embedding_token(e.token, static_cast<int>(n));
    t.rows = e.rows.to(options_.device, dt);  // the encoder computes with these rows as they are
    if (te->add_token_rows(t.rows) != t.ids.front()) throw std::logic_error("added token ids out of step (encoder 1)");
    if (tok2) {
      t.ids2 = tok2->add_embedding_token(e.token, static_cast<int>(n));
      t.rows2 = e.rows2.to(options_.device, dt);
      if (te2->add_token_rows(t.rows2) != t.ids2.front()) throw std::logic_error("added token ids out of step (encoder 2)");
    }
    tokens.push_back(std::move(t));
  }

  // Everything is read on the CPU, then placed where the run computes (host->device).
  if (!options_.device.is_cpu())
    for (torch::nn::Module* m : {static_cast<torch::nn::Module*>(te.get()), static_cast<torch::nn::Module*>(te2.get()),
                                 static_cast<torch::nn::Module*>(unet.get()), static_cast<torch::nn::Module*>(vae.get())})
      if (m) m->to(options_.device);

  if (options_.gradient_checkpointing) {
    unet->set_gradient_checkpointing(true);
    te->set_gradient_checkpointing(true);
    if (te2) te2->set_gradient_checkpointing(true);
  }

  release_module_list();
  te_ = te;
  te2_ = te2;
  unet_ = unet;
  vae_ = vae;
  vae_factor_ = int64_t{1} << (vae_->config().block_out_channels.size() - 1);
  vae_scaling_ = vae_->config().scaling_factor;
  tok1_ = std::move(tok1);
  tok2_ = std::move(tok2);
  tokens_ = std::move(tokens);
  trained_parts_.clear();
  // Only the text encoders' leftovers are written back (nn::to_single_file); copies, not views
  // that would keep the whole file mapped.
  carry_over_.clear();
  const auto prefixes = nn::single_file_prefixes(f.family);
  for (const auto& key : f.parts.unused) {
    const bool te = key.rfind(prefixes.text_encoder, 0) == 0 ||
                    (!prefixes.text_encoder_2.empty() && key.rfind(prefixes.text_encoder_2, 0) == 0);
    auto it = f.original.find(key);
    if (te && it != f.original.end()) carry_over_.emplace(key, it->second.detach().clone());
  }
  prediction_type_ = f.prediction_type;
  scheduler_config_ = f.scheduler_config;
  build_module_list();
}

namespace {

// sdxl_train's --block_lr groups: time/label embedding, conv_in, each down level's layers and
// its downsampler, the middle block's three parts, each up level's layers (its upsampler shares
// the last one's group), and the output layers. Parameters map to a group by the longest
// matching diffusers-name prefix.
nlohmann::json block_lr_layout(const nn::UNetConfig& c) {
  const int64_t levels = static_cast<int64_t>(c.levels()), layers = c.layers_per_block;
  nlohmann::json prefixes = nlohmann::json::array();
  auto add = [&](const std::string& prefix, int64_t block) { prefixes.push_back({prefix, block}); };
  add("time_embedding.", 0);
  add("add_embedding.", 0);
  add("conv_in.", 1);
  int64_t block = 2;
  for (int64_t l = 0; l < levels; ++l) {
    const std::string lvl = "down_blocks." + std::to_string(l) + ".";
    for (int64_t j = 0; j < layers; ++j, ++block) {
      add(lvl + "resnets." + std::to_string(j) + ".", block);
      add(lvl + "attentions." + std::to_string(j) + ".", block);
    }
    if (l + 1 < levels) add(lvl + "downsamplers.0.", block++);
  }
  add("mid_block.resnets.0.", block);
  add("mid_block.attentions.0.", block + 1);
  add("mid_block.resnets.1.", block + 2);
  block += 3;
  for (int64_t l = 0; l < levels; ++l) {
    const std::string lvl = "up_blocks." + std::to_string(l) + ".";
    for (int64_t j = 0; j <= layers; ++j) {
      add(lvl + "resnets." + std::to_string(j) + ".", block + j);
      add(lvl + "attentions." + std::to_string(j) + ".", block + j);
    }
    if (l + 1 < levels) add(lvl + "upsamplers.0.", block + layers);
    block += layers + 1;
  }
  add("conv_norm_out.", block);
  add("conv_out.", block);
  const int64_t down = levels * (layers + 1) - 1, up = levels * (layers + 1);
  nlohmann::json out;
  out["blocks"] = block + 1;
  out["prefixes"] = std::move(prefixes);
  out["description"] = "time/label embedding, input_blocks 0-" + std::to_string(down) + ", middle_block 0-2, output_blocks 0-" +
                       std::to_string(up - 1) + ", out";
  return out;
}

}  // namespace

std::string SdModel::describe() const {
  // The family's and the options' facts first: they need no weights (describe before load).
  const ModelFamily fam = options_.family;
  const bool v = prediction_type() == "v_prediction";
  nlohmann::json j;
  j["family"] = fam == ModelFamily::sdxl ? "sdxl" : fam == ModelFamily::sd2 ? "sd2" : "sd1";
  j["prediction_type"] = prediction_type();
  const int64_t res = fam == ModelFamily::sdxl ? 1024 : (fam == ModelFamily::sd2 && v) ? 768 : 512;
  j["default_resolution"] = {res, res};
  // diffusers' SDXL pipelines encode an empty negative prompt as zeros (force_zeros_for_empty_prompt).
  j["force_zeros_for_empty_prompt"] = fam == ModelFamily::sdxl;
  const bool two_encoders = loaded() ? te2_ != nullptr : fam == ModelFamily::sdxl;
  j["text_encoders"] = two_encoders ? nlohmann::json{"text_encoder", "text_encoder_2"} : nlohmann::json{"text_encoder"};
  // kohya's flags that name this family (as the probe answers them).
  j["kohya_flags"] = fam == ModelFamily::sdxl ? nlohmann::json{"sdxl"}
                     : fam == ModelFamily::sd2 ? nlohmann::json{"v2"}
                                               : nlohmann::json::array();
  // kohya's sai_model_spec architecture names.
  j["modelspec_architecture"] = fam == ModelFamily::sdxl ? "stable-diffusion-xl-v1-base"
                                : fam == ModelFamily::sd2 ? (v ? "stable-diffusion-v2-768-v" : "stable-diffusion-v2-512")
                                                          : "stable-diffusion-v1";
  // kohya's metadata names for this model (ss_base_model_version as its
  // get_model_version_str_for_sd1_sd2 spells it, ss_v2) and the layout its LoRA files have (SGM
  // key names for SDXL, diffusers-derived for SD1/SD2: modelspec.implementation).
  j["kohya_base_model_version"] =
      fam == ModelFamily::sdxl ? std::string("sdxl_base_v1-0")
                               : std::string(fam == ModelFamily::sd2 ? "sd_v2" : "sd_v1") + (v ? "_v" : "");
  j["kohya_v2"] = fam == ModelFamily::sd2;
  // train_db.py trains the text encoder by default; sdxl_train.py only with --train_text_encoder.
  j["kohya_trains_text_encoder"] = fam != ModelFamily::sdxl;
  j["modelspec_lora_implementation"] =
      fam == ModelFamily::sdxl ? "https://github.com/Stability-AI/generative-models" : "diffusers";
  if (fam == ModelFamily::sdxl) {
    // The micro-conditioning `denoise` takes as `added`, one row per image, in this order.
    j["added_conditioning"] = {"original_height", "original_width", "crop_top", "crop_left", "target_height", "target_width"};
    // sdxl_train's text-encoder output cache and --learning_rate_te1/2 apply to this model.
    j["text_encoder_output_cache"] = true;
  }
  if (!loaded()) return j.dump();

  // What the loaded files say.
  j["latent_channels"] = unet_->config().in_channels;
  j["vae_scale_factor"] = vae_factor_;
  j["scaling_factor"] = vae_scaling_factor();
  // For encode_tokens / token_text: the (first) tokenizer's ids. special_token_ids as
  // transformers' all_special_ids (BOS, EOS = UNK, the pad token).
  {
    const ClipTokenizer& t = tokenizer();
    std::vector<int> special{t.bos(), t.eos(), t.pad_id()};
    std::sort(special.begin(), special.end());
    special.erase(std::unique(special.begin(), special.end()), special.end());
    j["tokenizer"] = {{"vocab_size", t.vocab_size()}, {"bos_token_id", t.bos()}, {"eos_token_id", t.eos()},
                      {"special_token_ids", special}};
  }
  if (fam == ModelFamily::sdxl) j["block_lr_layout"] = block_lr_layout(unet_->config());
  nlohmann::json sched = scheduler_config_.empty() ? nlohmann::json::object() : nlohmann::json::parse(scheduler_config_);
  sched["prediction_type"] = prediction_type();  // v_parameterization / the model spec have the last word
  j["scheduler"] = sched;
  return j.dump();
}

std::string SdModel::prediction_type() const {
  if (options_.v_parameterization) return "v_prediction";
  return prediction_type_.empty() ? "epsilon" : prediction_type_;
}

double SdModel::vae_scaling_factor() const { return vae_scaling_; }

nn::AutoencoderKL& SdModel::require_vae(const char* what) const {
  if (!vae_)
    throw std::runtime_error(std::string(what) + ": the VAE was released (release_part \"vae\": every latent was cached); "
                             "a run that encodes, decodes or saves the model keeps it");
  return *vae_;
}

void SdModel::release_part(const std::string& part) {
  if (!loaded()) throw std::logic_error("release_part before load");
  if (part != "vae") throw std::invalid_argument("release_part: unknown part '" + part + "' (this model releases \"vae\")");
  vae_.reset();
}

std::pair<at::Tensor, at::Tensor> SdModel::encode_text(const std::vector<std::string>& prompts) const {
  if (!loaded()) throw std::logic_error("encode_text before load");
  if (options_.prompt_weighting) return encode_weighted(prompts);
  if (options_.family == ModelFamily::sdxl) return encode_ids(ids_tensor(tokenizer(), prompts), ids_tensor(tokenizer2(), prompts));
  return encode_ids(ids_tensor(tokenizer(), prompts));
}

std::pair<at::Tensor, at::Tensor> SdModel::encode_weighted(const std::vector<std::string>& prompts) const {
  if (prompts.empty()) throw std::invalid_argument("encode_text: no prompts");
  prompt::ChunkOptions co;
  co.max_embeddings_multiples = static_cast<int>(options_.max_embeddings_multiples);
  co.no_boseos_middle = options_.no_boseos_middle;
  const bool xl = options_.family == ModelFamily::sdxl;
  FramedBatch f1 = frame_batch(tokenizer(), prompts, co, options_.warn);
  // SDXL's second tokenizer pads with "!"; its ids differ only in padding, so warn once.
  FramedBatch f2 = xl ? frame_batch(tokenizer2(), prompts, co, {}) : FramedBatch{};
  if (xl && f2.chunks != f1.chunks) throw std::logic_error("SDXL tokenizers framed different chunk counts");

  // Each 77-token chunk through the encoder(s) as a plain prompt (clip_skip applies), then the
  // chunks side by side; with no_boseos_middle the inner BOS/EOS positions are dropped.
  constexpr int64_t L = ClipTokenizer::kModelMaxLength;
  std::vector<at::Tensor> parts;
  at::Tensor pooled;
  for (int64_t c = 0; c < f1.chunks; ++c) {
    auto [h, p] = encode_ids(f1.ids.narrow(1, c * L, L), xl ? f2.ids.narrow(1, c * L, L) : at::Tensor());
    if (c == 0) pooled = p;
    if (f1.chunks > 1 && options_.no_boseos_middle) {
      const int64_t from = c == 0 ? 0 : 1;
      const int64_t to = c == f1.chunks - 1 ? L : L - 1;
      h = h.narrow(1, from, to - from);
    }
    parts.push_back(h);
  }
  at::Tensor cond = parts.size() == 1 ? parts.front() : at::cat(parts, 1);
  if (!xl) return {apply_prompt_weights(cond, f1.weights), pooled};
  // gen_img weights each encoder's output on its own before concatenating them.
  const int64_t c1 = te_->config().hidden_size;
  at::Tensor a = apply_prompt_weights(cond.narrow(-1, 0, c1), f1.weights);
  at::Tensor b = apply_prompt_weights(cond.narrow(-1, c1, cond.size(-1) - c1), f2.weights);
  return {at::cat({a, b}, -1), pooled};
}

std::pair<at::Tensor, at::Tensor> SdModel::encode_ids(const at::Tensor& ids, const at::Tensor& ids2) const {
  if (!loaded()) throw std::logic_error("encode_ids before load");
  if (options_.family == ModelFamily::sdxl) {
    if (!ids2.defined()) throw std::invalid_argument("SDXL conditioning needs the second tokenizer's ids too");
    // Both encoders' penultimate layers (no final norm), concatenated; pooled = te2's projection.
    auto a = te_->forward(ids.to(options_.device, at::kLong));
    auto b = te2_->forward(ids2.to(options_.device, at::kLong));
    const auto& ha = a.hidden_states[a.hidden_states.size() - 2];
    const auto& hb = b.hidden_states[b.hidden_states.size() - 2];
    return {at::cat({ha, hb.to(ha.scalar_type())}, -1), b.text_embeds};
  }
  auto out = te_->forward(ids.to(options_.device, at::kLong));
  if (options_.clip_skip == 1) return {out.last_hidden_state, at::Tensor()};
  const auto& h = out.hidden_states[out.hidden_states.size() - static_cast<size_t>(options_.clip_skip)];
  return {te_->final_layer_norm(h), at::Tensor()};
}

at::Tensor SdModel::encode_token_ids(const at::Tensor& ids) const {
  if (!loaded()) throw std::logic_error("encode_tokens before load");
  if (ids.dim() != 2 || ids.size(0) < 1 || ids.size(1) < 1 || ids.size(1) > ClipTokenizer::kModelMaxLength)
    throw std::invalid_argument("encode_tokens: expected token ids [batch, 1.." + std::to_string(ClipTokenizer::kModelMaxLength) +
                                "], got " + std::to_string(ids.dim()) + " dimensions");
  const at::Tensor ids_long = ids.to(options_.device, at::kLong);
  const int64_t lo = ids_long.min().item<int64_t>(), hi = ids_long.max().item<int64_t>();
  const auto n = static_cast<int64_t>(tokenizer().size());
  if (lo < 0 || hi >= n)
    throw std::invalid_argument("encode_tokens: token id " + std::to_string(lo < 0 ? lo : hi) + " is outside the vocabulary (0.." +
                                std::to_string(n - 1) + ")");
  // SDXL's tokenizers share their ids; only their padding differs, and nothing is padded here.
  return encode_ids(ids_long, options_.family == ModelFamily::sdxl ? ids_long : at::Tensor()).first;
}

namespace {
// UTF-8 with each maximal invalid subsequence replaced by U+FFFD (Python's errors="replace").
std::string utf8_replace_invalid(const std::string& s) {
  std::string out;
  const auto* p = reinterpret_cast<const unsigned char*>(s.data());
  const std::size_t n = s.size();
  for (std::size_t i = 0; i < n;) {
    const unsigned c = p[i];
    std::size_t len = c < 0x80 ? 1 : (c >= 0xC2 && c <= 0xDF) ? 2 : (c >= 0xE0 && c <= 0xEF) ? 3 : (c >= 0xF0 && c <= 0xF4) ? 4 : 0;
    std::size_t ok = len == 0 ? 0 : 1;  // bytes of a valid prefix
    for (; ok < len && i + ok < n; ++ok) {
      const unsigned b = p[i + ok];
      unsigned lo = 0x80, hi = 0xBF;  // the second byte's narrower ranges
      if (ok == 1 && c == 0xE0) lo = 0xA0;
      if (ok == 1 && c == 0xED) hi = 0x9F;
      if (ok == 1 && c == 0xF0) lo = 0x90;
      if (ok == 1 && c == 0xF4) hi = 0x8F;
      if (b < lo || b > hi) break;
    }
    if (len != 0 && ok == len) {
      out.append(s, i, len);
      i += len;
    } else {
      out += "\xEF\xBF\xBD";
      i += ok == 0 ? 1 : ok;
    }
  }
  return out;
}
// Python's str.strip(): the white space it removes, at both ends.
std::string strip_unicode_space(const std::string& s) {
  static const char* const spaces[] = {" ", "\t", "\n", "\v", "\f", "\r", "\x1c", "\x1d", "\x1e", "\x1f",
                                       "\xC2\x85", "\xC2\xA0", "\xE1\x9A\x80", "\xE2\x80\xA8", "\xE2\x80\xA9",
                                       "\xE2\x80\xAF", "\xE2\x81\x9F", "\xE3\x80\x80"};
  auto space_at = [&](std::size_t i, bool from_end) -> std::size_t {
    for (const char* sp : spaces) {
      const std::size_t l = std::char_traits<char>::length(sp);
      if (from_end ? (i >= l && s.compare(i - l, l, sp) == 0) : s.compare(i, l, sp) == 0) return l;
    }
    // U+2000..U+200A
    if (!from_end && i + 3 <= s.size() && s.compare(i, 2, "\xE2\x80") == 0 && static_cast<unsigned char>(s[i + 2]) <= 0x8A) return 3;
    if (from_end && i >= 3 && s.compare(i - 3, 2, "\xE2\x80") == 0 && static_cast<unsigned char>(s[i - 1]) <= 0x8A) return 3;
    return 0;
  };
  std::size_t b = 0, e = s.size();
  while (b < e) {
    const std::size_t l = space_at(b, false);
    if (l == 0) break;
    b += l;
  }
  while (e > b) {
    const std::size_t l = space_at(e, true);
    if (l == 0) break;
    e -= l;
  }
  return s.substr(b, e - b);
}
}  // namespace

std::string SdModel::token_text(int64_t id) const {
  const ClipTokenizer& t = tokenizer();
  if (id < 0 || id >= static_cast<int64_t>(t.vocab_size()))
    throw std::invalid_argument("token_text: id " + std::to_string(id) + " is outside the vocabulary (0.." +
                                std::to_string(t.vocab_size() - 1) + ")");
  return strip_unicode_space(utf8_replace_invalid(t.decode({static_cast<int>(id)}, false)));
}

at::Tensor SdModel::denoise(const at::Tensor& latents, const at::Tensor& timesteps, const at::Tensor& cond,
                            const at::Tensor& pooled, const at::Tensor& added) const {
  if (!loaded()) throw std::logic_error("denoise before load");
  const at::ScalarType dt = options_.dtype;
  at::Tensor out;
  if (options_.family == ModelFamily::sdxl) {
    if (!pooled.defined() || !added.defined())
      throw std::invalid_argument("SDXL denoise needs the pooled text embedding [B, P] and the size/crop time ids [B, 6]");
    nn::AddedConditioning ac{pooled.to(dt), added.to(dt)};
    out = unet_->forward(latents.to(dt), timesteps, cond.to(dt), &ac);
  } else {
    out = unet_->forward(latents.to(dt), timesteps, cond.to(dt));
  }
  return out.to(latents.scalar_type());
}

at::Tensor SdModel::vae_encode(const at::Tensor& images, bool sample) const {
  if (!loaded()) throw std::logic_error("vae_encode before load");
  nn::AutoencoderKL& vae = require_vae("vae_encode");
  const at::ScalarType dt = vae.parameters().front().scalar_type();
  auto dist = vae.encode(images.to(dt));
  at::Tensor z = sample ? dist.sample() : dist.mean;
  return (z * vae_scaling_factor()).to(images.scalar_type());
}

at::Tensor SdModel::vae_decode(const at::Tensor& latents) const {
  if (!loaded()) throw std::logic_error("vae_decode before load");
  nn::AutoencoderKL& vae = require_vae("vae_decode");
  const at::ScalarType dt = vae.parameters().front().scalar_type();
  return vae.decode((latents / vae_scaling_factor()).to(dt)).to(latents.scalar_type());
}

void SdModel::build_module_list() {
  auto add = [&](torch::nn::Module& root, int32_t role, const std::string& prefix) {
    for (const auto& item : root.named_modules("", /*include_self=*/false)) {
      const std::string& path = item.key();
      Layer layer;
      layer.linear = dynamic_cast<nn::Linear*>(item.value().get());
      layer.conv = layer.linear ? nullptr : dynamic_cast<nn::Conv2d*>(item.value().get());
      if (!layer.linear && !layer.conv) continue;
      std::string name = path;
      if (role == SUMI_ROLE_UNET && options_.family == ModelFamily::sdxl) {
        // sd-scripts names SDXL's UNet modules by the original SGM layout.
        auto orig = nn::unet_key_to_original(path + ".weight", unet_->config());
        if (!orig) throw std::logic_error("no SGM name for UNet module " + path);
        name = orig->substr(0, orig->size() - 7);
      }
      name = prefix + name;
      std::replace(name.begin(), name.end(), '.', '_');
      const at::Tensor& w = layer.weight();
      sumi_module_info m{};
      m.struct_size = sizeof(sumi_module_info);
      m.kind = layer.linear ? SUMI_MODULE_LINEAR : SUMI_MODULE_CONV2D;
      m.role = role;
      m.out_features = w.size(0);
      m.in_features = w.size(1);
      m.kernel[0] = layer.conv ? w.size(2) : 1;
      m.kernel[1] = layer.conv ? w.size(3) : 1;
      m.stride[0] = m.stride[1] = layer.conv ? layer.conv->stride : 1;
      m.padding[0] = m.padding[1] = layer.conv ? layer.conv->padding : 0;
      // kohya's LierLa set: children of Transformer2DModel (UNet) and CLIPAttention / CLIPMLP.
      m.in_transformer = role == SUMI_ROLE_UNET ? contains(path, "attentions.")
                                                : (contains(path, ".self_attn.") || contains(path, ".mlp."));
      m.weight = api().native_wrap(&w);
      m.bias = layer.bias().defined() ? api().native_wrap(&layer.bias()) : nullptr;
      names_.push_back(name);
      m.name = names_.back().c_str();
      layers_.push_back(layer);
      infos_.push_back(m);
    }
  };
  if (options_.family == ModelFamily::sdxl) {
    add(*te_, SUMI_ROLE_TEXT_ENCODER, "lora_te1.");
    add(*te2_, SUMI_ROLE_TEXT_ENCODER_2, "lora_te2.");
  } else {
    add(*te_, SUMI_ROLE_TEXT_ENCODER, "lora_te.");
  }
  add(*unet_, SUMI_ROLE_UNET, "lora_unet.");
}

void SdModel::refresh_module_weights() {
  for (size_t i = 0; i < layers_.size(); ++i) {
    api().tensor_release(infos_[i].weight);
    infos_[i].weight = api().native_wrap(&layers_[i].weight());
    if (infos_[i].bias) api().tensor_release(infos_[i].bias);
    infos_[i].bias = layers_[i].bias().defined() ? api().native_wrap(&layers_[i].bias()) : nullptr;
  }
}

void SdModel::release_module_list() {
  for (auto& l : layers_) {
    if (l.linear) l.linear->adapter = nullptr;
    if (l.conv) l.conv->adapter = nullptr;
  }
  for (auto& m : infos_) {
    api().tensor_release(m.weight);
    if (m.bias) api().tensor_release(m.bias);
  }
  infos_.clear();
  layers_.clear();
  names_.clear();
}

void SdModel::set_network(void* self, const sumi_network_vtable* vt, const int32_t* selected) {
  if (!loaded()) throw std::logic_error("set_network before load");
  if (vt && !selected) throw std::invalid_argument("set_network: 'selected' is required with a network");
  for (size_t i = 0; i < layers_.size(); ++i) {
    nn::LayerAdapter adapter;
    if (vt && selected[i]) {
      const int64_t index = static_cast<int64_t>(i);
      std::string name = infos_[i].name;
      adapter = [self, vt, index, name](const at::Tensor& x, const at::Tensor& y) {
        sumi_tensor hx = api().native_wrap(&x), hy = api().native_wrap(&y), out = nullptr;
        const sumi_status st = vt->forward(self, index, hx, hy, &out);
        api().tensor_release(hx);
        api().tensor_release(hy);
        if (st != SUMI_OK) throw std::runtime_error(network_error("forward", name));
        at::Tensor r = *static_cast<const at::Tensor*>(api().native_tensor(out));
        api().tensor_release(out);
        return r;
      };
    }
    if (layers_[i].linear) layers_[i].linear->adapter = adapter;
    else layers_[i].conv->adapter = adapter;
  }
}

void SdModel::merge_network(void* self, const sumi_network_vtable* vt, const int32_t* selected) {
  if (!loaded()) throw std::logic_error("merge_network before load");
  if (!vt || !selected) throw std::invalid_argument("merge_network needs a network and its selection");
  at::NoGradGuard no_grad;
  for (size_t i = 0; i < layers_.size(); ++i) {
    if (!selected[i]) continue;
    sumi_tensor d = nullptr;
    if (vt->weight_delta(self, static_cast<int64_t>(i), &d) != SUMI_OK)
      throw std::runtime_error(network_error("weight_delta", infos_[i].name));
    at::Tensor delta = *static_cast<const at::Tensor*>(api().native_tensor(d));
    api().tensor_release(d);
    at::Tensor& w = layers_[i].weight();
    if (!delta.sizes().equals(w.sizes()))
      throw std::runtime_error(std::string("network weight_delta for '") + infos_[i].name + "' has the wrong shape");
    w.add_(delta.to(w.device(), w.scalar_type()));
    // ABI 1.3: a network that changes the bias too (output scaling) gives its delta.
    if (!SUMI_HAS_FIELD(vt, sumi_network_vtable, bias_delta) || !vt->bias_delta) continue;
    sumi_tensor bd = nullptr;
    if (vt->bias_delta(self, static_cast<int64_t>(i), &bd) != SUMI_OK)
      throw std::runtime_error(network_error("bias_delta", infos_[i].name));
    if (!bd) continue;
    at::Tensor bdelta = *static_cast<const at::Tensor*>(api().native_tensor(bd));
    api().tensor_release(bd);
    at::Tensor& b = layers_[i].bias();
    if (!b.defined())
      throw std::runtime_error(std::string("network bias_delta for '") + infos_[i].name + "', a layer without a bias");
    if (!bdelta.sizes().equals(b.sizes()))
      throw std::runtime_error(std::string("network bias_delta for '") + infos_[i].name + "' has the wrong shape");
    b.add_(bdelta.to(b.device(), b.scalar_type()));
  }
}

// ----------------------------------------------------------------------------- training ----

void SdModel::train_part(const std::string& part, const ParamFactory& make) {
  if (!loaded()) throw std::logic_error("train_part before load");
  torch::nn::Module* m = nullptr;
  if (part == "unet") m = unet_.get();
  else if (part == "text_encoder") m = te_.get();
  else if (part == "text_encoder_2") m = te2_.get();
  if (!m) {
    throw std::invalid_argument("train_part: unknown part '" + part + "'; this " + family_title(options_.family) +
                                " model has " +
                                (options_.family == ModelFamily::sdxl ? "unet, text_encoder, text_encoder_2"
                                                                       : "unet, text_encoder (no text_encoder_2)") +
                                " (the VAE is not trained)");
  }
  if (std::find(trained_parts_.begin(), trained_parts_.end(), part) != trained_parts_.end())
    throw std::invalid_argument("train_part: '" + part + "' is trainable already");
  nn::replace_parameters(*m, [&](const std::string& name, const at::Tensor& current) {
    at::Tensor t = make(part + "." + name, current.detach(), part);
    if (!t.requires_grad())
      throw std::runtime_error("train_part: the registered '" + part + "." + name + "' does not require grad");
    return t;
  });
  trained_parts_.push_back(part);
  refresh_module_weights();
}

void SdModel::add_token(const std::string& token, const std::string& init_word, int64_t num_vectors,
                        const ParamFactory& make) {
  if (!loaded()) throw std::logic_error("add_token before load");
  if (num_vectors < 1 || num_vectors > 75)
    throw std::invalid_argument("add_token '" + token + "': num_vectors_per_token must be 1..75, got " +
                                std::to_string(num_vectors));
  const bool xl = options_.family == ModelFamily::sdxl;
  const std::string what = "add_token";
  check_token_free(*tok1_, token, num_vectors, what);
  if (xl) check_token_free(*tok2_, token, num_vectors, what);
  // kohya: the init word's token embeddings, repeated (or cut) to num_vectors; per encoder, as
  // each tokenizer encodes the word.
  auto initial = [&](const nn::ClipTextModel& te, const ClipTokenizer& tok) {
    at::NoGradGuard no_grad;
    const at::Tensor& w = te.token_embedding();
    if (init_word.empty()) return at::randn({num_vectors, w.size(1)}, at::kFloat) * 0.02;
    const std::vector<int> ids = tok.encode(init_word);
    if (ids.empty()) throw std::invalid_argument("add_token '" + token + "': init_word '" + init_word + "' has no tokens");
    if (ids.size() > 1 && static_cast<int64_t>(ids.size()) != num_vectors && options_.warn)
      options_.warn("init_word '" + init_word + "' is " + std::to_string(ids.size()) + " tokens but num_vectors_per_token is " +
                    std::to_string(num_vectors) + "; its embeddings are repeated or cut");
    std::vector<int64_t> pick;
    for (int64_t i = 0; i < num_vectors; ++i) pick.push_back(ids[static_cast<size_t>(i) % ids.size()]);
    const at::Tensor index = at::tensor(pick, at::kLong);
    const int64_t vocab = w.size(0);
    if (index.max().item<int64_t>() >= vocab)
      throw std::invalid_argument("add_token '" + token + "': init_word '" + init_word + "' uses an added token");
    return w.index_select(0, index.to(w.device())).to(at::kFloat).clone();
  };
  const std::string prefix = "ti." + token + ".";
  AddedToken t;
  t.token = token;
  t.rows = make(prefix + (xl ? "clip_l" : "emb_params"), initial(*te_, *tok1_), "textual_inversion");
  if (xl) t.rows2 = make(prefix + "clip_g", initial(*te2_, *tok2_), "textual_inversion");
  t.ids = tok1_->add_embedding_token(token, static_cast<int>(num_vectors));
  if (te_->add_token_rows(t.rows) != t.ids.front()) throw std::logic_error("added token ids out of step (encoder 1)");
  if (xl) {
    t.ids2 = tok2_->add_embedding_token(token, static_cast<int>(num_vectors));
    if (te2_->add_token_rows(t.rows2) != t.ids2.front()) throw std::logic_error("added token ids out of step (encoder 2)");
  }
  tokens_.push_back(std::move(t));
}

std::vector<int> SdModel::token_ids(const std::string& token, int encoder) const {
  for (const auto& t : tokens_)
    if (t.token == token) return encoder == 0 ? t.ids : t.ids2;
  return {};
}

void SdModel::save_token(const std::string& token, const std::string& path, std::optional<at::ScalarType> dtype,
                         bool overwrite) const {
  for (const auto& t : tokens_)
    if (t.token == token) return write_embedding_file(path, options_.family, t.rows, t.rows2, dtype, overwrite);
  std::string known;
  for (const auto& t : tokens_) known += (known.empty() ? "" : ", ") + t.token;
  throw std::invalid_argument("save_token: the model has no added token '" + token + "' (added: " +
                              (known.empty() ? "none" : known) + ")");
}

void SdModel::load_token(const std::string& token, const std::string& path) {
  AddedToken* t = nullptr;
  for (auto& a : tokens_)
    if (a.token == token) t = &a;
  if (!t) throw std::invalid_argument("load_token: the model has no added token '" + token + "' (add_token first)");
  const bool xl = options_.family == ModelFamily::sdxl;
  const EmbeddingFile e = read_embedding_file(path, options_.family, t->rows.size(1), xl ? t->rows2.size(1) : 0);
  auto copy = [&](at::Tensor& dst, const at::Tensor& src, const char* what) {
    if (src.size(0) != dst.size(0))
      throw std::invalid_argument(path + ": " + what + " holds " + std::to_string(src.size(0)) + " vectors, the token '" +
                                  token + "' has " + std::to_string(dst.size(0)) + " (num_vectors_per_token): make them equal");
    at::NoGradGuard no_grad;
    dst.copy_(src.to(dst.scalar_type()));
  };
  copy(t->rows, e.rows, xl ? "clip_l" : "the embedding");
  if (xl) copy(t->rows2, e.rows2, "clip_g");
}

void SdModel::save(const std::string& path, std::optional<at::ScalarType> dtype, bool overwrite) const {
  if (!loaded()) throw std::logic_error("save before load");
  ModelFiles m;
  m.family = options_.family;
  m.path = path;
  m.unet_config = unet_->config();
  m.vae_config = require_vae("save").config();
  m.te_config = te_->config();
  if (te2_) m.te2_config = te2_->config();
  m.prediction_type = prediction_type();
  auto weights = [&](const torch::nn::Module& module) {
    nn::TensorMap out;
    at::NoGradGuard no_grad;
    for (const auto& [k, t] : nn::named_tensors(module)) {
      at::Tensor v = t.detach().to(at::kCPU);
      if (dtype && at::isFloatingType(v.scalar_type())) v = v.to(*dtype);
      out.emplace(k, v.contiguous());
    }
    return out;
  };
  m.parts.family = m.family;
  m.parts.unet = weights(*unet_);
  m.parts.vae = weights(require_vae("save"));
  m.parts.text_encoder = weights(*te_);
  if (te2_) m.parts.text_encoder_2 = weights(*te2_);
  for (const auto& [k, t] : carry_over_) {
    at::Tensor v = t;
    if (dtype && at::isFloatingType(v.scalar_type())) v = v.to(*dtype);
    m.carry_over.emplace(k, v.contiguous());
  }
  write_model(m, path, overwrite);
}

}  // namespace sumi::sd
