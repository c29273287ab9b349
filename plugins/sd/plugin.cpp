// The sumi_sd plugin: model components sd1, sd2 and sdxl (native tier), each an SdModel that
// accepts only checkpoints of its own family.
#include <sumi/native.hpp>

#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include "model_files.h"
#include "sd_model.h"

namespace {

using sumi::Tensor;
using sumi::native::unwrap;
using sumi::native::wrap;
using sumi::nn::ModelFamily;

at::ScalarType dtype_from(const std::string& s) {
  if (s == "fp32" || s == "float32") return at::kFloat;
  if (s == "fp16" || s == "float16") return at::kHalf;
  if (s == "bf16" || s == "bfloat16") return at::kBFloat16;
  throw sumi::Error(SUMI_ERR_INVALID_ARGUMENT, "dtype '" + s + "' is not one of fp32, fp16, bf16");
}

// A save dtype (DLPack code + bits) as the float type it names.
std::optional<at::ScalarType> float_type(const std::optional<sumi_dtype>& d) {
  if (!d) return std::nullopt;
  if (d->code == SUMI_DTYPE_CODE_FLOAT && d->bits == 32) return at::kFloat;
  if (d->code == SUMI_DTYPE_CODE_FLOAT && d->bits == 16) return at::kHalf;
  if (d->code == SUMI_DTYPE_CODE_BFLOAT && d->bits == 16) return at::kBFloat16;
  throw sumi::Error(SUMI_ERR_INVALID_ARGUMENT, "save dtype (code " + std::to_string(d->code) + ", " +
                                                   std::to_string(d->bits) + " bits) is not fp32, fp16 or bf16");
}

// "a.safetensors, b.pt" -> the files; empty entries are skipped.
std::vector<std::string> file_list(const std::string& s) {
  std::vector<std::string> out;
  size_t start = 0;
  while (start <= s.size()) {
    size_t end = s.find(',', start);
    if (end == std::string::npos) end = s.size();
    std::string item = s.substr(start, end - start);
    const auto b = item.find_first_not_of(" \t");
    const auto e = item.find_last_not_of(" \t");
    if (b != std::string::npos) out.push_back(item.substr(b, e - b + 1));
    start = end + 1;
  }
  return out;
}

at::Tensor optional(const Tensor& t) { return t.get() ? unwrap(t) : at::Tensor(); }
Tensor wrap_optional(const at::Tensor& t) { return t.defined() ? wrap(t) : Tensor(); }

template <ModelFamily F>
class SdComponent : public sumi::Model {
 public:
  explicit SdComponent(sumi::Context& ctx) : ctx_(ctx.get()), model_(options(ctx)) {}

  void load(const std::string& path) override { model_.load(path); }
  const std::vector<sumi_module_info>& modules() override {
    if (!model_.loaded()) throw sumi::Error(SUMI_ERR_INVALID_ARGUMENT, "modules: load the model first");
    return model_.modules();
  }
  std::pair<Tensor, Tensor> encode_text(const std::vector<std::string>& prompts) override {
    auto r = model_.encode_text(prompts);
    return {wrap(r.first), wrap_optional(r.second)};
  }
  Tensor denoise(const Tensor& latents, const Tensor& timesteps, const Tensor& cond, const Tensor& pooled,
                 const Tensor& added) override {
    return wrap(model_.denoise(unwrap(latents), unwrap(timesteps), unwrap(cond), optional(pooled), optional(added)));
  }
  Tensor vae_encode(const Tensor& images, bool sample) override { return wrap(model_.vae_encode(unwrap(images), sample)); }
  Tensor vae_decode(const Tensor& latents) override { return wrap(model_.vae_decode(unwrap(latents))); }
  void release_part(const std::string& part) override {
    if (part != "vae")
      throw sumi::Error(SUMI_ERR_INVALID_ARGUMENT, "release_part: unknown part '" + part + "' (this model releases \"vae\")");
    model_.release_part(part);
  }
  void set_network(void* network_self, const sumi_network_vtable* network, const int32_t* selected) override {
    model_.set_network(network_self, network, selected);
  }
  void train_part(const std::string& part) override { model_.train_part(part, registrar()); }
  void add_token(const std::string& token, const std::string& init_word, int64_t num_vectors) override {
    model_.add_token(token, init_word, num_vectors, registrar());
  }
  void save_token(const std::string& token, const std::string& path, std::optional<sumi_dtype> dtype,
                  bool overwrite) override {
    model_.save_token(token, path, float_type(dtype), overwrite);
  }
  void save(const std::string& path, std::optional<sumi_dtype> dtype, bool overwrite) override {
    model_.save(path, float_type(dtype), overwrite);
  }
  std::string describe() override { return model_.describe(); }
  Tensor encode_tokens(const Tensor& ids) override { return wrap(model_.encode_token_ids(unwrap(ids))); }
  std::string token_text(int64_t id) override { return model_.token_text(id); }
  std::string probe(const std::string& path) override {
    const ModelFamily found = sumi::sd::detect_family(path);
    if (found != F)
      throw sumi::Error(SUMI_ERR_INVALID_ARGUMENT, path + " is an " + std::string(sumi::sd::family_title(found)) +
                                                       " checkpoint, not " + sumi::sd::family_title(F));
    // kohya's flags that name this family (gen_img / train scripts): --v2 for SD 2.x, --sdxl.
    const char* flags = F == ModelFamily::sdxl ? "[\"sdxl\"]" : F == ModelFamily::sd2 ? "[\"v2\"]" : "[]";
    return std::string("{\"family\": \"") + family_name() + "\", \"kohya_flags\": " + flags + "}";
  }
  void load_token(const std::string& token, const std::string& path) override { model_.load_token(token, path); }
  void convert(const std::string& src, const std::string& dst, std::optional<sumi_dtype> dtype, bool overwrite) override {
    sumi::sd::ConvertOptions o;
    o.dtype = float_type(dtype);
    o.family = F;
    o.overwrite = overwrite;
    sumi::sd::convert_model(src, dst, o);
  }

