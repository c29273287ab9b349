// One loaded SD 1.x / 2.x / XL model (text encoder(s), UNet, VAE) with what the plugin ABI asks
// of a model: conditioning from prompts, the denoiser, the scaled VAE, the adaptable layers under
// kohya's names, and adapter networks applied at run time or merged into the weights.
// The sd1/sd2/sdxl components of the sumi_sd plugin wrap this class; it is a C++ API for code
// linked into the same library (and for tests), not part of the ABI.
#pragma once

#include <sumi/sumi.h>

#include <ATen/ATen.h>

#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "nn/detect.h"

namespace sumi::nn {
class ClipTextModel;
class UNet2DConditionModel;
class AutoencoderKL;
struct Linear;
struct Conv2d;
}  // namespace sumi::nn

namespace sumi::sd {

class ClipTokenizer;

struct ModelOptions {
  nn::ModelFamily family = nn::ModelFamily::sd1;
  at::ScalarType dtype = at::kFloat;  // of the text encoders and UNet (the VAE stays fp32 for fp16)
  at::Device device{at::kCPU};         // where the model computes (host->device); weights are read on the CPU
  std::string vae;                    // a separate VAE to use instead of the checkpoint's
  bool v_parameterization = false;
  int64_t clip_skip = 1;              // 1 = last layer; n = n-th from last + final layer norm
  // gen_img's long, weighted prompts: "(word:1.3)" emphasis and up to max_embeddings_multiples
  // chunks of 75 tokens (docs/prompts.md). Off: the plain 77-token encoding training uses.
  bool prompt_weighting = false;
  int64_t max_embeddings_multiples = 3;
  bool no_boseos_middle = false;      // drop the inner chunks' BOS/EOS embeddings
  // Textual Inversion embedding files loaded with the model (gen_img's
  // --textual_inversion_embeddings): each file's stem becomes a token of its vectors.
  std::vector<std::string> textual_inversion_embeddings;
  // Recompute the UNet's and text encoders' block activations in backward (training memory).
  bool gradient_checkpointing = false;
  // VAE on large images: tiles with blended overlaps (diffusers' enable_tiling), and one image
  // of a batch at a time (enable_slicing).
  bool vae_tiling = false;
  bool vae_slicing = false;
  // Memory-efficient attention (kohya's --mem_eff_attn / --xformers / --sdpa): score matrices
  // in query chunks of at most 2M elements instead of 32M. The same numbers, less peak memory.
  bool mem_eff_attn = false;
  std::function<void(const std::string&)> warn;  // receives "prompt truncated" warnings
};

class SdModel {
 public:
  explicit SdModel(ModelOptions options);
  ~SdModel();
  SdModel(const SdModel&) = delete;
  SdModel& operator=(const SdModel&) = delete;

  // Single file (.safetensors mmapped, .ckpt/.pt through the restricted unpickler) or diffusers
  // folder. Throws std::runtime_error naming the file, tensor or family on refusal.
  void load(const std::string& path);
  bool loaded() const { return unet_ != nullptr; }
  nn::ModelFamily family() const { return options_.family; }
  // "epsilon" or "v_prediction": v_parameterization, else the folder's scheduler config.
  std::string prediction_type() const;

  // Conditioning {cond [B, L, C], pooled [B, P] (SDXL) or undefined}. Plain: L = 77, prompts
  // truncated to 75 tokens, no emphasis syntax. With prompt_weighting: emphasis applied and
  // L = 77 * chunks (75 * chunks + 2 with no_boseos_middle), one chunk count for all the
  // prompts of the call; SDXL's pooled comes from the first chunk.
  std::pair<at::Tensor, at::Tensor> encode_text(const std::vector<std::string>& prompts) const;
  // The same from token ids [B, L] (already framed with BOS/EOS/padding); `ids2` for SDXL's
  // second encoder (padded with "!"). For long-prompt chunking by the caller.
  std::pair<at::Tensor, at::Tensor> encode_ids(const at::Tensor& ids, const at::Tensor& ids2 = {}) const;
  // The conditioning of raw token ids [B, T] (T <= 77, used as given: no framing), as
  // encode_ids computes it; SDXL's second encoder gets the same ids. Throws
  // std::invalid_argument on a bad shape or an id outside the vocabulary (added tokens included).
  at::Tensor encode_token_ids(const at::Tensor& ids) const;
  // The text of a vocabulary token as transformers' convert_tokens_to_string gives it (bytes as
  // UTF-8 with U+FFFD for invalid sequences, "</w>" a space, white space trimmed).
  std::string token_text(int64_t id) const;

  // UNet output; SDXL needs `pooled` [B, P] and `added` time ids [B, 6].
  at::Tensor denoise(const at::Tensor& latents, const at::Tensor& timesteps, const at::Tensor& cond,
                     const at::Tensor& pooled, const at::Tensor& added) const;
  // Images in [-1, 1] -> scaled latents (posterior mean, or a draw), and scaled latents -> images.
  at::Tensor vae_encode(const at::Tensor& images, bool sample) const;
  at::Tensor vae_decode(const at::Tensor& latents) const;
  double vae_scaling_factor() const;
  // What the host needs to know of the model (the ABI 1.2 describe slot): family, prediction
  // type, default resolution, text encoders, kohya's names for it (flags, metadata, SAI model
  // spec architecture); once loaded also the latent layout, tokenizer, block layout and the
  // scheduler config to sample with. Before load it answers what the family and the options
  // (v_parameterization) say, for tools that write metadata without weights. A JSON object as text.
  std::string describe() const;

