// The keys the host owns in each recipe section. Later work adds rows here (train.*,
// output.*, sample.*) as the host learns to act on them; kohya flags mapped to a key that
// is not in this table (nor in a plugin's schema) are rejected as unsupported.
#include "sumi/recipe/schema.h"

namespace sumi::recipe {

namespace {

struct HostKeyRow {
  const char* section;
  const char* key;
  int type;
  const char* default_value;  // recipe syntax; nullptr = none
  bool optional;              // without a default: may stay unset (otherwise required)
  const char* doc;
};

constexpr bool kRequired = false;
constexpr bool kOptional = true;

const HostKeyRow kHostKeys[] = {
    {"model", "type", SUMI_PARAM_STRING, nullptr, kRequired, "model plugin (e.g. \"sd\")"},
    {"model", "path", SUMI_PARAM_STRING, nullptr, kRequired,
     "checkpoint file or diffusers folder to load"},
    {"model", "v2", SUMI_PARAM_BOOL, "false", kRequired, "the model is SD 2.x (when the file cannot tell)"},
    {"model", "base_weights", kParamStringList, nullptr, kOptional,
     "network files merged into the model before training, each by the plugin whose probe reads it (train_network.py --base_weights)"},
    {"model", "base_weights_multiplier", SUMI_PARAM_DOUBLE_LIST, nullptr, kOptional,
     "multiplier of each base_weights file (missing entries 1.0; --base_weights_multiplier)"},

    {"network", "type", SUMI_PARAM_STRING, nullptr, kRequired, "network plugin (e.g. \"lora\")"},
    {"network", "multiplier", SUMI_PARAM_DOUBLE, "1.0", kRequired,
     "strength the network is applied with"},
    {"network", "weights", SUMI_PARAM_STRING, nullptr, kOptional,
     "initial network weights to load before training"},
    {"network", "dim_from_weights", SUMI_PARAM_BOOL, nullptr, kOptional,
     "create the network with the modules and ranks of the weights file (kohya --dim_from_weights)"},
    {"network", "scale_weight_norms", SUMI_PARAM_DOUBLE, nullptr, kOptional,
     "max norm of each module's weight delta, applied after every step (kohya --scale_weight_norms)"},

    // kohya's default optimizer (--optimizer_type "" means AdamW).
    {"optimizer", "type", SUMI_PARAM_STRING, "\"adamw\"", kRequired, "optimizer plugin (e.g. \"adamw\")"},
    // kohya's train_network default (--learning_rate 2e-6).
    {"optimizer", "learning_rate", SUMI_PARAM_DOUBLE, "2e-6", kRequired,
     "base learning rate of every parameter group"},
    {"optimizer", "unet_lr", SUMI_PARAM_DOUBLE, nullptr, kOptional, "learning rate of the UNet group"},
    {"optimizer", "text_encoder_lr", SUMI_PARAM_DOUBLE, nullptr, kOptional, "learning rate of the text-encoder groups"},
    {"optimizer", "text_encoder_lr1", SUMI_PARAM_DOUBLE, nullptr, kOptional,
     "SDXL: learning rate of text_encoder (CLIP-L) only (sdxl_train's --learning_rate_te1)"},
    {"optimizer", "text_encoder_lr2", SUMI_PARAM_DOUBLE, nullptr, kOptional,
     "SDXL: learning rate of text_encoder_2 (OpenCLIP-G) only (sdxl_train's --learning_rate_te2)"},
    {"optimizer", "block_lr", SUMI_PARAM_DOUBLE_LIST, nullptr, kOptional,
     "SDXL fine-tuning: 23 UNet learning rates (time/label embedding, input_blocks 0-8, middle_block 0-2, "
     "output_blocks 0-8, out); 0 leaves that block untrained"},

    {"lr_scheduler", "type", SUMI_PARAM_STRING, "\"constant\"", kRequired,
     "learning-rate schedule plugin"},
    {"lr_scheduler", "warmup_steps", SUMI_PARAM_INT, "0", kRequired,
     "optimizer steps of linear warmup"},

    {"noise_scheduler", "type", SUMI_PARAM_STRING, "\"ddpm\"", kRequired,
     "noise scheduler plugin (training: the DDPM schedule, as kohya)"},

    {"train", "max_train_steps", SUMI_PARAM_INT, "1600", kRequired, "optimizer steps to train"},
    {"train", "seed", SUMI_PARAM_INT, nullptr, kOptional, "random seed (random when unset)"},
    {"train", "skip_bad_files", SUMI_PARAM_BOOL, "false", kRequired,
     "leave out unreadable images / captions (each named in a warning) instead of refusing the run"},
    {"train", "max_data_loader_n_workers", SUMI_PARAM_INT, "8", kRequired,
     "threads preparing the next batches (0: on the training thread; capped at the core count)"},
    {"train", "persistent_data_loader_workers", SUMI_PARAM_BOOL, "false", kRequired,
     "keep the loader threads between epochs"},
    {"train", "max_train_epochs", SUMI_PARAM_INT, nullptr, kOptional, "train this many epochs (overrides max_train_steps)"},
    {"train", "batch_size", SUMI_PARAM_INT, "1", kRequired, "images per batch (kohya --train_batch_size)"},
    {"train", "gradient_accumulation_steps", SUMI_PARAM_INT, "1", kRequired, "micro-batches per optimizer step"},
    {"train", "max_grad_norm", SUMI_PARAM_DOUBLE, "1.0", kRequired, "clip the gradient norm (0 = off)"},
    {"train", "mixed_precision", SUMI_PARAM_STRING, "\"no\"", kRequired,
     "\"no\", \"bf16\" (autocast) or \"fp16\" (autocast + loss scaling; needs fp16 CPU kernels)"},
    {"train", "full_bf16", SUMI_PARAM_BOOL, "false", kRequired, "network and model weights in bf16 (needs mixed_precision bf16)"},
    {"train", "gradient_checkpointing", SUMI_PARAM_BOOL, "false", kRequired,
     "recompute activations in backward to save memory (the model plugin's option)"},
    {"train", "mem_eff_attn", SUMI_PARAM_BOOL, "false", kRequired,
     "memory-efficient attention: score matrices in small query chunks (the model plugin's mem_eff_attn option)"},
    {"train", "xformers", SUMI_PARAM_BOOL, "false", kRequired, "the same as mem_eff_attn (kohya's name)"},
    {"train", "sdpa", SUMI_PARAM_BOOL, "false", kRequired, "the same as mem_eff_attn (kohya's name)"},
    {"train", "lowram", SUMI_PARAM_BOOL, "false", kRequired, "lower peak memory: mem_eff_attn and VAE slicing"},
    {"train", "noise_offset", SUMI_PARAM_DOUBLE, "0", kRequired, "add per-channel offset noise of this strength"},
    {"train", "noise_offset_random_strength", SUMI_PARAM_BOOL, "false", kRequired,
     "offset strength uniform in [0, noise_offset) per batch"},
    {"train", "adaptive_noise_scale", SUMI_PARAM_DOUBLE, nullptr, kOptional,
     "add this times |latent channel mean| to the noise offset (needs noise_offset)"},
    {"train", "multires_noise_iterations", SUMI_PARAM_INT, "0", kRequired, "multi-resolution (pyramid) noise levels (0 = off)"},
    {"train", "multires_noise_discount", SUMI_PARAM_DOUBLE, "0.3", kRequired, "weight factor per multires noise level"},
    {"train", "ip_noise_gamma", SUMI_PARAM_DOUBLE, "0", kRequired, "input perturbation noise strength (0 = off; 0.1 is common)"},
    {"train", "ip_noise_gamma_random_strength", SUMI_PARAM_BOOL, "false", kRequired,
     "input perturbation strength uniform in [0, ip_noise_gamma) per batch"},
    {"train", "min_timestep", SUMI_PARAM_INT, "0", kRequired, "lowest training timestep"},
    {"train", "max_timestep", SUMI_PARAM_INT, "1000", kRequired, "training timesteps are below this"},
    {"train", "loss_type", SUMI_PARAM_STRING, "\"l2\"", kRequired, "l2, l1, huber or smooth_l1"},
    {"train", "huber_schedule", SUMI_PARAM_STRING, "\"snr\"", kRequired, "Huber threshold per timestep: constant, exponential or snr"},
    {"train", "huber_c", SUMI_PARAM_DOUBLE, "0.1", kRequired, "Huber threshold (decay for the exponential schedule)"},
    {"train", "huber_scale", SUMI_PARAM_DOUBLE, "1.0", kRequired, "scale of the constant / exponential Huber threshold"},
    {"train", "min_snr_gamma", SUMI_PARAM_DOUBLE, nullptr, kOptional, "min-SNR loss weighting gamma (5 is common)"},
    {"train", "scale_v_pred_loss_like_noise_pred", SUMI_PARAM_BOOL, "false", kRequired,
     "weight the v loss by SNR / (SNR + 1) (needs v_parameterization)"},
    {"train", "v_pred_like_loss", SUMI_PARAM_DOUBLE, nullptr, kOptional, "add this times a v-prediction-like loss (eps models)"},
    {"train", "debiased_estimation_loss", SUMI_PARAM_BOOL, "false", kRequired, "weight the loss by 1 / sqrt(SNR) (1 / (SNR + 1) for v)"},
    {"train", "prior_loss_weight", SUMI_PARAM_DOUBLE, "1.0", kRequired, "loss weight of regularization images"},
    {"train", "resume", SUMI_PARAM_STRING, nullptr, kOptional, "continue from a folder written by save_state"},
    {"train", "mode", SUMI_PARAM_STRING, nullptr, kOptional,
     "network, dreambooth, fine_tune or textual_inversion (unset: network with [network], textual_inversion with "
     "token_string, fine_tune with in_json, else dreambooth)"},
    {"train", "token_string", SUMI_PARAM_STRING, nullptr, kOptional, "Textual Inversion: the new token to train"},
    {"train", "init_word", SUMI_PARAM_STRING, nullptr, kOptional, "Textual Inversion: the word the token's vectors start from"},
    {"train", "num_vectors_per_token", SUMI_PARAM_INT, "1", kRequired, "Textual Inversion: vectors of the token"},
    {"train", "use_object_template", SUMI_PARAM_BOOL, "false", kRequired,
     "Textual Inversion: captions are kohya's object templates (\"a photo of a <token>\", ...)"},
    {"train", "use_style_template", SUMI_PARAM_BOOL, "false", kRequired,
     "Textual Inversion: captions are kohya's style templates (\"a painting in the style of <token>\", ...)"},
    {"train", "weights", SUMI_PARAM_STRING, nullptr, kOptional,
     "Textual Inversion: start the token's vectors from this embedding file (emb_params, or clip_l/clip_g for SDXL)"},
    {"train", "train_text_encoder", SUMI_PARAM_BOOL, "false", kRequired,
     "fine-tuning: also train the text encoder(s) (DreamBooth trains them unless stop_text_encoder_training < 0)"},
    {"train", "stop_text_encoder_training", SUMI_PARAM_INT, nullptr, kOptional,
     "DreamBooth: stop training the text encoder(s) after this many steps (< 0: never train them)"},

    {"output", "output_dir", SUMI_PARAM_STRING, nullptr, kRequired,
     "folder the trained files are written to"},
    // kohya names the final file "last" when --output_name is not given.
    {"output", "output_name", SUMI_PARAM_STRING, "\"last\"", kRequired,
     "base file name of the trained files"},
    {"output", "save_model_as", SUMI_PARAM_STRING, "\"safetensors\"", kRequired,
     "file format: safetensors (networks, embeddings, one-file models) or diffusers (a model folder)"},
    {"output", "save_precision", SUMI_PARAM_STRING, "\"float\"", kRequired, "float, fp16 or bf16"},
    {"output", "save_every_n_steps", SUMI_PARAM_INT, "0", kRequired, "also save every n steps (0 = off)"},
    {"output", "save_every_n_epochs", SUMI_PARAM_INT, "0", kRequired, "also save every n epochs (0 = off)"},
    {"output", "save_state", SUMI_PARAM_BOOL, "false", kRequired, "with each save, write a <name>-state folder for --resume"},
    {"output", "save_last_n_epochs", SUMI_PARAM_INT, nullptr, kOptional,
     "keep only the files of the last n epoch saves (older ones are removed)"},
    {"output", "save_last_n_epochs_state", SUMI_PARAM_INT, nullptr, kOptional,
     "keep only the last n epoch state folders (default: save_last_n_epochs)"},
    {"output", "save_last_n_steps", SUMI_PARAM_INT, nullptr, kOptional,
     "keep only the step saves of the last n steps (older ones are removed)"},
    {"output", "save_last_n_steps_state", SUMI_PARAM_INT, nullptr, kOptional,
     "keep only the step state folders of the last n steps (default: save_last_n_steps)"},
    {"output", "logging_dir", SUMI_PARAM_STRING, nullptr, kOptional,
     "write TensorBoard logs to <logging_dir>/<log_prefix><timestamp>/<log_tracker_name>"},
    {"output", "log_prefix", SUMI_PARAM_STRING, "\"\"", kRequired, "prefix of the per-run log folder"},
    {"output", "log_with", SUMI_PARAM_STRING, "\"\"", kRequired, "\"tensorboard\" (the default with logging_dir)"},
    {"output", "log_tracker_name", SUMI_PARAM_STRING, "\"network_train\"", kRequired, "run name: the log sub-folder"},
    {"output", "training_comment", SUMI_PARAM_STRING, nullptr, kOptional, "networks: stored as ss_training_comment"},
    {"output", "no_metadata", SUMI_PARAM_BOOL, "false", kRequired,
     "networks: only kohya's minimum ss_* keys (base model, network module/dim/alpha/args) besides modelspec.*"},
    {"output", "metadata_title", SUMI_PARAM_STRING, nullptr, kOptional, "modelspec.title of saved files (unset: output_name)"},
    {"output", "metadata_author", SUMI_PARAM_STRING, nullptr, kOptional, "modelspec.author of saved files"},
    {"output", "metadata_description", SUMI_PARAM_STRING, nullptr, kOptional, "modelspec.description of saved files"},
    {"output", "metadata_license", SUMI_PARAM_STRING, nullptr, kOptional, "modelspec.license of saved files"},
    {"output", "metadata_tags", SUMI_PARAM_STRING, nullptr, kOptional, "modelspec.tags of saved files (comma-separated)"},

    {"sample", "prompts", SUMI_PARAM_STRING, nullptr, kOptional, "prompt file (.txt, .toml, .json) for sample images"},
    {"sample", "every_n_steps", SUMI_PARAM_INT, "0", kRequired, "sample every n steps (0 = off)"},
    {"sample", "every_n_epochs", SUMI_PARAM_INT, "0", kRequired, "sample every n epochs (0 = off; overrides every_n_steps)"},
    {"sample", "at_first", SUMI_PARAM_BOOL, "false", kRequired, "also sample before training"},
    {"sample", "sampler", SUMI_PARAM_STRING, "\"ddim\"", kRequired, "sampler of the sample images (a noise_scheduler plugin)"},
};

}  // namespace

std::vector<ParamSpec> host_schema(std::string_view section) {
  std::vector<ParamSpec> out;
  for (const auto& row : kHostKeys) {
    if (section != row.section) continue;
    std::optional<std::string> def;
    if (row.default_value) def = row.default_value;
    out.emplace_back(row.key, row.type, def, row.doc, row.optional);
  }
  return out;
}

}  // namespace sumi::recipe