 private:
  // Parameters live in the host registry (this component's namespace); the model computes with
  // the registered tensors.
  sumi::sd::SdModel::ParamFactory registrar() {
    return [this](const std::string& name, const at::Tensor& init, const std::string& group) {
      return unwrap(ctx_.param(name, wrap(init), group.c_str()));
    };
  }
  static const char* family_name() { return F == ModelFamily::sdxl ? "sdxl" : F == ModelFamily::sd2 ? "sd2" : "sd1"; }
  static sumi::sd::ModelOptions options(sumi::Context& ctx) {
    sumi::sd::ModelOptions o;
    o.family = F;
    o.dtype = dtype_from(ctx.get_string("dtype"));
    o.device = sumi::native::to_at_device(ctx.device());
    o.vae = ctx.get_string("vae");
    o.v_parameterization = ctx.get_bool("v_parameterization");
    o.clip_skip = ctx.get_int("clip_skip");
    o.prompt_weighting = ctx.get_bool("prompt_weighting");
    o.max_embeddings_multiples = ctx.get_int("max_embeddings_multiples");
    o.no_boseos_middle = ctx.get_bool("no_boseos_middle");
    o.textual_inversion_embeddings = file_list(ctx.get_string("textual_inversion_embeddings"));
    o.gradient_checkpointing = ctx.get_bool("gradient_checkpointing");
    o.vae_tiling = ctx.get_bool("vae_tiling");
    o.vae_slicing = ctx.get_bool("vae_slicing");
    o.mem_eff_attn = ctx.get_bool("mem_eff_attn");
    o.warn = [](const std::string& message) { sumi::api().log(SUMI_LOG_WARN, "sumi_sd", message.c_str()); };
    return o;
  }
  sumi::Context ctx_;
  sumi::sd::SdModel model_;
};

const sumi_param_spec kParams[] = {
    sumi::param("dtype", SUMI_PARAM_STRING, "fp32",
                "Weight dtype after loading (fp32, fp16 or bf16); the file's own dtype does not matter."),
    sumi::param("vae", SUMI_PARAM_STRING, "",
                "A separate VAE (file or diffusers folder) to use instead of the checkpoint's; empty keeps it."),
    sumi::param("v_parameterization", SUMI_PARAM_BOOL, "false",
                "The model predicts v (SD 2.x 768-v); diffusers folders also say so in their scheduler config."),
    sumi::param("clip_skip", SUMI_PARAM_INT, "1",
                "Text-encoder layer for the conditioning: 1 = last, 2 = penultimate (+ final layer norm)."),
    sumi::param("prompt_weighting", SUMI_PARAM_BOOL, "false",
                "gen_img's prompts: (word:1.3) emphasis, BREAK and prompts longer than 75 tokens in chunks; "
                "off = the plain 77-token encoding (training captions)."),
    sumi::param("max_embeddings_multiples", SUMI_PARAM_INT, "3",
                "With prompt_weighting: at most this many 75-token chunks (3 = 225 tokens); longer prompts are cut."),
    sumi::param("no_boseos_middle", SUMI_PARAM_BOOL, "false",
                "With prompt_weighting: drop the BOS/EOS embeddings between chunks (L = 75 * chunks + 2)."),
    sumi::param("textual_inversion_embeddings", SUMI_PARAM_STRING, "",
                "Textual Inversion embedding files, comma-separated (.safetensors emb_params / clip_l+clip_g, "
                "A1111 .pt); each file's stem becomes a token of its vectors."),
    sumi::param("gradient_checkpointing", SUMI_PARAM_BOOL, "false",
                "Recompute the UNet's and text encoders' block activations during backward: less memory, "
                "more compute; gradients (network ones included) are unchanged."),
    sumi::param("vae_tiling", SUMI_PARAM_BOOL, "false",
                "VAE encode/decode of large images in overlapping tiles blended at the seams (diffusers' "
                "enable_tiling: tiles of the VAE config's sample_size, 1/4 overlap); only larger images are tiled."),
    sumi::param("vae_slicing", SUMI_PARAM_BOOL, "false",
                "VAE encode/decode one image of a batch at a time (diffusers' enable_slicing); same result."),
    sumi::param("mem_eff_attn", SUMI_PARAM_BOOL, "false",
                "Memory-efficient attention (kohya's --mem_eff_attn / --xformers / --sdpa): score matrices in query "
                "chunks of at most 2M elements; the same numbers, less peak memory."),
};

}  // namespace

SUMI_NATIVE_PLUGIN("sumi_sd", "0.1.0",
                   sumi::component<SdComponent<ModelFamily::sd1>>("sd1", "Stable Diffusion 1.x (CLIP ViT-L text encoder).", kParams),
                   sumi::component<SdComponent<ModelFamily::sd2>>("sd2", "Stable Diffusion 2.x (OpenCLIP text encoder).", kParams),
                   sumi::component<SdComponent<ModelFamily::sdxl>>("sdxl", "Stable Diffusion XL base (two text encoders).", kParams))
