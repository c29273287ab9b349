// Network training (kohya train_network.py): a frozen model plugin, a network plugin attached at
// runtime, the DDPM noise schedule, kohya's loss options, an optimizer and LR-scheduler plugin,
// batches from the dataset layer. `sumi train` builds a TrainSettings from a recipe + kohya flags.
#pragma once

#include "loss.h"
#include "noise.h"
#include "sample_images.h"
#include "train_log.h"

#include <sumi/datasets/config.h>

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

namespace sumi::app {

// What a run trains, as kohya's scripts imply it: train_network.py (a network plugin),
// train_db.py / fine_tune.py (the model's own UNet, optionally its text encoders; fine-tuning is
// DreamBooth over --in_json metadata datasets) and train_textual_inversion.py (new tokens).
enum class TrainMode { network, dreambooth, textual_inversion };

// "network", "dreambooth", "fine_tune" (= dreambooth) or "textual_inversion"; throws a UserError otherwise.
TrainMode parse_train_mode(const std::string& name);

// kohya's caption templates for Textual Inversion (imagenet_templates_small and
// imagenet_style_templates_small); "{}" marks the token.
const std::vector<std::string>& ti_object_templates();
const std::vector<std::string>& ti_style_templates();

struct TrainSettings {
  TrainMode mode = TrainMode::network;
  // Where the run computes (--device); the data, its caches and the random draws stay on the CPU.
  c10::Device device{c10::kCPU};
  // Textual Inversion: the new token, the word its vectors start from ("" = random), how many
  // vectors, and "object"/"style" to replace every caption by a random kohya template ("" = keep).
  std::string token_string, init_word, ti_template;
  int64_t num_vectors_per_token = 1;
  // Textual Inversion: an embedding file whose vectors the token starts from (kohya's --weights;
  // emb_params / A1111 .pt for SD 1.x/2.x, clip_l + clip_g for SDXL); overrides init_word.
  std::string ti_weights;
  // DreamBooth / fine-tuning: train the text encoder(s) too; stop training them after this many
  // steps (train_db's --stop_text_encoder_training; < 0 = never). The model is saved as a single
  // .safetensors file ("safetensors") or a diffusers folder ("diffusers").
  bool train_text_encoder = false;
  // DreamBooth without --train_text_encoder or --stop_text_encoder_training: the text encoders
  // are trained when the model's kohya script does so by default (train_db.py does, sdxl_train.py
  // does not; the model's describe says which).
  bool train_text_encoder_by_model = false;
  int64_t stop_text_encoder_training = -1;
  std::string save_model_as = "safetensors";
  // [model]
  std::string model_path, family;
  std::map<std::string, std::string> model_params;  // the model plugin's own keys (vae, clip_skip, ...)
  bool v_parameterization = false;                  // also in model_params; decides the loss target
  // [network] plugin name, its plugin parameters (text values), initial weights, multiplier
  std::string network_type;
  std::map<std::string, std::string> network_params;
  // What kohya writes of the network: ss_network_module is --network_module as the user gave it
  // ("networks.lora", "lycoris.kohya", a path; empty: "networks.<network_type>"), ss_network_args
  // the given --network_args items as text, in order (kohya's net_kwargs; none: no key).
  std::string network_module;
  std::vector<std::pair<std::string, std::string>> network_args;
  std::string network_weights;
  double network_multiplier = 1.0;
  // kohya's --base_weights / --base_weights_multiplier: network files merged into the model before
  // the network is created, each at its multiplier (missing ones 1.0).
  std::vector<std::string> base_weights;
  std::vector<double> base_weights_multiplier;
  // kohya's --dim_from_weights: the network takes its modules and ranks from network_weights.
  bool dim_from_weights = false;
  // kohya's --scale_weight_norms: after each step the network's max-norm rule (0 = off).
  double scale_weight_norms = 0;
  // [optimizer]
  std::string optimizer_type;
  std::map<std::string, std::string> optimizer_params;
  double learning_rate = 1e-4;
  std::optional<double> unet_lr, text_encoder_lr;
  // SDXL: per text encoder (sdxl_train's --learning_rate_te1 / --learning_rate_te2; model training).
  std::optional<double> text_encoder_lr1, text_encoder_lr2;
  // SDXL model training: 23 UNet learning rates (sdxl_train's --block_lr); 0 = that block is not trained.
  std::vector<double> block_lr;
  // [lr_scheduler]
  std::string lr_scheduler_type = "constant";
  std::map<std::string, std::string> lr_scheduler_params;
  int64_t lr_warmup_steps = 0;
  // [noise_scheduler]
  std::string noise_scheduler_type = "ddpm";
  std::map<std::string, std::string> noise_scheduler_params;
  // [train]
  // zero_terminal_snr is the noise scheduler's rescale_betas_zero_snr; SNR loss weights still use
  // the schedule before the rescale, as kohya.
  int64_t max_train_steps = 1600;
  std::optional<int64_t> max_train_epochs;
  uint64_t seed = 0;
  int64_t gradient_accumulation_steps = 1;
  double max_grad_norm = 1.0;
  std::string mixed_precision = "no";  // "no", "bf16" or "fp16" (fp16 only where CPU fp16 autocast works)
  bool full_bf16 = false;              // network parameters and frozen model weights in bf16 (needs bf16)
  bool gradient_checkpointing = false; // the model plugin's gradient_checkpointing option
  // kohya's --mem_eff_attn / --xformers / --sdpa: the model plugin's mem_eff_attn option (attention
  // in small query chunks); --lowram: that and VAE slicing (lower peak memory, same numbers).
  bool mem_eff_attn = false;
  bool lowram = false;
  NoiseOptions noise;                  // noise offset, multires, ip_noise_gamma, timestep range
  LossOptions loss;                    // loss_type, huber_*, min-SNR and the other SNR weightings
  double prior_loss_weight = 1.0;
  // sumi's --skip_bad_files: unreadable images / captions are left out (each named in a warning)
  // instead of refusing the run before it starts.
  bool skip_bad_files = false;
  // [sample], and TensorBoard logging from [output]
  SampleOptions sample;
  LogOptions log;
  // [datasets]: kohya argparse names -> values, for the dataset layer
  datasets::CliOptions dataset_args;
  std::string dataset_config;
  // [output]
  std::string output_dir, output_name = "last", save_precision = "float";
  int64_t save_every_n_steps = 0, save_every_n_epochs = 0;
  // kohya's --save_last_n_epochs / --save_last_n_steps (and their _state variants, which default
  // to them): older periodic saves (files / state folders) are removed as new ones are written.
  std::optional<int64_t> save_last_n_epochs, save_last_n_epochs_state, save_last_n_steps, save_last_n_steps_state;
  // --save_state: with every save, also a "<name>-state" folder holding everything a resumed
  // run needs (network, optimizer state, step, epoch, position in the epoch, RNG streams).
  bool save_state = false;
  // --resume: such a folder; the run continues exactly where it was saved.
  std::string resume;
  // kohya's metadata flags (train_metadata.h): ss_training_comment and no_metadata (only the
  // minimum ss_* keys) for networks; modelspec.title (unset: output_name), .author,
  // .description, .license, .tags for every saved file.
  std::optional<std::string> training_comment;
  bool no_metadata = false;
  std::optional<std::string> metadata_title, metadata_author, metadata_description, metadata_license, metadata_tags;
};

struct TrainResult {
  std::vector<double> losses;  // one per optimizer step (mean over accumulated micro-batches)
  std::vector<double> lrs;     // the first group's learning rate at each step
  std::vector<double> average_losses;  // loss/average (kohya's avr_loss) after each step
  std::string output_file;
  std::string event_file;      // TensorBoard event file ("" without logging_dir)
  std::string loss_curve;      // <output_dir>/<output_name>.loss.png
  std::vector<std::string> samples;  // sample images written, in order
  int64_t steps = 0;
  int64_t skipped_steps = 0;   // fp16: optimizer steps skipped for inf/NaN gradients
  bool vae_released = false;   // the model's VAE was freed after latent caching (release_part)
  // --scale_weight_norms, per optimizer step: kohya's keys_scaled, average and max key norm.
  std::vector<int64_t> keys_scaled;
  std::vector<double> average_key_norms, max_key_norms;
};

// The engine's entry: runs the training of `s.mode` (a network, DreamBooth / fine-tuning, Textual
// Inversion) to the end and writes its files. Plugins come from `plugin_dirs` (plus the default
// search path). Throws host::UserError (and the datasets' errors) naming the setting or file.
TrainResult train(const TrainSettings& s, const std::vector<std::string>& plugin_dirs, bool progress = true);

// The same as train() (its first name, from when only networks were trained).
TrainResult train_network(const TrainSettings& s, const std::vector<std::string>& plugin_dirs, bool progress = true);

}  // namespace sumi::app
