// kohya-ss sd-scripts training flags and the recipe key each one maps to. Names, value
// types and arities follow train_network.py and library/train_util.py
// (add_sd_models_arguments, add_optimizer_arguments, add_training_arguments,
// add_dataset_arguments, add_sd_saving_arguments), custom_train_functions.py and
// config_util.py. A target that no schema declares yet makes validation report the flag as
// not supported yet; adding the key to a schema is all it takes to support it.
#include <algorithm>
#include <iterator>

#include "sumi/recipe/kohya.h"

namespace sumi::recipe {

namespace {
constexpr KohyaKind S = KohyaKind::String;
constexpr KohyaKind I = KohyaKind::Int;
constexpr KohyaKind F = KohyaKind::Float;
constexpr KohyaKind B = KohyaKind::Switch;
constexpr KohyaKind KV = KohyaKind::KeyValues;

// The table by section, in kohya's argument-group order; kohya_flags() joins them.

// --- models
constexpr KohyaFlag kModelFlags[] = {
    {"pretrained_model_name_or_path", "model.path", S, false},
    {"v2", "model.v2", B, false},
    {"v_parameterization", "model.v_parameterization", B, false},
    {"tokenizer_cache_dir", "model.tokenizer_cache_dir", S, false},
    {"vae", "model.vae", S, false},
    {"clip_skip", "model.clip_skip", I, false},
    {"max_token_length", "model.max_token_length", I, false},
    {"no_half_vae", "model.no_half_vae", B, false},
    {"base_weights", "model.base_weights", S, true},
    {"base_weights_multiplier", "model.base_weights_multiplier", F, true},
};

// --- network (train_network.py)
constexpr KohyaFlag kNetworkFlags[] = {
    {"network_module", "network.type", S, false},
    {"network_dim", "network.dim", I, false},
    {"network_alpha", "network.alpha", F, false},
    {"network_dropout", "network.dropout", F, false},
    {"network_args", "network.*", KV, false},
    {"network_weights", "network.weights", S, false},
    {"network_mul", "network.multiplier", F, false},
    {"network_train_unet_only", "network.train_unet_only", B, false},
    {"network_train_text_encoder_only", "network.train_text_encoder_only", B, false},
    {"dim_from_weights", "network.dim_from_weights", B, false},
    {"scale_weight_norms", "network.scale_weight_norms", F, false},
};

// --- optimizer
constexpr KohyaFlag kOptimizerFlags[] = {
    {"optimizer_type", "optimizer.type", S, false},
    {"use_8bit_adam", "optimizer.type", B, false},
    {"use_lion_optimizer", "optimizer.type", B, false},
    {"learning_rate", "optimizer.learning_rate", F, false},
    {"unet_lr", "optimizer.unet_lr", F, false},
    {"text_encoder_lr", "optimizer.text_encoder_lr", F, false},
    {"learning_rate_te", "optimizer.text_encoder_lr", F, false},    // train_db.py / fine_tune.py
    {"learning_rate_te1", "optimizer.text_encoder_lr1", F, false},  // sdxl_train.py
    {"learning_rate_te2", "optimizer.text_encoder_lr2", F, false},
    {"block_lr", "optimizer.block_lr", S, false},                   // sdxl_train.py: 23 comma-separated values
    {"optimizer_args", "optimizer.*", KV, false},
    {"max_grad_norm", "train.max_grad_norm", F, false},
    {"fused_backward_pass", "train.fused_backward_pass", B, false},
};

// --- learning-rate schedule
constexpr KohyaFlag kLrSchedulerFlags[] = {
    {"lr_scheduler", "lr_scheduler.type", S, false},
    {"lr_scheduler_type", "lr_scheduler.module", S, false},
    {"lr_scheduler_args", "lr_scheduler.*", KV, false},
    {"lr_warmup_steps", "lr_scheduler.warmup_steps", I, false},
    {"lr_scheduler_num_cycles", "lr_scheduler.num_cycles", I, false},
    {"lr_scheduler_power", "lr_scheduler.power", F, false},
    {"lr_scheduler_timescale", "lr_scheduler.timescale", I, false},
    {"lr_scheduler_min_lr_ratio", "lr_scheduler.min_lr_ratio", F, false},
};

// --- noise schedule
constexpr KohyaFlag kNoiseSchedulerFlags[] = {
    {"zero_terminal_snr", "noise_scheduler.rescale_betas_zero_snr", B, false},
};

// --- training loop
constexpr KohyaFlag kTrainFlags[] = {
    {"max_train_steps", "train.max_train_steps", I, false},
    {"max_train_epochs", "train.max_train_epochs", I, false},
    {"seed", "train.seed", I, false},
    {"train_batch_size", "train.batch_size", I, false},
    {"gradient_checkpointing", "train.gradient_checkpointing", B, false},
    {"gradient_accumulation_steps", "train.gradient_accumulation_steps", I, false},
    {"mixed_precision", "train.mixed_precision", S, false},
    {"full_fp16", "train.full_fp16", B, false},
    {"full_bf16", "train.full_bf16", B, false},
    {"fp8_base", "train.fp8_base", B, false},
    {"max_data_loader_n_workers", "train.max_data_loader_n_workers", I, false},
    {"persistent_data_loader_workers", "train.persistent_data_loader_workers", B, false},
    {"mem_eff_attn", "train.mem_eff_attn", B, false},
    {"xformers", "train.xformers", B, false},
    {"sdpa", "train.sdpa", B, false},
    {"torch_compile", "train.torch_compile", B, false},
    {"dynamo_backend", "train.dynamo_backend", S, false},
    {"lowram", "train.lowram", B, false},
    {"highvram", "train.highvram", B, false},
    {"noise_offset", "train.noise_offset", F, false},
    {"noise_offset_random_strength", "train.noise_offset_random_strength", B, false},
    {"multires_noise_iterations", "train.multires_noise_iterations", I, false},
    {"multires_noise_discount", "train.multires_noise_discount", F, false},
    {"adaptive_noise_scale", "train.adaptive_noise_scale", F, false},
    {"ip_noise_gamma", "train.ip_noise_gamma", F, false},
    {"ip_noise_gamma_random_strength", "train.ip_noise_gamma_random_strength", B, false},
    {"min_timestep", "train.min_timestep", I, false},
    {"max_timestep", "train.max_timestep", I, false},
    {"loss_type", "train.loss_type", S, false},
    {"huber_schedule", "train.huber_schedule", S, false},
    {"huber_c", "train.huber_c", F, false},
    {"huber_scale", "train.huber_scale", F, false},
    {"min_snr_gamma", "train.min_snr_gamma", F, false},
    {"scale_v_pred_loss_like_noise_pred", "train.scale_v_pred_loss_like_noise_pred", B, false},
    {"v_pred_like_loss", "train.v_pred_like_loss", F, false},
    {"debiased_estimation_loss", "train.debiased_estimation_loss", B, false},
    {"weighted_captions", "train.weighted_captions", B, false},
    {"prior_loss_weight", "train.prior_loss_weight", F, false},
    {"masked_loss", "train.masked_loss", B, false},
    {"resume", "train.resume", S, false},
    {"skip_bad_files", "train.skip_bad_files", B, false},  // sumi's own (kohya has no such flag)
};

// --- train_textual_inversion.py, train_db.py, fine_tune.py
constexpr KohyaFlag kTrainScriptFlags[] = {
    {"token_string", "train.token_string", S, false},
    {"init_word", "train.init_word", S, false},
    {"weights", "train.weights", S, false},
    {"num_vectors_per_token", "train.num_vectors_per_token", I, false},
    {"use_object_template", "train.use_object_template", B, false},
    {"use_style_template", "train.use_style_template", B, false},
    {"train_text_encoder", "train.train_text_encoder", B, false},
    {"stop_text_encoder_training", "train.stop_text_encoder_training", I, false},
    {"skip_until_initial_step", "train.skip_until_initial_step", B, false},
    {"initial_epoch", "train.initial_epoch", I, false},
    {"initial_step", "train.initial_step", I, false},
    {"ddp_timeout", "train.ddp_timeout", I, false},
    {"ddp_gradient_as_bucket_view", "train.ddp_gradient_as_bucket_view", B, false},
    {"ddp_static_graph", "train.ddp_static_graph", B, false},
};

// --- sampling during training
constexpr KohyaFlag kSampleFlags[] = {
    {"sample_every_n_steps", "sample.every_n_steps", I, false},
    {"sample_every_n_epochs", "sample.every_n_epochs", I, false},
    {"sample_at_first", "sample.at_first", B, false},
    {"sample_prompts", "sample.prompts", S, false},
    {"sample_sampler", "sample.sampler", S, false},
};

// --- output, saving and logging
constexpr KohyaFlag kOutputFlags[] = {
    {"output_dir", "output.output_dir", S, false},
    {"output_name", "output.output_name", S, false},
    {"save_model_as", "output.save_model_as", S, false},
    {"use_safetensors", "output.use_safetensors", B, false},
    {"save_precision", "output.save_precision", S, false},
    {"save_every_n_epochs", "output.save_every_n_epochs", I, false},
    {"save_every_n_steps", "output.save_every_n_steps", I, false},
    {"save_n_epoch_ratio", "output.save_n_epoch_ratio", I, false},
    {"save_last_n_epochs", "output.save_last_n_epochs", I, false},
    {"save_last_n_epochs_state", "output.save_last_n_epochs_state", I, false},
    {"save_last_n_steps", "output.save_last_n_steps", I, false},
    {"save_last_n_steps_state", "output.save_last_n_steps_state", I, false},
    {"save_state", "output.save_state", B, false},
    {"save_state_on_train_end", "output.save_state_on_train_end", B, false},
    {"no_metadata", "output.no_metadata", B, false},
    {"training_comment", "output.training_comment", S, false},
    {"metadata_title", "output.metadata_title", S, false},
    {"metadata_author", "output.metadata_author", S, false},
    {"metadata_description", "output.metadata_description", S, false},
    {"metadata_license", "output.metadata_license", S, false},
    {"metadata_tags", "output.metadata_tags", S, false},
    {"logging_dir", "output.logging_dir", S, false},
    {"log_with", "output.log_with", S, false},
    {"log_prefix", "output.log_prefix", S, false},
    {"log_tracker_name", "output.log_tracker_name", S, false},
    {"log_tracker_config", "output.log_tracker_config", S, false},
    {"log_config", "output.log_config", B, false},
    {"wandb_run_name", "output.wandb_run_name", S, false},
    {"wandb_api_key", "output.wandb_api_key", S, false},
    {"huggingface_repo_id", "output.huggingface_repo_id", S, false},
    {"huggingface_repo_type", "output.huggingface_repo_type", S, false},
    {"huggingface_path_in_repo", "output.huggingface_path_in_repo", S, false},
    {"huggingface_token", "output.huggingface_token", S, false},
    {"huggingface_repo_visibility", "output.huggingface_repo_visibility", S, false},
    {"save_state_to_huggingface", "output.save_state_to_huggingface", B, false},
    {"resume_from_huggingface", "output.resume_from_huggingface", B, false},
    {"async_upload", "output.async_upload", B, false},
};

// --- the (single) dataset described by flags
constexpr KohyaFlag kDatasetFlags[] = {
    {"train_data_dir", "datasets.train_data_dir", S, false},
    {"reg_data_dir", "datasets.reg_data_dir", S, false},
    {"in_json", "datasets.in_json", S, false},
    {"dataset_repeats", "datasets.dataset_repeats", I, false},
    {"dataset_config", "datasets.dataset_config", S, false},
    {"dataset_class", "datasets.dataset_class", S, false},
    {"conditioning_data_dir", "datasets.conditioning_data_dir", S, false},
    {"resolution", "datasets.resolution", S, false},
    {"cache_info", "datasets.cache_info", B, false},
    {"shuffle_caption", "datasets.shuffle_caption", B, false},
    {"caption_separator", "datasets.caption_separator", S, false},
    {"caption_extension", "datasets.caption_extension", S, false},
    {"caption_extention", "datasets.caption_extension", S, false},  // kohya's old spelling
    {"keep_tokens", "datasets.keep_tokens", I, false},
    {"keep_tokens_separator", "datasets.keep_tokens_separator", S, false},
    {"secondary_separator", "datasets.secondary_separator", S, false},
    {"enable_wildcard", "datasets.enable_wildcard", B, false},
    {"caption_prefix", "datasets.caption_prefix", S, false},
    {"caption_suffix", "datasets.caption_suffix", S, false},
    {"color_aug", "datasets.color_aug", B, false},
    {"flip_aug", "datasets.flip_aug", B, false},
    {"face_crop_aug_range", "datasets.face_crop_aug_range", S, false},
    {"random_crop", "datasets.random_crop", B, false},
    {"resize_interpolation", "datasets.resize_interpolation", S, false},
    {"debug_dataset", "datasets.debug_dataset", B, false},
    {"cache_latents", "datasets.cache_latents", B, false},
    {"vae_batch_size", "datasets.vae_batch_size", I, false},
    {"cache_latents_to_disk", "datasets.cache_latents_to_disk", B, false},
    {"cache_text_encoder_outputs", "datasets.cache_text_encoder_outputs", B, false},
    {"cache_text_encoder_outputs_to_disk", "datasets.cache_text_encoder_outputs_to_disk", B, false},
    {"enable_bucket", "datasets.enable_bucket", B, false},
    {"min_bucket_reso", "datasets.min_bucket_reso", I, false},
    {"max_bucket_reso", "datasets.max_bucket_reso", I, false},
    {"bucket_reso_steps", "datasets.bucket_reso_steps", I, false},
    {"bucket_no_upscale", "datasets.bucket_no_upscale", B, false},
    {"token_warmup_min", "datasets.token_warmup_min", I, false},
    {"token_warmup_step", "datasets.token_warmup_step", F, false},
    {"alpha_mask", "datasets.alpha_mask", B, false},
    {"caption_dropout_rate", "datasets.caption_dropout_rate", F, false},
    {"caption_dropout_every_n_epochs", "datasets.caption_dropout_every_n_epochs", I, false},
    {"caption_tag_dropout_rate", "datasets.caption_tag_dropout_rate", F, false},
};

// --- files of flags
constexpr KohyaFlag kFlagFileFlags[] = {
    {"config_file", "", S, false},    // read by apply_kohya_args itself
    {"output_config", "", B, false},  // kohya writes the flags out and exits: no recipe meaning
};

}  // namespace

const std::vector<KohyaFlag>& kohya_flags() {
  static const std::vector<KohyaFlag> flags = [] {
    std::vector<KohyaFlag> all;
    auto add = [&all](const auto& section) { all.insert(all.end(), std::begin(section), std::end(section)); };
    add(kModelFlags);
    add(kNetworkFlags);
    add(kOptimizerFlags);
    add(kLrSchedulerFlags);
    add(kNoiseSchedulerFlags);
    add(kTrainFlags);
    add(kTrainScriptFlags);
    add(kSampleFlags);
    add(kOutputFlags);
    add(kDatasetFlags);
    add(kFlagFileFlags);
    return all;
  }();
  return flags;
}

const KohyaFlag* find_kohya_flag(std::string_view name) {
  const auto& flags = kohya_flags();
  auto it = std::find_if(flags.begin(), flags.end(), [&](const KohyaFlag& f) { return name == f.name; });
  return it == flags.end() ? nullptr : &*it;
}

}  // namespace sumi::recipe
