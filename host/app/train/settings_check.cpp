#include "app/train/settings_check.h"

#include "app/train/loss.h"
#include "app/train/noise.h"
#include "app/train/precision.h"
#include "app/train/train_log.h"
#include "app/train/train_metadata.h"
#include "core/error.h"

#include <cmath>
#include <string>

namespace sumi::app {

const char* mode_name(TrainMode m) {
  switch (m) {
    case TrainMode::network: return "network";
    case TrainMode::dreambooth: return "dreambooth";
    case TrainMode::textual_inversion: return "textual_inversion";
  }
  return "?";
}

namespace {

void check_precision(const TrainSettings& s) {
  if (s.mixed_precision != "no" && s.mixed_precision != "bf16" && s.mixed_precision != "fp16")
    throw host::UserError("[train] mixed_precision: expected \"no\", \"bf16\" or \"fp16\", got \"" + s.mixed_precision + "\"");
  if (s.mixed_precision == "fp16" && s.device.is_cpu() && !cpu_fp16_autocast_available())
    throw host::UserError("[train] mixed_precision = \"fp16\": this libtorch build cannot compute in fp16 on the CPU "
                          "(no fp16 matmul/conv kernels); use \"bf16\" (the fast CPU path) or \"no\"");
  if (s.full_bf16 && s.mixed_precision != "bf16")
    throw host::UserError("[train] full_bf16 needs mixed_precision = \"bf16\" (kohya: full_bf16 requires mixed precision bf16)");
  if (s.gradient_accumulation_steps < 1) throw host::UserError("[train] gradient_accumulation_steps must be >= 1");
}

void check_mode_keys(const TrainSettings& s) {
  const TrainMode mode = s.mode;
  const bool network_mode = mode == TrainMode::network;
  if (network_mode && !s.token_string.empty())
    throw host::UserError("[train] token_string is Textual Inversion's; this run trains a network (--network_module): drop one");
  if (mode == TrainMode::textual_inversion) {
    if (s.token_string.empty())
      throw host::UserError("[train] mode textual_inversion needs token_string (--token_string): the new token to train");
    if (s.num_vectors_per_token < 1) throw host::UserError("[train] num_vectors_per_token must be >= 1");
    if (s.ti_template != "" && s.ti_template != "object" && s.ti_template != "style")
      throw host::UserError("[train] ti_template: expected \"object\" or \"style\" (--use_object_template / "
                            "--use_style_template), got \"" + s.ti_template + "\"");
    if (s.train_text_encoder)
      throw host::UserError("[train] train_text_encoder: Textual Inversion trains only the new token's vectors; drop the flag");
  }
  if (mode != TrainMode::textual_inversion && (!s.init_word.empty() || !s.ti_template.empty() || s.num_vectors_per_token != 1))
    throw host::UserError(std::string("[train] init_word / num_vectors_per_token / use_*_template are Textual Inversion's "
                                      "(--token_string); this run is ") + mode_name(mode));
  if (mode != TrainMode::dreambooth && (s.train_text_encoder || s.stop_text_encoder_training >= 0))
    throw host::UserError(std::string("[train] train_text_encoder / stop_text_encoder_training belong to DreamBooth / "
                                      "fine-tuning; this run is ") + mode_name(mode) +
                          (network_mode ? " (the network trains its text-encoder modules unless network_train_unet_only)" : ""));
  if (mode == TrainMode::dreambooth && s.save_model_as != "safetensors" && s.save_model_as != "diffusers")
    throw host::UserError("[output] save_model_as: expected \"safetensors\" (one file) or \"diffusers\" (a folder), got \"" +
                          s.save_model_as + "\"" + (s.save_model_as == "ckpt" ? "; sumi writes no pickled .ckpt files" : ""));
  if (!s.ti_weights.empty() && mode != TrainMode::textual_inversion)
    throw host::UserError(std::string("[train] weights (--weights) is Textual Inversion's initial embedding file; this run is ") +
                          mode_name(mode) + (network_mode ? " (a network continues from [network] weights, --network_weights)" : ""));
  if ((s.text_encoder_lr1 || s.text_encoder_lr2) && mode != TrainMode::dreambooth)
    throw host::UserError("[optimizer] text_encoder_lr1 / text_encoder_lr2 (--learning_rate_te1/2) set the rates of a model's "
                          "text encoders one by one in DreamBooth / fine-tuning (sdxl_train.py); this run is " +
                          std::string(mode_name(mode)) + ": use text_encoder_lr");
  if (!(s.scale_weight_norms >= 0) || !std::isfinite(s.scale_weight_norms))
    throw host::UserError("[network] scale_weight_norms (--scale_weight_norms) must be a number > 0 (0 = off), got " +
                          std::to_string(s.scale_weight_norms));
  if (s.scale_weight_norms > 0 && mode != TrainMode::network)
    throw host::UserError(std::string("[network] scale_weight_norms (--scale_weight_norms) limits a network's weight norms; this run is ") +
                          mode_name(mode));
  if (!s.block_lr.empty() && mode != TrainMode::dreambooth)
    throw host::UserError("[optimizer] block_lr (--block_lr) sets per-block rates of the UNet in DreamBooth / fine-tuning "
                          "(kohya's sdxl_train.py); this run is " + std::string(mode_name(mode)));
  for (double v : s.block_lr)
    if (!(v >= 0)) throw host::UserError("[optimizer] block_lr: learning rates must be >= 0, got " + std::to_string(v));
}

void check_last_n(const std::optional<int64_t>& v, const char* key, int64_t every, const char* every_key) {
  if (!v) return;
  if (*v < 1) throw host::UserError(std::string("[output] ") + key + " must be >= 1, got " + std::to_string(*v));
  if (every <= 0)
    throw host::UserError(std::string("[output] ") + key + " keeps the last periodic saves, but " + every_key +
                          " is not set: add it (e.g. --" + every_key + " 1)");
}

void check_save_windows(const TrainSettings& s) {
  check_last_n(s.save_last_n_epochs, "save_last_n_epochs", s.save_every_n_epochs, "save_every_n_epochs");
  check_last_n(s.save_last_n_epochs_state, "save_last_n_epochs_state", s.save_every_n_epochs, "save_every_n_epochs");
  check_last_n(s.save_last_n_steps, "save_last_n_steps", s.save_every_n_steps, "save_every_n_steps");
  check_last_n(s.save_last_n_steps_state, "save_last_n_steps_state", s.save_every_n_steps, "save_every_n_steps");
  if ((s.save_last_n_epochs_state || s.save_last_n_steps_state) && !s.save_state)
    throw host::UserError("[output] save_last_n_*_state prunes state folders, but save_state is off: add --save_state");
}

}  // namespace

void check_train_settings(const TrainSettings& s) {
  check_precision(s);
  check_noise_options(s.noise);
  LossOptions loss = s.loss;
  loss.v_parameterization = s.v_parameterization;
  check_loss_options(loss);
  check_log_options(s.log);
  check_metadata_options(s);
  check_mode_keys(s);
  check_save_windows(s);
}

void check_model_settings(const TrainSettings& s, const ModelDescription& model) {
  const size_t encoders = model.text_encoders.size();
  if ((s.text_encoder_lr1 || s.text_encoder_lr2) && encoders < 2)
    throw host::UserError("[optimizer] text_encoder_lr1 / text_encoder_lr2 (--learning_rate_te1/2) set the rates of two text "
                          "encoders one by one (sdxl_train.py); model '" + s.family + "' has " + std::to_string(encoders) +
                          ": use text_encoder_lr");
  if (s.block_lr.empty()) return;
  if (!model.block_lr)
    throw host::UserError("[optimizer] block_lr (--block_lr) is kohya's sdxl_train.py's: model '" + s.family +
                          "' describes no UNet block groups to give rates to; use unet_lr");
  if (static_cast<int64_t>(s.block_lr.size()) != model.block_lr->blocks)
    throw host::UserError("[optimizer] block_lr: expected " + std::to_string(model.block_lr->blocks) + " comma-separated learning rates (" +
                          model.block_lr->description + "), got " + std::to_string(s.block_lr.size()));
}

}  // namespace sumi::app
