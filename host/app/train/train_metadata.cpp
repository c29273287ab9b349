#include "train_metadata.h"

#include "core/error.h"

#include <nlohmann/json.hpp>

#include <filesystem>

namespace fs = std::filesystem;

namespace sumi::app {

namespace {

// Python's str() of what kohya stores: None for unset, True/False for flags.
std::string py_bool(bool b) { return b ? "True" : "False"; }
template <class T>
std::string py_opt(const std::optional<T>& v) {
  return v ? std::to_string(*v) : "None";
}
std::string param_or(const std::map<std::string, std::string>& m, const std::string& key, const std::string& fallback) {
  auto it = m.find(key);
  return it == m.end() ? fallback : it->second;
}

// Python's json.dumps of a dict of strings (", " and ": " separators, non-ASCII escaped), as
// kohya writes ss_network_args.
std::string py_json_dumps(const std::vector<std::pair<std::string, std::string>>& items) {
  auto quote = [](const std::string& v) { return nlohmann::json(v).dump(-1, ' ', true); };
  std::string out = "{";
  for (const auto& [k, v] : items) out += (out.size() > 1 ? ", " : "") + quote(k) + ": " + quote(v);
  return out + "}";
}

}  // namespace

Metadata network_metadata(const TrainSettings& s, const RunFacts& run, const ModelDescription& model,
                          const NetworkFacts* net) {
  const auto& loss = s.loss;
  const auto& noise = s.noise;
  Metadata m{
      {"ss_session_id", std::to_string(s.seed)},
      {"ss_training_started_at", std::to_string(run.started_at)},
      {"ss_training_finished_at", std::to_string(run.finished_at)},
      {"ss_output_name", s.output_name},
      {"ss_learning_rate", std::to_string(s.learning_rate)},
      {"ss_unet_lr", py_opt(s.unet_lr)},
      {"ss_text_encoder_lr", py_opt(s.text_encoder_lr)},
      {"ss_num_train_images", std::to_string(run.num_train_images)},
      {"ss_num_reg_images", std::to_string(run.num_reg_images)},
      {"ss_num_batches_per_epoch", std::to_string(run.batches_per_epoch)},
      {"ss_num_epochs", std::to_string(run.epoch)},
      {"ss_epoch", std::to_string(run.epoch)},
      {"ss_steps", std::to_string(run.step)},
      {"ss_max_train_steps", std::to_string(run.total_steps)},
      {"ss_gradient_accumulation_steps", std::to_string(s.gradient_accumulation_steps)},
      {"ss_lr_warmup_steps", std::to_string(s.lr_warmup_steps)},
      {"ss_lr_scheduler", s.lr_scheduler_type},
      {"ss_network_module", s.network_module.empty() ? "networks." + s.network_type : s.network_module},
      {"ss_network_dim", param_or(s.network_params, "dim", "4")},
      {"ss_network_alpha", param_or(s.network_params, "alpha", "1")},
      {"ss_network_dropout", param_or(s.network_params, "dropout", "None")},
      {"ss_mixed_precision", s.mixed_precision},
      {"ss_full_fp16", "False"},
      {"ss_full_bf16", py_bool(s.full_bf16)},
      {"ss_gradient_checkpointing", py_bool(s.gradient_checkpointing)},
      {"ss_v2", py_bool(model.kohya_v2)},
      {"ss_base_model_version", model.kohya_base_model_version},
      {"ss_clip_skip", param_or(s.model_params, "clip_skip", "None")},
      {"ss_seed", std::to_string(s.seed)},
      {"ss_noise_offset", noise.noise_offset > 0 ? std::to_string(noise.noise_offset) : "None"},
      {"ss_noise_offset_random_strength", py_bool(noise.noise_offset_random_strength)},
      {"ss_adaptive_noise_scale", py_opt(noise.adaptive_noise_scale)},
      {"ss_multires_noise_iterations", noise.multires_noise_iterations > 0 ? std::to_string(noise.multires_noise_iterations) : "None"},
      {"ss_multires_noise_discount", std::to_string(noise.multires_noise_discount)},
      {"ss_ip_noise_gamma", noise.ip_noise_gamma > 0 ? std::to_string(noise.ip_noise_gamma) : "None"},
      {"ss_ip_noise_gamma_random_strength", py_bool(noise.ip_noise_gamma_random_strength)},
      {"ss_zero_terminal_snr", py_bool(param_or(s.noise_scheduler_params, "rescale_betas_zero_snr", "false") == "true")},
      {"ss_loss_type", loss.loss_type},
      {"ss_huber_schedule", loss.huber_schedule},
      {"ss_huber_c", std::to_string(loss.huber_c)},
      {"ss_debiased_estimation", py_bool(loss.debiased_estimation_loss)},
      {"ss_scale_v_pred_loss_like_noise_pred", py_bool(loss.scale_v_pred_loss_like_noise_pred)},
      {"ss_v_pred_like_loss", py_opt(loss.v_pred_like_loss)},
      {"ss_optimizer", s.optimizer_type},
      {"ss_max_grad_norm", std::to_string(s.max_grad_norm)},
      {"ss_prior_loss_weight", std::to_string(s.prior_loss_weight)},
      {"ss_min_snr_gamma", py_opt(loss.min_snr_gamma)},
      {"ss_sd_model_name", fs::path(s.model_path).filename().string()},
      {"ss_vae_name", param_or(s.model_params, "vae", "").empty() ? "None" : fs::path(s.model_params.at("vae")).filename().string()},
      {"ss_training_comment", s.training_comment.value_or("None")},
      {"ss_sd_scripts_commit_hash", "sumi 0.1.0"},
      {"ss_resolution", "(" + std::to_string(run.width) + ", " + std::to_string(run.height) + ")"},
  };
  // train_network.py writes ss_network_args only when --network_args were given.
  if (!s.network_args.empty()) m["ss_network_args"] = py_json_dumps(s.network_args);
  // The plugin's own values (ABI 1.3) replace the LoRA-style dim / alpha; a network that gives
  // none has neither.
  if (net && net->has_metadata) {
    m.erase("ss_network_dim");
    m.erase("ss_network_alpha");
    for (const auto& [k, v] : net->metadata) m[k] = v;
  }
  if (!s.no_metadata) return m;
  // train_network.py --no_metadata: only what tools need to filter networks by base model.
  Metadata minimum;
  for (const char* key : {"ss_v2", "ss_base_model_version", "ss_network_module", "ss_network_dim", "ss_network_alpha", "ss_network_args"})
    if (m.count(key)) minimum[key] = m.at(key);
  return minimum;
}

Metadata modelspec_metadata(const ModelSpec& spec) {
  std::string arch = spec.architecture;
  if (spec.kind == ModelSpecKind::lora) arch += "/lora";
  if (spec.kind == ModelSpecKind::textual_inversion) arch += "/textual-inversion";
  // kohya: Stability AI's layout for checkpoints, embeddings and SDXL LoRA (its key names);
  // SD1/SD2 LoRA are marked diffusers.
  const bool sai = spec.kind != ModelSpecKind::lora || spec.sai_lora;
  int64_t w = spec.width, h = spec.height;
  if (w <= 0 || h <= 0) {
    w = spec.default_width;
    h = spec.default_height;
  }
  char date[32];
  std::strftime(date, sizeof date, "%Y-%m-%dT%H:%M:%S", std::localtime(&spec.timestamp));
  Metadata m{
      {"modelspec.sai_model_spec", "1.0.0"},
      {"modelspec.architecture", arch},
      {"modelspec.implementation", sai ? "https://github.com/Stability-AI/generative-models" : "diffusers"},
      {"modelspec.title", spec.title},
      {"modelspec.resolution", std::to_string(w) + "x" + std::to_string(h)},
      {"modelspec.date", date},
      {"modelspec.prediction_type", spec.v_parameterization ? "v" : "epsilon"},
  };
  if (spec.author) m["modelspec.author"] = *spec.author;
  if (spec.description) m["modelspec.description"] = *spec.description;
  if (spec.license) m["modelspec.license"] = *spec.license;
  if (spec.tags) m["modelspec.tags"] = *spec.tags;
  if (spec.timesteps) m["modelspec.timestep_range"] = std::to_string(spec.timesteps->first) + "," + std::to_string(spec.timesteps->second);
  if (spec.clip_skip) m["modelspec.encoder_layer"] = std::to_string(*spec.clip_skip);
  return m;
}

void set_modelspec_model(ModelSpec& spec, const ModelDescription& model, bool v_parameterization) {
  spec.architecture = model.modelspec_architecture;
  spec.sai_lora = model.modelspec_lora_implementation != "diffusers";
  spec.default_width = model.default_width;
  spec.default_height = model.default_height;
  spec.v_parameterization = v_parameterization;
}

ModelSpec run_modelspec(const TrainSettings& s, ModelSpecKind kind, int64_t width, int64_t height,
                        const ModelDescription& model) {
  ModelSpec spec;
  spec.kind = kind;
  set_modelspec_model(spec, model, s.v_parameterization);
  spec.title = s.metadata_title.value_or(s.output_name);
  spec.author = s.metadata_author;
  spec.description = s.metadata_description;
  spec.license = s.metadata_license;
  spec.tags = s.metadata_tags;
  spec.width = width;
  spec.height = height;
  // kohya writes the range when --min_timestep or --max_timestep is given; sumi's keys default
  // to 0 and 1000, so the range is written when it differs from the full one.
  if (s.noise.min_timestep != 0 || s.noise.max_timestep != 1000) spec.timesteps = {s.noise.min_timestep, s.noise.max_timestep};
  // clip_skip 1 is the model plugin's default (kohya's unset).
  const std::string clip_skip = param_or(s.model_params, "clip_skip", "1");
  if (clip_skip != "1") {
    try {
      spec.clip_skip = std::stoll(clip_skip);
    } catch (const std::exception&) {
      throw host::UserError("[model] clip_skip: expected an integer, got '" + clip_skip + "'");
    }
  }
  spec.timestamp = std::time(nullptr);
  return spec;
}

void check_metadata_options(const TrainSettings& s) {
  if (s.mode == TrainMode::network) return;
  const char* what = s.mode == TrainMode::textual_inversion ? "Textual Inversion embeddings" : "DreamBooth / fine-tuned models";
  if (s.no_metadata)
    throw host::UserError(std::string("[output] no_metadata (--no_metadata) is train_network.py's: it keeps only the minimum "
                                      "ss_* keys of a network; ") + what + " carry only modelspec.* keys, as kohya writes them; drop the flag");
  if (s.training_comment)
    throw host::UserError(std::string("[output] training_comment (--training_comment) is train_network.py's: it is stored as "
                                      "ss_training_comment in a network; ") + what + " carry no ss_* keys; use metadata_description instead");
}

}  // namespace sumi::app