  // Every Linear / Conv2d of the UNet and text encoder(s) (not the VAE), kohya-named.
  const std::vector<sumi_module_info>& modules() const { return infos_; }

  // Runtime application: each selected module's output goes through network->forward. A null
  // network detaches every module.
  void set_network(void* network_self, const sumi_network_vtable* network, const int32_t* selected);
  // Adds each selected module's network->weight_delta into its weight (in place, permanent).
  void merge_network(void* network_self, const sumi_network_vtable* network, const int32_t* selected);

  // ---- training the model itself (the ABI 1.1 model slots)
  // Registers a tensor as a trainable parameter and returns the tensor to compute with (the
  // plugin: host->param_create in the component's context).
  using ParamFactory =
      std::function<at::Tensor(const std::string& name, const at::Tensor& init, const std::string& group)>;
  // Every weight of "unet", "text_encoder" or "text_encoder_2" through `make` (name
  // "<part>.<diffusers name>", group = part); the model then computes with what it returned.
  void train_part(const std::string& part, const ParamFactory& make);
  // Textual Inversion: `token` (+ token1 ...) as num_vectors new tokens whose rows are new fp32
  // parameters "ti.<token>.emb_params" (SD1/SD2) or "ti.<token>.clip_l" / ".clip_g" (SDXL),
  // group "textual_inversion", initialised from init_word's token embeddings (repeated or cut
  // to num_vectors, as kohya does) or N(0, 0.02) when init_word is empty.
  void add_token(const std::string& token, const std::string& init_word, int64_t num_vectors, const ParamFactory& make);
  // A token's vectors (added by add_token or loaded from an embedding file) as a kohya/A1111
  // .safetensors embedding file.
  void save_token(const std::string& token, const std::string& path, std::optional<at::ScalarType> dtype,
                  bool overwrite) const;
  // The vectors of a token added by add_token from an embedding file (read_embedding_file's
  // formats); the file must hold as many vectors as the token has.
  void load_token(const std::string& token, const std::string& path);
  // The model's weights (current values, added tokens left out) as a single original-layout
  // file (.safetensors) or a diffusers folder; `dtype` converts floating-point weights.
  void save(const std::string& path, std::optional<at::ScalarType> dtype, bool overwrite) const;
  // The token's ids in the first / second tokenizer (empty when unknown), for tests and logs.
  std::vector<int> token_ids(const std::string& token, int encoder = 0) const;

  nn::ClipTextModel& text_encoder() const { return *te_; }
  nn::ClipTextModel* text_encoder_2() const { return te2_.get(); }
  nn::UNet2DConditionModel& unet() const { return *unet_; }
  nn::AutoencoderKL& vae() const { return require_vae("vae"); }
  // Frees a part the run no longer needs (the ABI 1.4 release_part slot): "vae". Later VAE use
  // and save throw naming it; describe keeps answering.
  void release_part(const std::string& part);

 private:
  struct Layer {
    nn::Linear* linear = nullptr;
    nn::Conv2d* conv = nullptr;
    at::Tensor& weight() const;
    at::Tensor& bias() const;  // undefined when the layer has none
  };
  // One token of added vectors: ids and rows per text encoder.
  struct AddedToken {
    std::string token;
    std::vector<int> ids, ids2;
    at::Tensor rows, rows2;
  };
  std::pair<at::Tensor, at::Tensor> encode_weighted(const std::vector<std::string>& prompts) const;
  const ClipTokenizer& tokenizer() const { return *tok1_; }
  const ClipTokenizer& tokenizer2() const { return *tok2_; }
  void refresh_module_weights();
  void build_module_list();
  void release_module_list();
  nn::AutoencoderKL& require_vae(const char* what) const;

  ModelOptions options_;
  // The VAE's geometry, kept for describe after release_part("vae").
  int64_t vae_factor_ = 8;
  double vae_scaling_ = 0;
  std::string prediction_type_;
  std::string scheduler_config_;  // JSON text (ModelFiles::scheduler_config)
  std::shared_ptr<nn::ClipTextModel> te_, te2_;
  std::shared_ptr<nn::UNet2DConditionModel> unet_;
  std::shared_ptr<nn::AutoencoderKL> vae_;
  std::deque<std::string> names_;
  std::vector<Layer> layers_;
  std::vector<sumi_module_info> infos_;
  // Per-model tokenizers (pad per family): they carry the model's added tokens.
  std::unique_ptr<ClipTokenizer> tok1_, tok2_;
  std::vector<AddedToken> tokens_;
  std::vector<std::string> trained_parts_;
  // The loaded single file's tensors that the modules have no place for (OpenCLIP's logit_scale,
  // SD2's unused last block and text_projection), under their original names: save() writes them
  // back instead of placeholders, as kohya's SDXL save keeps the checkpoint's logit_scale.
  std::map<std::string, at::Tensor> carry_over_;
};

// sd-scripts' emphasis on embeddings [B, L, C] with weights [B, L]: each position scaled by its
// weight, then each prompt rescaled so its mean over positions and channels (computed in fp32)
// is what it was; a prompt whose weighted mean is exactly 0 is not rescaled (no NaN/inf).
// Used by encode_text with prompt_weighting.
at::Tensor apply_prompt_weights(const at::Tensor& embeddings, const at::Tensor& weights);

}  // namespace sumi::sd
