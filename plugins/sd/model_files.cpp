#include "model_files.h"

#include <nlohmann/json.hpp>
#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <cctype>
#include <filesystem>
#include <fstream>
#include <stdexcept>
#include <system_error>

#include "sumi/io/safetensors.h"
#include "sumi/io/safetensors_torch.h"
#include "sumi/io/torch_checkpoint.h"
#include "sd_common/tokenizer/embedded_data.h"

namespace sumi::sd {

namespace fs = std::filesystem;
using json = nlohmann::ordered_json;
using nn::ModelFamily;
using nn::TensorMap;

// Metadata keys of the parts' diffusers configs in a single file sumi writes.
constexpr const char* kMetaUnetConfig = "sumi.unet_config";
constexpr const char* kMetaVaeConfig = "sumi.vae_config";
constexpr const char* kMetaTextEncoderConfig = "sumi.text_encoder_config";
constexpr const char* kMetaTextEncoder2Config = "sumi.text_encoder_2_config";

namespace {

bool starts_with(const std::string& s, const std::string& p) { return s.compare(0, p.size(), p) == 0; }
bool ends_with(const std::string& s, const std::string& x) {
  return s.size() >= x.size() && s.compare(s.size() - x.size(), x.size(), x) == 0;
}
std::string lower(std::string s) {
  std::transform(s.begin(), s.end(), s.begin(), [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return s;
}

// EMA copies of the UNet (LDM's model_ema.*) are not part of the model sumi runs.
bool is_ema(const std::string& key) { return starts_with(key, "model_ema."); }

bool is_float(at::ScalarType t) { return at::isFloatingType(t); }

// Runs `f`, prefixing any error with the file it concerns (unless the message names it already).
template <class F>
auto about(const std::string& path, F&& f) -> decltype(f()) {
  try {
    return f();
  } catch (const std::exception& e) {
    const std::string msg = e.what();
    if (msg.find(path) != std::string::npos) throw std::runtime_error(msg);
    throw std::runtime_error(path + ": " + msg);
  }
}

void check_family(const std::string& path, ModelFamily found, const std::optional<ModelFamily>& expect,
                  const char* how) {
  if (!expect || *expect == found) return;
  throw std::runtime_error(path + " is an " + std::string(family_title(found)) + " checkpoint (" + how +
                           "), not " + family_title(*expect) + "; load it as model '" + nn::to_string(found) +
                           "' instead of '" + nn::to_string(*expect) + "'");
}

TensorMap convert_dtype(TensorMap m, const std::optional<at::ScalarType>& dtype) {
  if (!dtype) return m;
  for (auto& [k, t] : m)
    if (is_float(t.scalar_type()) && t.scalar_type() != *dtype) t = t.to(*dtype);
  return m;
}

TensorMap load_any(const std::string& path, const std::optional<at::ScalarType>& dtype) {
  return about(path, [&] {
    TensorMap out;
    if (ends_with(lower(path), ".safetensors")) {
      for (auto& [k, t] : io::load_all(path, dtype)) out.emplace(k, t);
      return out;
    }
    for (auto& [k, t] : io::load_torch_checkpoint(path)) out.emplace(k, t);
    return convert_dtype(std::move(out), dtype);
  });
}

// The text encoder's head count in an embedder's params: real configs leave it to the model
// class, the fixtures' tiny configs carry it in a nested map (`tiny_clip: {heads: 4}`).
std::optional<int64_t> embedder_heads(const YAML::Node& params) {
  if (!params || !params.IsMap()) return std::nullopt;
  for (const auto& kv : params)
    if (kv.second.IsMap() && kv.second["heads"]) return kv.second["heads"].as<int64_t>();
  return std::nullopt;
}

// The original inference config (the .yaml that A1111 and the LDM/SGM repos pair with a
// checkpoint): what shapes cannot tell — attention heads, the v parameterization, the VAE scale.
void apply_original_config(ModelFiles& m, const std::string& yaml_path) {
  about(yaml_path, [&] {
    const YAML::Node root = YAML::LoadFile(yaml_path);
    const YAML::Node params = root["model"]["params"];
    if (!params) throw std::runtime_error("no model.params section; not an LDM/SGM inference config");
    const YAML::Node unet = params["unet_config"] ? params["unet_config"]["params"] : params["network_config"]["params"];
    if (unet && m.unet_config) {
      auto& c = *m.unet_config;
      if (unet["num_head_channels"] && unet["num_head_channels"].as<int64_t>() > 0) {
        const int64_t hc = unet["num_head_channels"].as<int64_t>();
        for (size_t i = 0; i < c.levels(); ++i) c.num_heads[i] = std::max<int64_t>(1, c.block_out_channels[i] / hc);
      } else if (unet["num_heads"] && unet["num_heads"].as<int64_t>() > 0) {
        std::fill(c.num_heads.begin(), c.num_heads.end(), unet["num_heads"].as<int64_t>());
      }
    }
    if (params["parameterization"] && params["parameterization"].as<std::string>() == "v")
      m.prediction_type = "v_prediction";
    if (params["scale_factor"] && m.vae_config) m.vae_config->scaling_factor = params["scale_factor"].as<double>();
    std::optional<int64_t> h1, h2;
    if (params["cond_stage_config"]) {
      h1 = embedder_heads(params["cond_stage_config"]["params"]);
    } else if (params["conditioner_config"]) {
      const YAML::Node models = params["conditioner_config"]["params"]["emb_models"];
      if (models && models.IsSequence() && models.size() >= 2) {
        h1 = embedder_heads(models[0]["params"]);
        h2 = embedder_heads(models[1]["params"]);
      }
    }
    if (h1 && m.te_config) m.te_config->num_attention_heads = *h1;
    if (h2 && m.te2_config) m.te2_config->num_attention_heads = *h2;
    return 0;
  });
}

ModelFiles read_single(const std::string& path, const ReadOptions& opt) {
  ModelFiles m;
  m.path = path;
  nn::TensorShapes shapes;
  std::shared_ptr<io::SafetensorsFile> file;
  TensorMap pickled;
  if (ends_with(lower(path), ".safetensors")) {
    m.form = SourceForm::safetensors;
    file = about(path, [&] { return io::SafetensorsFile::open(path); });
    for (const auto& info : file->tensors())
      if (!is_ema(info.name)) shapes[info.name] = info.shape;
  } else {
    m.form = SourceForm::torch_pickle;
    for (auto& [k, t] : about(path, [&] { return io::load_torch_checkpoint(path); })) {
      if (is_ema(k)) continue;
      shapes[k] = t.sizes().vec();
      pickled.emplace(k, t);
    }
  }
  const nn::DetectedModel d = about(path, [&] { return nn::detect_from_weights(shapes); });
  check_family(path, d.family, opt.expect, "detected from its tensor names and shapes");
  m.family = d.family;
  m.unet_config = d.unet;
  m.vae_config = d.vae;
  m.te_config = d.text_encoder;
  m.te2_config = d.text_encoder_2;
  // The SAI model spec kohya (and sumi) write into trained checkpoints names a v-prediction model
  // (shapes cannot tell); a .yaml beside the file still has the last word.
  if (file) {
    const auto& meta = file->metadata();
    const auto it = meta.find("modelspec.prediction_type");
    if (it != meta.end() && it->second == "v") m.prediction_type = "v_prediction";
    // What shapes cannot tell (attention heads, VAE scale), as sumi writes it into single files
    // (write_single_file): the diffusers config.json of each part.
    auto from_meta = [&](const char* key, auto& slot) {
      const auto c = meta.find(key);
      if (c == meta.end() || !slot) return;
      const std::string origin = path + " (metadata " + key + ")";
      slot = std::decay_t<decltype(*slot)>::from_diffusers_json(origin, &c->second);
    };
    from_meta(kMetaUnetConfig, m.unet_config);
    from_meta(kMetaVaeConfig, m.vae_config);
    from_meta(kMetaTextEncoderConfig, m.te_config);
    from_meta(kMetaTextEncoder2Config, m.te2_config);
  }
  const fs::path yaml = fs::path(path).replace_extension(".yaml");
  if (fs::is_regular_file(yaml)) apply_original_config(m, yaml.string());
  m.scheduler_config = standard_scheduler_config(m.family, m.prediction_type);
  if (file) {
    for (const auto& info : file->tensors()) {
      if (is_ema(info.name)) continue;
      const bool fp = info.dtype[0] == 'F' || info.dtype == "BF16";
      m.original.emplace(info.name, about(path, [&] {
                           return io::load_tensor(file, info, fp ? opt.dtype : std::nullopt);
                         }));
    }
  } else {
    m.original = convert_dtype(std::move(pickled), opt.dtype);
  }
  m.parts = about(path, [&] { return nn::convert_single_file(m.original, m.family); });
  return m;
}

// A diffusers component's weights: the first of the usual file names that exists.
std::optional<std::string> component_file(const fs::path& dir, const std::string& stem) {
  const std::string bin = stem == "model" ? "pytorch_model" : stem;
  for (const std::string& f : {stem + ".safetensors", stem + ".fp16.safetensors", bin + ".bin", bin + ".fp16.bin"})
    if (fs::is_regular_file(dir / f)) return (dir / f).string();
  return std::nullopt;
}

json read_json_file(const std::string& path) {
  std::ifstream in(path);
  if (!in) throw std::runtime_error("cannot read " + path);
  try {
    return json::parse(in);
  } catch (const std::exception& e) {
    throw std::runtime_error(path + ": not valid JSON (" + e.what() + ")");
  }
}

// The family from a folder's configs: a second text encoder or text_time conditioning is SDXL;
// an OpenCLIP (gelu) text encoder or 1024-wide cross-attention is SD2.
ModelFamily family_of_configs(const std::string& path, const ModelFiles& m) {
  if (m.te2_config || (m.unet_config && m.unet_config->addition_time_embed_dim > 0)) return ModelFamily::sdxl;
  if (m.te_config) return m.te_config->hidden_act == "gelu" ? ModelFamily::sd2 : ModelFamily::sd1;
  if (m.unet_config) return m.unet_config->cross_attention_dim == 1024 ? ModelFamily::sd2 : ModelFamily::sd1;
  throw std::runtime_error(path + ": the diffusers folder has neither unet/config.json nor text_encoder/config.json");
}

// A diffusers folder's configs (unet/, vae/, text_encoder[_2]/config.json) and the family they
// give, no tensor read.
ModelFiles folder_configs(const std::string& path) {
  ModelFiles m;
  m.path = path;
  m.form = SourceForm::diffusers_folder;
  const fs::path dir(path);
  if (!fs::is_regular_file(dir / "model_index.json"))
    throw std::runtime_error(path + " is a folder without model_index.json; expected a diffusers model folder "
                             "(model_index.json, unet/, vae/, text_encoder/) or a single checkpoint file");
  auto config = [&](const char* sub) { return (dir / sub / "config.json").string(); };
  auto has = [&](const char* sub) { return fs::is_regular_file(dir / sub / "config.json"); };
  if (has("unet")) m.unet_config = about(config("unet"), [&] { return nn::UNetConfig::from_diffusers_json(config("unet")); });
  if (has("vae")) m.vae_config = about(config("vae"), [&] { return nn::VaeConfig::from_diffusers_json(config("vae")); });
  if (has("text_encoder"))
    m.te_config = about(config("text_encoder"), [&] { return nn::ClipTextConfig::from_diffusers_json(config("text_encoder")); });
  if (has("text_encoder_2"))
    m.te2_config =
        about(config("text_encoder_2"), [&] { return nn::ClipTextConfig::from_diffusers_json(config("text_encoder_2")); });
  m.family = family_of_configs(path, m);
  return m;
}

ModelFiles read_folder(const std::string& path, const ReadOptions& opt) {
  ModelFiles m = folder_configs(path);
  const fs::path dir(path);
  check_family(path, m.family, opt.expect, "read from its config.json files");
  const std::string sched = (dir / "scheduler" / "scheduler_config.json").string();
  if (fs::is_regular_file(sched)) {
    auto j = read_json_file(sched);
    if (j.contains("prediction_type") && j["prediction_type"].is_string())
      m.prediction_type = j["prediction_type"].get<std::string>();
    m.scheduler_config = j.dump();
  } else {
    m.scheduler_config = standard_scheduler_config(m.family, m.prediction_type);
  }
  auto weights = [&](const char* sub, const std::string& stem, bool present) {
    if (!present) return TensorMap{};
    auto f = component_file(dir / sub, stem);
    if (!f)
      throw std::runtime_error(path + ": " + sub + "/ has a config.json but no weights (expected " + stem +
                               ".safetensors or " + (stem == "model" ? "pytorch_model" : stem) + ".bin)");
    return load_any(*f, opt.dtype);
  };
  m.parts.family = m.family;
  m.parts.unet = weights("unet", "diffusion_pytorch_model", m.unet_config.has_value());
  m.parts.vae = nn::upgrade_legacy_vae_names(weights("vae", "diffusion_pytorch_model", m.vae_config.has_value()));
  m.parts.text_encoder = weights("text_encoder", "model", m.te_config.has_value());
  m.parts.text_encoder_2 = weights("text_encoder_2", "model", m.te2_config.has_value());
  return m;
}

}  // namespace

ModelFamily family_from_string(const std::string& name) {
  if (name == "sd1") return ModelFamily::sd1;
  if (name == "sd2") return ModelFamily::sd2;
  if (name == "sdxl") return ModelFamily::sdxl;
  throw std::invalid_argument("unknown model family '" + name + "'; expected sd1, sd2 or sdxl");
}

const char* family_title(ModelFamily family) {
  switch (family) {
    case ModelFamily::sd1: return "SD 1.x";
    case ModelFamily::sd2: return "SD 2.x";
    case ModelFamily::sdxl: return "SDXL";
  }
  return "?";
}

namespace {
void check_model_path(const std::string& path) {
  std::error_code ec;
  if (!fs::exists(path, ec)) throw std::runtime_error(path + ": no such file or folder");
  if (fs::is_directory(path)) return;
  const std::string ext = lower(fs::path(path).extension().string());
  if (ext != ".safetensors" && ext != ".ckpt" && ext != ".pt" && ext != ".pth" && ext != ".bin")
    throw std::runtime_error(path + ": unknown checkpoint type '" + ext +
                             "'; expected .safetensors, .ckpt/.pt/.pth/.bin or a diffusers folder");
}
}  // namespace

ModelFiles read_model(const std::string& path, const ReadOptions& options) {
  check_model_path(path);
  if (fs::is_directory(path)) return read_folder(path, options);
  return read_single(path, options);
}

ModelFamily detect_family(const std::string& path) {
  check_model_path(path);
  if (fs::is_directory(path)) return folder_configs(path).family;
  nn::TensorShapes shapes;
  if (ends_with(lower(path), ".safetensors")) {
    const auto file = about(path, [&] { return io::SafetensorsFile::open(path); });
    for (const auto& info : file->tensors())
      if (!is_ema(info.name)) shapes[info.name] = info.shape;
  } else {
    // A pickled checkpoint has no header to read the names from: it is unpickled (restricted).
    for (auto& [k, t] : about(path, [&] { return io::load_torch_checkpoint(path); }))
      if (!is_ema(k)) shapes[k] = t.sizes().vec();
  }
  return about(path, [&] { return nn::detect_from_weights(shapes); }).family;
}

TensorMap read_vae(const std::string& path, std::optional<at::ScalarType> dtype) {
  std::string file = path;
  if (fs::is_directory(path)) {
    fs::path dir(path);
    if (!fs::is_regular_file(dir / "config.json") && fs::is_directory(dir / "vae")) dir /= "vae";
    auto f = component_file(dir, "diffusion_pytorch_model");
    if (!f) throw std::runtime_error(path + ": no VAE weights (diffusion_pytorch_model.safetensors or .bin)");
    file = *f;
  } else if (!fs::exists(path)) {
    throw std::runtime_error(path + ": no such VAE file");
  }
  TensorMap raw = load_any(file, dtype);
  TensorMap vae;
  bool diffusers = false;
  for (const auto& [k, t] : raw) {
    if (is_ema(k)) continue;
    std::string key = starts_with(k, "first_stage_model.") ? k.substr(18) : k;
    if (starts_with(key, "encoder.down_blocks.") || starts_with(key, "decoder.up_blocks.")) diffusers = true;
    vae.emplace(key, t);
  }
  if (diffusers) return nn::upgrade_legacy_vae_names(vae);
  // Original LDM names: convert through the single-file key map.
  TensorMap prefixed;
  for (auto& [k, t] : vae) prefixed.emplace("first_stage_model." + k, t);
  auto parts = about(file, [&] { return nn::convert_single_file(prefixed, ModelFamily::sd1); });
  if (parts.vae.empty())
    throw std::runtime_error(file + ": no VAE tensors found (expected encoder.* / decoder.* names, diffusers or original)");
  return parts.vae;
}

// ----------------------------------------------------------------------------- writing ----

namespace {

json unet_config_json(const nn::UNetConfig& c) {
  const size_t n = c.levels();
  json down = json::array(), up = json::array();
  for (size_t i = 0; i < n; ++i) down.push_back(c.cross_attention[i] ? "CrossAttnDownBlock2D" : "DownBlock2D");
  for (size_t i = 0; i < n; ++i) up.push_back(c.cross_attention[n - 1 - i] ? "CrossAttnUpBlock2D" : "UpBlock2D");
  json j;
  j["_class_name"] = "UNet2DConditionModel";
  j["_diffusers_version"] = "0.21.2";
  j["act_fn"] = "silu";
  j["addition_embed_type"] = c.addition_time_embed_dim > 0 ? json("text_time") : json(nullptr);
  j["addition_time_embed_dim"] = c.addition_time_embed_dim > 0 ? json(c.addition_time_embed_dim) : json(nullptr);
  j["attention_head_dim"] = c.num_heads;  // diffusers 0.21 reads this field as the head count
  j["block_out_channels"] = c.block_out_channels;
  j["center_input_sample"] = false;
  j["cross_attention_dim"] = c.cross_attention_dim;
  j["down_block_types"] = down;
  j["downsample_padding"] = 1;
  j["flip_sin_to_cos"] = c.flip_sin_to_cos;
  j["freq_shift"] = c.freq_shift;
  j["in_channels"] = c.in_channels;
  j["layers_per_block"] = c.layers_per_block;
  j["mid_block_scale_factor"] = 1;
  j["mid_block_type"] = "UNetMidBlock2DCrossAttn";
  j["norm_eps"] = c.norm_eps;
  j["norm_num_groups"] = c.norm_num_groups;
  j["num_attention_heads"] = nullptr;
  j["out_channels"] = c.out_channels;
  j["projection_class_embeddings_input_dim"] =
      c.projection_class_embeddings_input_dim > 0 ? json(c.projection_class_embeddings_input_dim) : json(nullptr);
  j["transformer_layers_per_block"] = c.transformer_depth;
  j["up_block_types"] = up;
  j["upcast_attention"] = c.upcast_attention;
  j["use_linear_projection"] = c.use_linear_projection;
  return j;
}

json vae_config_json(const nn::VaeConfig& c) {
  const size_t n = c.block_out_channels.size();
  json j;
  j["_class_name"] = "AutoencoderKL";
  j["_diffusers_version"] = "0.21.2";
  j["act_fn"] = c.act_fn;
  j["block_out_channels"] = c.block_out_channels;
  j["down_block_types"] = std::vector<std::string>(n, "DownEncoderBlock2D");
  j["force_upcast"] = c.force_upcast;
  j["in_channels"] = c.in_channels;
  j["latent_channels"] = c.latent_channels;
  j["layers_per_block"] = c.layers_per_block;
  j["norm_num_groups"] = c.norm_num_groups;
  j["out_channels"] = c.out_channels;
  j["sample_size"] = c.sample_size;
  j["scaling_factor"] = c.scaling_factor;
  j["up_block_types"] = std::vector<std::string>(n, "UpDecoderBlock2D");
  return j;
}

json clip_config_json(const nn::ClipTextConfig& c) {
  json j;
  j["architectures"] = {c.projection_dim > 0 ? "CLIPTextModelWithProjection" : "CLIPTextModel"};
  j["attention_dropout"] = 0.0;
  j["bos_token_id"] = 0;
  j["eos_token_id"] = 2;
  j["hidden_act"] = c.hidden_act;
  j["hidden_size"] = c.hidden_size;
  j["initializer_factor"] = 1.0;
  j["initializer_range"] = 0.02;
  j["intermediate_size"] = c.intermediate_size;
  j["layer_norm_eps"] = c.layer_norm_eps;
  j["max_position_embeddings"] = c.max_position_embeddings;
  j["model_type"] = "clip_text_model";
  j["num_attention_heads"] = c.num_attention_heads;
  j["num_hidden_layers"] = c.num_hidden_layers;
  j["pad_token_id"] = 1;
  j["projection_dim"] = c.projection_dim > 0 ? c.projection_dim : 512;
  j["vocab_size"] = c.vocab_size;
  return j;
}

// The scheduler the reference pipelines ship: scaled_linear 0.00085-0.012 over 1000 steps.
json scheduler_json(ModelFamily family, const std::string& prediction_type) {
  json j;
  j["_class_name"] = family == ModelFamily::sdxl ? "EulerDiscreteScheduler" : "PNDMScheduler";
  j["_diffusers_version"] = "0.21.2";
  j["beta_end"] = 0.012;
  j["beta_schedule"] = "scaled_linear";
  j["beta_start"] = 0.00085;
  j["clip_sample"] = false;
  j["num_train_timesteps"] = 1000;
  j["prediction_type"] = prediction_type.empty() ? "epsilon" : prediction_type;
  j["set_alpha_to_one"] = false;
  j["skip_prk_steps"] = true;
  j["steps_offset"] = 1;
  j["timestep_spacing"] = "leading";
  j["trained_betas"] = nullptr;
  return j;
}

void write_text(const fs::path& p, const std::string& text) {
  std::ofstream out(p, std::ios::binary);
  out << text;
  out.close();
  if (!out) throw std::runtime_error("cannot write " + p.string());
}

void write_json(const fs::path& p, const json& j) { write_text(p, j.dump(2) + "\n"); }

// tokenizer/ as transformers saves a CLIPTokenizer; `bang` pads with "!" (SD2, SDXL's second).
void write_tokenizer(const fs::path& dir, bool bang) {
  fs::create_directories(dir);
  write_text(dir / "vocab.json", std::string(sd::detail::embedded_vocab_json()));
  write_text(dir / "merges.txt", std::string(sd::detail::embedded_merges_txt()));
  const char* pad = bang ? "!" : "<|endoftext|>";
  json added;
  if (bang) added["!"] = 0;
  added["<|endoftext|>"] = 49407;
  added["<|startoftext|>"] = 49406;
  write_json(dir / "added_tokens.json", added);
  json special;
  special["bos_token"] = "<|startoftext|>";
  special["eos_token"] = "<|endoftext|>";
  special["pad_token"] = pad;
  special["unk_token"] = "<|endoftext|>";
  write_json(dir / "special_tokens_map.json", special);
  auto token = [](const char* content, bool normalized) {
    json t;
    t["content"] = content;
    t["lstrip"] = false;
    t["normalized"] = normalized;
    t["rstrip"] = false;
    t["single_word"] = false;
    t["special"] = true;
    return t;
  };
  json cfg;
  json decoder;
  if (bang) decoder["0"] = token("!", false);
  decoder["49406"] = token("<|startoftext|>", true);
  decoder["49407"] = token("<|endoftext|>", true);
  cfg["added_tokens_decoder"] = decoder;
  cfg["additional_special_tokens"] = json::array();
  cfg["bos_token"] = "<|startoftext|>";
  cfg["clean_up_tokenization_spaces"] = true;
  cfg["eos_token"] = "<|endoftext|>";
  cfg["errors"] = "replace";
  cfg["model_max_length"] = 77;
  cfg["pad_token"] = pad;
  cfg["tokenizer_class"] = "CLIPTokenizer";
  cfg["unk_token"] = "<|endoftext|>";
  write_json(dir / "tokenizer_config.json", cfg);
}

io::NamedTensors named(const TensorMap& m, const std::string& prefix = "") {
  io::NamedTensors out;
  for (const auto& [k, t] : m) out.emplace_back(prefix + k, t);
  return out;
}

void refuse_existing(const std::string& dst) {
  std::error_code ec;
  if (fs::exists(dst, ec))
    throw std::runtime_error(dst + " already exists; choose another destination or pass --overwrite");
}

// Everything needed to rebuild a single file; a UNet config is what to_single_file requires.
void require_unet(const ModelFiles& m) {
  if (!m.unet_config)
    throw std::runtime_error(m.path + ": has no UNet; a checkpoint without one cannot be converted");
}

}  // namespace

std::string standard_scheduler_config(ModelFamily family, const std::string& prediction_type) {
  return scheduler_json(family, prediction_type).dump();
}

void write_diffusers_folder(const ModelFiles& m, const std::string& dst) {
  require_unet(m);
  refuse_existing(dst);
  const fs::path tmp = dst + ".tmp";
  std::error_code ec;
  fs::remove_all(tmp, ec);
  try {
    fs::create_directories(tmp);
    json index;
    index["_class_name"] = m.family == ModelFamily::sdxl ? "StableDiffusionXLPipeline" : "StableDiffusionPipeline";
    index["_diffusers_version"] = "0.21.2";
    if (m.family == ModelFamily::sdxl) {
      index["force_zeros_for_empty_prompt"] = true;
    } else {
      index["feature_extractor"] = {nullptr, nullptr};
      index["requires_safety_checker"] = false;
      index["safety_checker"] = {nullptr, nullptr};
    }
    index["scheduler"] = {"diffusers", m.family == ModelFamily::sdxl ? "EulerDiscreteScheduler" : "PNDMScheduler"};
    if (m.te_config) {
      index["text_encoder"] = {"transformers", m.te_config->projection_dim > 0 ? "CLIPTextModelWithProjection" : "CLIPTextModel"};
    }
    if (m.te2_config) index["text_encoder_2"] = {"transformers", "CLIPTextModelWithProjection"};
    if (m.te_config) index["tokenizer"] = {"transformers", "CLIPTokenizer"};
    if (m.te2_config) index["tokenizer_2"] = {"transformers", "CLIPTokenizer"};
    index["unet"] = {"diffusers", "UNet2DConditionModel"};
    if (m.vae_config) index["vae"] = {"diffusers", "AutoencoderKL"};
    write_json(tmp / "model_index.json", index);

    fs::create_directories(tmp / "scheduler");
    write_json(tmp / "scheduler" / "scheduler_config.json", scheduler_json(m.family, m.prediction_type));

    fs::create_directories(tmp / "unet");
    write_json(tmp / "unet" / "config.json", unet_config_json(*m.unet_config));
    io::save_tensors((tmp / "unet" / "diffusion_pytorch_model.safetensors").string(), named(m.parts.unet));
    if (m.vae_config) {
      fs::create_directories(tmp / "vae");
      write_json(tmp / "vae" / "config.json", vae_config_json(*m.vae_config));
      io::save_tensors((tmp / "vae" / "diffusion_pytorch_model.safetensors").string(), named(m.parts.vae));
    }
    if (m.te_config) {
      fs::create_directories(tmp / "text_encoder");
      write_json(tmp / "text_encoder" / "config.json", clip_config_json(*m.te_config));
      io::save_tensors((tmp / "text_encoder" / "model.safetensors").string(), named(m.parts.text_encoder));
      write_tokenizer(tmp / "tokenizer", m.family == ModelFamily::sd2);
    }
    if (m.te2_config) {
      fs::create_directories(tmp / "text_encoder_2");
      write_json(tmp / "text_encoder_2" / "config.json", clip_config_json(*m.te2_config));
      io::save_tensors((tmp / "text_encoder_2" / "model.safetensors").string(), named(m.parts.text_encoder_2));
      write_tokenizer(tmp / "tokenizer_2", true);
    }
    fs::rename(tmp, dst);
  } catch (...) {
    fs::remove_all(tmp, ec);
    throw;
  }
}

void write_single_file(const ModelFiles& m, const std::string& dst) {
  require_unet(m);
  refuse_existing(dst);
  // From a single file: its own tensors, untouched. From a folder: the inverse key map, with
  // placeholders for what diffusers does not store.
  const TensorMap all = !m.original.empty()     ? m.original
                        : m.carry_over.empty() ? nn::to_single_file(m.parts, *m.unet_config)
                                               : nn::to_single_file(m.parts, *m.unet_config, &m.carry_over);
  // The parts' configs ride along in the metadata, so a reload needs no .yaml beside the file for
  // what the shapes cannot tell (non-default head counts, the VAE scale).
  std::map<std::string, std::string> meta{{kMetaUnetConfig, unet_config_json(*m.unet_config).dump()}};
  if (m.vae_config) meta[kMetaVaeConfig] = vae_config_json(*m.vae_config).dump();
  if (m.te_config) meta[kMetaTextEncoderConfig] = clip_config_json(*m.te_config).dump();
  if (m.te2_config) meta[kMetaTextEncoder2Config] = clip_config_json(*m.te2_config).dump();
  io::save_tensors(dst, named(all), meta);  // atomic: temp file + rename
}

namespace {

// A model is written as one .safetensors file or a diffusers folder. A file name with another
// extension (y.ckpt, y.pt, y.bin) would otherwise become a folder of that name; a folder name may
// still carry dots that are not extensions ("sd-v1.5").
void check_destination(const std::string& dst) {
  if (ends_with(lower(dst), ".safetensors")) return;
  const std::string ext = fs::path(dst).extension().string();
  const bool looks_like_file =
      ext.size() > 1 && std::isalpha(static_cast<unsigned char>(ext[1])) &&
      std::all_of(ext.begin() + 1, ext.end(), [](char ch) { return std::isalnum(static_cast<unsigned char>(ch)) != 0; });
  if (looks_like_file)
    throw std::runtime_error(dst + ": cannot write a model as '" + ext +
                             "'; sumi writes a single .safetensors file (original layout) or a diffusers folder "
                             "(a path without a file extension). .ckpt / .pt (pickle) are read, never written: "
                             "use " + fs::path(dst).replace_extension(".safetensors").string() + " instead");
}

}  // namespace

void convert_model(const std::string& src, const std::string& dst, const ConvertOptions& options) {
  check_destination(dst);
  if (options.overwrite) {
    std::error_code ec;
    if (fs::equivalent(src, dst, ec)) throw std::runtime_error("convert: source and destination are the same (" + src + ")");
  } else {
    refuse_existing(dst);
  }
  ReadOptions ro;
  ro.expect = options.family;
  ro.dtype = options.dtype;
  write_model(read_model(src, ro), dst, options.overwrite);
}

void write_model(const ModelFiles& m, const std::string& dst, bool overwrite) {
  const bool single = ends_with(lower(dst), ".safetensors");
  check_destination(dst);
  // Write beside the destination first, so an existing one is replaced only by a complete result.
  const std::string staged = overwrite ? dst + ".new" + (single ? ".safetensors" : "") : dst;
  std::error_code ec;
  if (overwrite) fs::remove_all(staged, ec);
  if (single) write_single_file(m, staged);
  else write_diffusers_folder(m, staged);
  if (overwrite) {
    const std::string old = dst + ".old";
    fs::remove_all(old, ec);
    if (fs::exists(dst)) fs::rename(dst, old);
    fs::rename(staged, dst);
    fs::remove_all(old, ec);
  }
}

}  // namespace sumi::sd
