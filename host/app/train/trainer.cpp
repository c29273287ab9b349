// The network-training loop. Order of operations follows kohya's train_network.py so that a
// user's settings mean the same thing: encode latents (no grad), draw noise and timesteps
// (noise.h), noise the latents, predict, per-sample loss against the noise (or the v target),
// weight (prior loss, SNR options; loss.h), average, backward; every
// gradient_accumulation_steps: (unscale,) clip, step the optimizer at the scheduled learning
// rates; log (train_log.h) and sample (sample_images.h) as kohya does.
#include "trainer.h"

#include "app/network_settings.h"

#include "app/app.h"
#include "core/error.h"
#include "core/handle_scope.h"
#include "core/op_bridge.h"
#include "core/progress.h"
#include "core/runtime.h"
#include "core/tensor_handle.h"
#include "sumi/io/safetensors_torch.h"
#include "app/train/network_file.h"
#include "app/train/train_metadata.h"
#include "app/train/latent_cache.h"
#include "app/train/precision.h"
#include "app/train/model_parts.h"
#include "app/train/optimizer_rules.h"
#include "logging/loss_curve.h"

#include <sumi/datasets/dataset.h>
#include <sumi/datasets/random.h>

#include "batch_tensor.h"

#include <ATen/ATen.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include <ATen/CPUGeneratorImpl.h>

#include <mutex>
#include <sstream>

namespace fs = std::filesystem;

namespace sumi::app {

namespace {

using Handles = host::HandleScope;

// kohya's precision names -> the dtype the model's save slots take.
sumi_dtype save_dtype(const std::string& precision) {
  if (precision == "float") return sumi_dtype{SUMI_DTYPE_CODE_FLOAT, 32, 1};
  if (precision == "fp16") return sumi_dtype{SUMI_DTYPE_CODE_FLOAT, 16, 1};
  if (precision == "bf16") return sumi_dtype{SUMI_DTYPE_CODE_BFLOAT, 16, 1};
  throw host::UserError("save_precision: expected float, fp16 or bf16, got '" + precision + "'");
}

const char* mode_name(TrainMode m) {
  switch (m) {
    case TrainMode::network: return "network";
    case TrainMode::dreambooth: return "dreambooth";
    case TrainMode::textual_inversion: return "textual_inversion";
  }
  return "?";
}

}  // namespace

TrainMode parse_train_mode(const std::string& name) {
  if (name == "network") return TrainMode::network;
  if (name == "dreambooth" || name == "fine_tune") return TrainMode::dreambooth;
  if (name == "textual_inversion") return TrainMode::textual_inversion;
  throw host::UserError("[train] mode: expected \"network\", \"dreambooth\", \"fine_tune\" or \"textual_inversion\", got \"" +
                        name + "\"");
}

const std::vector<std::string>& ti_object_templates() {
  static const std::vector<std::string> t = {
      "a photo of a {}",         "a rendering of a {}",     "a cropped photo of the {}", "the photo of a {}",
      "a photo of a clean {}",   "a photo of a dirty {}",   "a dark photo of the {}",    "a photo of my {}",
      "a photo of the cool {}",  "a close-up photo of a {}", "a bright photo of the {}",  "a cropped photo of a {}",
      "a photo of the {}",       "a good photo of the {}",  "a photo of one {}",        "a close-up photo of the {}",
      "a rendition of the {}",   "a photo of the clean {}", "a rendition of a {}",       "a photo of a nice {}",
      "a good photo of a {}",    "a photo of the nice {}",  "a photo of the small {}",   "a photo of the weird {}",
      "a photo of the large {}", "a photo of a cool {}",    "a photo of a small {}",
  };
  return t;
}

const std::vector<std::string>& ti_style_templates() {
  static const std::vector<std::string> t = {
      "a painting in the style of {}",         "a rendering in the style of {}",      "a cropped painting in the style of {}",
      "the painting in the style of {}",       "a clean painting in the style of {}", "a dirty painting in the style of {}",
      "a dark painting in the style of {}",    "a picture in the style of {}",        "a cool painting in the style of {}",
      "a close-up painting in the style of {}", "a bright painting in the style of {}", "a cropped painting in the style of {}",
      "a good painting in the style of {}",    "a close-up painting in the style of {}", "a rendition in the style of {}",
      "a nice painting in the style of {}",    "a small painting in the style of {}", "a weird painting in the style of {}",
      "a large painting in the style of {}",
  };
  return t;
}

TrainResult train_network(const TrainSettings& s, const std::vector<std::string>& plugin_dirs, bool progress) {
  using clock = std::chrono::system_clock;
  const auto started = clock::now();
  CommonOptions common;
  common.plugin_dirs = plugin_dirs;
  auto pm = make_plugin_manager(common);
  host::Registry registry;
  at::manual_seed(s.seed);

  if (s.mixed_precision != "no" && s.mixed_precision != "bf16" && s.mixed_precision != "fp16")
    throw host::UserError("[train] mixed_precision: expected \"no\", \"bf16\" or \"fp16\", got \"" + s.mixed_precision + "\"");
  if (s.mixed_precision == "fp16" && !cpu_fp16_autocast_available())
    throw host::UserError("[train] mixed_precision = \"fp16\": this libtorch build cannot compute in fp16 on the CPU "
                          "(no fp16 matmul/conv kernels); use \"bf16\" (the fast CPU path) or \"no\"");
  if (s.full_bf16 && s.mixed_precision != "bf16")
    throw host::UserError("[train] full_bf16 needs mixed_precision = \"bf16\" (kohya: full_bf16 requires mixed precision bf16)");
  if (s.gradient_accumulation_steps < 1) throw host::UserError("[train] gradient_accumulation_steps must be >= 1");
  check_noise_options(s.noise);
  LossOptions loss_opts = s.loss;
  loss_opts.v_parameterization = s.v_parameterization;
  check_loss_options(loss_opts);
  check_log_options(s.log);
  check_metadata_options(s);
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
  const bool sdxl_model_training = mode == TrainMode::dreambooth && s.family == "sdxl";
  if ((s.text_encoder_lr1 || s.text_encoder_lr2) && !sdxl_model_training)
    throw host::UserError("[optimizer] text_encoder_lr1 / text_encoder_lr2 (--learning_rate_te1/2) are sdxl_train's, for SDXL "
                          "DreamBooth / fine-tuning; this run is " + std::string(mode_name(mode)) + " on " + s.family +
                          ": use text_encoder_lr");
  if (!s.block_lr.empty()) {
    if (!sdxl_model_training)
      throw host::UserError("[optimizer] block_lr (--block_lr) is sdxl_train's, for SDXL DreamBooth / fine-tuning; this run is " +
                            std::string(mode_name(mode)) + " on " + s.family);
    if (s.block_lr.size() != static_cast<size_t>(kSdxlUnetBlocks))
      throw host::UserError("[optimizer] block_lr: expected " + std::to_string(kSdxlUnetBlocks) +
                            " comma-separated learning rates (time/label embedding, input_blocks 0-8, middle_block 0-2, "
                            "output_blocks 0-8, out), got " + std::to_string(s.block_lr.size()));
    for (double v : s.block_lr)
      if (!(v >= 0)) throw host::UserError("[optimizer] block_lr: learning rates must be >= 0, got " + std::to_string(v));
  }
  auto check_last_n = [](const std::optional<int64_t>& v, const char* key, int64_t every, const char* every_key) {
    if (!v) return;
    if (*v < 1) throw host::UserError(std::string("[output] ") + key + " must be >= 1, got " + std::to_string(*v));
    if (every <= 0)
      throw host::UserError(std::string("[output] ") + key + " keeps the last periodic saves, but " + every_key +
                            " is not set: add it (e.g. --" + every_key + " 1)");
  };
  check_last_n(s.save_last_n_epochs, "save_last_n_epochs", s.save_every_n_epochs, "save_every_n_epochs");
  check_last_n(s.save_last_n_epochs_state, "save_last_n_epochs_state", s.save_every_n_epochs, "save_every_n_epochs");
  check_last_n(s.save_last_n_steps, "save_last_n_steps", s.save_every_n_steps, "save_every_n_steps");
  check_last_n(s.save_last_n_steps_state, "save_last_n_steps_state", s.save_every_n_steps, "save_every_n_steps");
  if ((s.save_last_n_epochs_state || s.save_last_n_steps_state) && !s.save_state)
    throw host::UserError("[output] save_last_n_*_state prunes state folders, but save_state is off: add --save_state");
  const at::ScalarType autocast_dtype = s.mixed_precision == "bf16"   ? at::kBFloat16
                                        : s.mixed_precision == "fp16" ? at::kHalf
                                                                      : at::ScalarType::Undefined;

  // --- the dataset, checked up front (every image decoded, every caption read)
  datasets::DatasetGroupConfig group = s.dataset_config.empty()
                                           ? datasets::config_from_arguments(s.dataset_args)
                                           : datasets::load_dataset_config(s.dataset_config, s.dataset_args);
  for (const auto& dc : group.datasets)
    for (const auto& sub : dc.subsets)
      if (!sub.conditioning_data_dir.empty())
        throw host::UserError(sub.origin + ": conditioning_data_dir makes a ControlNet dataset, whose conditioning images "
                              "only ControlNet training reads; `sumi train` " + std::string(mode_name(mode)) +
                              " training would ignore them: drop conditioning_data_dir");
  std::vector<datasets::Dataset> data;
  long long num_train_images = 0, num_reg_images = 0;
  for (const auto& dc : group.datasets) {
    datasets::BuildReport report;
    datasets::BuildOptions bo;
    bo.skip_bad = s.skip_bad_files;
    try {
      data.push_back(datasets::Dataset::build(dc, bo, &report));
    } catch (const datasets::DatasetError& e) {
      if (s.skip_bad_files) throw;
      throw datasets::DatasetError(std::string(e.what()) +
                                   "\nhint: fix or remove these files, or give --skip_bad_files to train without them");
    }
    for (const auto& w : report.warnings) host::log(SUMI_LOG_WARN, "datasets", w);
    for (const auto& p : report.skipped)
      host::log(SUMI_LOG_WARN, "datasets", "skipped " + p.path.string() + ": " + p.message + " (--skip_bad_files)");
    num_train_images += report.num_train_images;
    num_reg_images += report.num_reg_images;
  }
  size_t batches_per_epoch = 0;
  for (const auto& d : data) batches_per_epoch += d.batches_per_epoch();
  if (batches_per_epoch == 0) throw host::UserError("the dataset has no images to train on");
  int64_t total_steps = s.max_train_steps;
  if (s.max_train_epochs)
    total_steps = *s.max_train_epochs * static_cast<int64_t>((batches_per_epoch + s.gradient_accumulation_steps - 1) /
                                                             s.gradient_accumulation_steps);

  // --- plugins: model, noise schedule, network, optimizer, LR schedule
  auto model_ref = pm.find(SUMI_KIND_MODEL, s.family);
  auto mcfg = s.model_params;
  // Trained networks hold fp32 masters and compute under autocast; full_bf16 keeps everything in bf16.
  // A frozen base (networks, Textual Inversion) under bf16 autocast is converted to bf16 once at
  // load: autocast would otherwise cast every fp32 weight on every call (it caches only weights
  // that require grad) and keep the fp32 copy besides.
  const bool frozen_base = mode != TrainMode::dreambooth;
  mcfg["dtype"] = s.full_bf16 || (s.mixed_precision == "bf16" && frozen_base) ? "bf16" : "fp32";
  auto model_has = [&](const char* key) {
    const auto& c = *model_ref.component;
    for (int64_t i = 0; i < c.n_params; ++i)
      if (std::string(c.params[i].key) == key) return true;
    return false;
  };
  if (s.mem_eff_attn || s.lowram) {
    if (model_has("mem_eff_attn")) mcfg["mem_eff_attn"] = "true";
    else host::log(SUMI_LOG_WARN, "train", "the model plugin '" + s.family + "' has no mem_eff_attn option; attention runs as it does");
  }
  if (s.lowram && model_has("vae_slicing")) mcfg["vae_slicing"] = "true";
  if (s.gradient_checkpointing) {
    const auto& c = *model_ref.component;
    bool has = false;
    for (int64_t i = 0; i < c.n_params; ++i) has |= std::string(c.params[i].key) == "gradient_checkpointing";
    if (!has)
      throw host::UserError("[train] gradient_checkpointing: the model plugin '" + s.family + "' (" + model_ref.library->path +
                            ") has no 'gradient_checkpointing' option; this build cannot checkpoint; remove the flag");
    mcfg["gradient_checkpointing"] = "true";
  }
  host::Component model(model_ref, "model", registry, host::make_config(*model_ref.component, mcfg));
  const auto& mvt = model.vtable<sumi_model_vtable>();
  model.check(mvt.load(model.self(), s.model_path.c_str()), ("load " + s.model_path).c_str());
  // Latent caching (before the network exists, as kohya) and the prefetching loader.
  const double latent_scale = model_latent_scale(model);
  BatchSource batches(data, s.dataset_args, s.seed, latent_scale, model_latent_encoder(model, latent_scale, s.mixed_precision == "bf16"));

  auto nsched_ref = pm.find(SUMI_KIND_NOISE_SCHEDULER, s.noise_scheduler_type);
  auto ncfg = s.noise_scheduler_params;
  if (s.v_parameterization) ncfg["prediction_type"] = "v_prediction";
  host::Component nsched(nsched_ref, "noise_scheduler", registry, host::make_config(*nsched_ref.component, ncfg));
  const auto& nvt_s = nsched.vtable<sumi_noise_scheduler_vtable>();
  auto acp_of = [](host::Component& c) {
    sumi_tensor h = nullptr;
    c.check(c.vtable<sumi_noise_scheduler_vtable>().alphas_cumprod(c.self(), &h), "alphas_cumprod");
    at::Tensor t = host::unwrap(h).to(at::kDouble);
    host::release_handle(h);
    return t;
  };
  const at::Tensor alphas_cumprod = acp_of(nsched);
  // kohya computes the SNR table before zero_terminal_snr rescales the betas.
  at::Tensor all_snr;
  if (ncfg.count("rescale_betas_zero_snr") && ncfg.at("rescale_betas_zero_snr") == "true") {
    if (!s.v_parameterization)
      host::log(SUMI_LOG_WARN, "train", "zero_terminal_snr without v_parameterization: training will be unexpected (as kohya warns)");
    auto plain = ncfg;
    plain["rescale_betas_zero_snr"] = "false";
    host::Component unscaled(nsched_ref, "noise_scheduler_snr", registry, host::make_config(*nsched_ref.component, plain));
    all_snr = snr_table(acp_of(unscaled));
  } else {
    all_snr = snr_table(alphas_cumprod);
  }

  // The trained target: the network plugin's parameters, or the model's own (parts / new tokens).
  std::optional<host::Component> network;
  std::string trained;  // the registry component that holds the trained parameters
  if (network_mode) {
    auto net_ref = pm.find(SUMI_KIND_NETWORK, s.network_type);
    network.emplace(net_ref, "network", registry, host::make_config(*net_ref.component, s.network_params));
    attach_network(model, *network, s.network_weights, s.network_multiplier, true);
    trained = "network";
  } else if (mode == TrainMode::textual_inversion) {
    model.require_slot(SUMI_HAS_FIELD(&mvt, sumi_model_vtable, add_token), "add_token", "1.1");
    model.require_slot(SUMI_HAS_FIELD(&mvt, sumi_model_vtable, save_token), "save_token", "1.1");
    model.check(mvt.add_token(model.self(), s.token_string.c_str(), s.init_word.empty() ? nullptr : s.init_word.c_str(),
                              s.num_vectors_per_token),
                ("add_token " + s.token_string).c_str());
    if (!s.ti_weights.empty()) {
      // kohya's --weights: the token's vectors start from an embedding file (the model reads it).
      model.require_slot(SUMI_HAS_FIELD(&mvt, sumi_model_vtable, load_token) && mvt.load_token, "load_token", "1.2");
      if (!std::filesystem::exists(s.ti_weights))
        throw host::UserError("--weights " + s.ti_weights + ": no such file (expected a Textual Inversion embedding)");
      model.check(mvt.load_token(model.self(), s.token_string.c_str(), s.ti_weights.c_str()), ("--weights " + s.ti_weights).c_str());
    }
    trained = "model";
  } else {
    model.require_slot(SUMI_HAS_FIELD(&mvt, sumi_model_vtable, train_part), "train_part", "1.1");
    model.require_slot(SUMI_HAS_FIELD(&mvt, sumi_model_vtable, save), "save", "1.1");
    std::vector<std::string> parts{"unet"};
    if (s.train_text_encoder) {
      parts.push_back("text_encoder");
      if (s.family == "sdxl") parts.push_back("text_encoder_2");
    }
    for (const auto& part : parts) model.check(mvt.train_part(model.self(), part.c_str()), ("train_part " + part).c_str());
    trained = "model";
  }

  auto groups = registry.param_groups(trained);
  // sdxl_train's --block_lr: the UNet in 23 groups, each at its own learning rate; a block at 0 is not trained.
  std::map<std::string, double> group_lr;
  if (!s.block_lr.empty()) {
    std::vector<std::vector<at::Tensor>> blocks(kSdxlUnetBlocks);
    for (const auto& e : registry.entries())
      if (e.component == trained && e.trainable && e.group == "unet")
        blocks[static_cast<size_t>(sdxl_unet_block(e.name.substr(e.name.find('.') + 1)))].push_back(e.tensor);
    decltype(groups) regrouped;
    for (auto& g : groups) {
      if (g.first != "unet") {
        regrouped.push_back(std::move(g));
        continue;
      }
      for (int b = 0; b < kSdxlUnetBlocks; ++b) {
        const double lr = s.block_lr[static_cast<size_t>(b)];
        if (lr == 0) {
          for (auto& p : blocks[static_cast<size_t>(b)]) p.requires_grad_(false);
          continue;
        }
        if (blocks[static_cast<size_t>(b)].empty()) continue;
        char name[32];
        std::snprintf(name, sizeof name, "unet_block%02d", b);
        group_lr[name] = lr;
        regrouped.emplace_back(name, std::move(blocks[static_cast<size_t>(b)]));
      }
    }
    groups = std::move(regrouped);
  }
  if (groups.empty())
    throw host::UserError(network_mode ? "the network adapts no module of this model: nothing to train"
                                       : "the model registered no trainable parameters: nothing to train");
  if (s.full_bf16) {
    at::NoGradGuard ng;
    for (const auto& [gname, params] : groups)
      for (auto p : params) p.set_data(p.to(at::kBFloat16));
  }
  // Textual Inversion's gradients flow through the (frozen) text encoder to the new rows.
  bool trains_text_encoder = mode == TrainMode::textual_inversion;
  std::optional<size_t> te_group, unet_group;
  std::vector<double> base_lrs;
  std::vector<bool> te_groups;  // per optimizer group: a text-encoder group
  auto opt_ref = pm.find(SUMI_KIND_OPTIMIZER, s.optimizer_type);
  host::Component optimizer(opt_ref, "optimizer", registry, host::make_config(*opt_ref.component, s.optimizer_params));
  std::vector<at::Tensor> all_params;
  for (const auto& [gname, params] : groups) {
    const bool te = gname.rfind("text_encoder", 0) == 0 || gname == "textual_inversion";
    trains_text_encoder |= te;
    if (te && !te_group) te_group = base_lrs.size();
    if (!te && !unet_group) unet_group = base_lrs.size();
    te_groups.push_back(te);
    double lr = te ? s.text_encoder_lr.value_or(s.learning_rate) : s.unet_lr.value_or(s.learning_rate);
    if (gname == "text_encoder" && s.text_encoder_lr1) lr = *s.text_encoder_lr1;
    if (gname == "text_encoder_2" && s.text_encoder_lr2) lr = *s.text_encoder_lr2;
    if (group_lr.count(gname)) lr = group_lr.at(gname);
    base_lrs.push_back(lr);
    Handles hs;
    std::vector<sumi_tensor> th;
    for (const auto& p : params) {
      th.push_back(hs(p));
      all_params.push_back(p);
    }
    optimizer.check(optimizer.vtable<sumi_optimizer_vtable>().add_param_group(optimizer.self(), gname.c_str(), th.data(),
                                                                               static_cast<int64_t>(th.size())),
                    "add_param_group");
  }
  // kohya's text-encoder output cache (SDXL, text encoders not trained, static captions).
  const auto te_cache = TextEncoderCache::create(data, s.dataset_args, s.family, trains_text_encoder, model, s.mixed_precision == "bf16",
                                                 mode_name(mode));
  // kohya's get_optimizer / get_scheduler_fix rules (Adafactor's relative step, D-adaptation's lrs).
  const std::string opt_name = opt_ref.component->name;
  const std::string lr_scheduler_type = scheduler_for(opt_name, s.optimizer_params, s.lr_scheduler_type);
  auto lr_ref = pm.find(SUMI_KIND_LR_SCHEDULER, lr_scheduler_type);
  host::Component lr_sched(lr_ref, "lr_scheduler", registry,
                           host::make_config(*lr_ref.component, lr_scheduler_type == s.lr_scheduler_type
                                                                    ? s.lr_scheduler_params
                                                                    : std::map<std::string, std::string>{}));
  {
    std::vector<std::string> group_names;
    for (const auto& [gname, params] : groups) group_names.push_back(gname);
    sumi_lr_query q{sizeof(sumi_lr_query), 0, total_steps, s.lr_warmup_steps, s.learning_rate};
    double factor = 1.0;
    lr_sched.check(lr_sched.vtable<sumi_lr_scheduler_vtable>().factor(lr_sched.self(), &q, &factor), "factor");
    std::vector<double> first_lrs;
    for (double lr : base_lrs) first_lrs.push_back(lr * factor);
    check_optimizer_lrs(opt_name, group_names, base_lrs, first_lrs);
  }

  int64_t n_params = 0;
  for (const auto& p : all_params) n_params += p.numel();
  host::log(SUMI_LOG_INFO, "train",
            "images " + std::to_string(num_train_images) + " (+" + std::to_string(num_reg_images) + " reg), batches/epoch " +
                std::to_string(batches_per_epoch) + ", steps " + std::to_string(total_steps) + ", " + std::string(mode_name(mode)) + " " +
                std::to_string(n_params) + " parameters in " + std::to_string(groups.size()) + " groups");

  // --- the loop
  TrainResult result;
  std::mt19937_64 data_rng = datasets::derived_rng(s.seed, 7);
  // The stream Python's `random` plays in kohya (multires noise ratios).
  std::mt19937_64 noise_ratio_rng = datasets::derived_rng(s.seed, 11);
  const bool use_scaler = s.mixed_precision == "fp16";
  GradScaler scaler;
  int64_t step = 0, micro = 0;
  double accum_loss = 0;
  int epoch = 0;
  const fs::path outdir = s.output_dir;
  fs::create_directories(outdir);
  TrainingSampler sampler(s.sample, pm, registry, model, network ? &*network : nullptr, s.network_multiplier,
                          s.v_parameterization, autocast_dtype, s.output_dir, s.output_name, s.seed);
  auto maybe_sample = [&](int64_t at_step, std::optional<int> at_epoch) { return sampler.maybe_sample(at_step, at_epoch); };
  TrainLog tlog(s.log);
  result.event_file = tlog.event_file();
  LossRecorder recorder;
  const auto& data_reso = group.datasets.front().buckets.resolution;
  auto run_facts = [&](int64_t at_step, int at_epoch) {
    RunFacts r;
    r.started_at = std::chrono::duration_cast<std::chrono::seconds>(started.time_since_epoch()).count();
    r.finished_at = std::chrono::duration_cast<std::chrono::seconds>(clock::now().time_since_epoch()).count();
    r.num_train_images = num_train_images;
    r.num_reg_images = num_reg_images;
    r.batches_per_epoch = static_cast<int64_t>(batches_per_epoch);
    r.total_steps = total_steps;
    r.step = at_step;
    r.epoch = at_epoch;
    r.width = data_reso.width;
    r.height = data_reso.height;
    return r;
  };
  // What a save named `name` writes: <name>.safetensors, or the <name>/ diffusers folder of a model.
  const bool saves_folder = mode == TrainMode::dreambooth && s.save_model_as == "diffusers";
  auto saved_path = [&](const std::string& name) { return outdir / (saves_folder ? name : name + ".safetensors"); };
  auto save = [&](const std::string& name, int64_t at_step, int at_epoch) {
    if (network_mode) {
      const std::string path = saved_path(name).string();
      NetworkFacts facts;
      facts.component = network->info().name;
      const auto& nvt = network->vtable<sumi_network_vtable>();
      facts.has_metadata = SUMI_HAS_FIELD(&nvt, sumi_network_vtable, metadata) && nvt.metadata;
      facts.metadata = network_metadata_of(*network);
      auto md = network_metadata(s, run_facts(at_step, at_epoch), &facts);
      for (auto& [k, v] : modelspec_metadata(run_modelspec(s, ModelSpecKind::lora, data_reso.width, data_reso.height))) md[k] = v;
      save_network(path, registry, "network", s.save_precision, md);
      return path;
    }
    const sumi_dtype dt = save_dtype(s.save_precision);
    const fs::path path = saved_path(name);
    // Written under a temporary name, then renamed over the previous file.
    // (A folder's temporary name has no extension: the model plugin refuses to write a folder
    // whose name looks like a file, e.g. "x.ckpt".)
    const fs::path tmp = outdir / (saves_folder ? name + "_tmp" : name + ".tmp.safetensors");
    fs::remove_all(tmp);
    if (mode == TrainMode::textual_inversion)
      model.check(mvt.save_token(model.self(), s.token_string.c_str(), tmp.string().c_str(), &dt, 1), ("save_token " + path.string()).c_str());
    else
      model.check(mvt.save(model.self(), tmp.string().c_str(), &dt, 1), ("save " + path.string()).c_str());
    // kohya's sai model spec on embeddings and single-file checkpoints (a diffusers folder gets
    // none, as diffusers' save_pretrained writes none), added to what the plugin wrote.
    if (!saves_folder) {
      auto md = io::SafetensorsFile::open(tmp.string())->metadata();
      const auto kind = mode == TrainMode::textual_inversion ? ModelSpecKind::textual_inversion : ModelSpecKind::checkpoint;
      for (auto& [k, v] : modelspec_metadata(run_modelspec(s, kind, data_reso.width, data_reso.height))) md[k] = v;
      io::set_safetensors_metadata(tmp.string(), md);
    }
    fs::remove_all(path);
    fs::rename(tmp, path);
    return path.string();
  };

  // Position in the epoch plan: batches of the current epoch already consumed.
  size_t batch_in_epoch = 0;
  auto save_state = [&](const std::string& name) {
    if (!s.save_state) return;
    const fs::path dir = outdir / (name + "-state");
    const fs::path tmp = outdir / (name + "-state.tmp");
    fs::remove_all(tmp);
    fs::create_directories(tmp);
    io::NamedTensors tensors;
    for (const auto& e : registry.entries())
      if (e.component == "optimizer" || (e.component == trained && (network_mode || e.trainable))) tensors.emplace_back(e.key(), e.tensor.detach().contiguous());
    {
      auto gen = at::detail::getDefaultCPUGenerator();
      std::lock_guard<std::mutex> lock(gen.mutex());
      tensors.emplace_back("rng/torch_cpu", gen.get_state());
    }
    std::ostringstream rng;
    rng << data_rng;
    nlohmann::json j{{"format", "sumi-train-state-1"}, {"step", step},         {"epoch", epoch},
                     {"batch_in_epoch", batch_in_epoch}, {"seed", s.seed}, {"data_rng", rng.str()},
                     {"network", network_mode ? s.network_type : std::string(mode_name(mode))},
                     {"optimizer", s.optimizer_type}};
    if (use_scaler) {
      j["grad_scale"] = scaler.scale_value();
      j["grad_growth_tracker"] = scaler.growth_tracker();
    }
    io::save_tensors((tmp / "train_state.safetensors").string(), tensors, {});
    std::ofstream((tmp / "train_state.json").string()) << j.dump(1);
    fs::remove_all(dir);
    fs::rename(tmp, dir);
  };
  // kohya's --save_last_n_*: a periodic save that falls out of the window is removed (its file or
  // diffusers folder; its state folder under the _state window).
  auto remove_saved = [&](const std::string& name, bool model_file, bool state) {
    if (model_file) fs::remove_all(saved_path(name));
    if (state) fs::remove_all(outdir / (name + "-state"));
  };
  auto step_name = [&](int64_t n) {
    char b[32];
    std::snprintf(b, sizeof b, "-step%08lld", static_cast<long long>(n));
    return s.output_name + b;
  };
  auto epoch_name = [&](int64_t n) {
    char b[32];
    std::snprintf(b, sizeof b, "-%06lld", static_cast<long long>(n));
    return s.output_name + b;
  };
  auto prune_step_saves = [&](int64_t at_step) {
    auto remove_no = [&](const std::optional<int64_t>& last_n) -> std::optional<int64_t> {
      if (!last_n) return std::nullopt;
      int64_t r = at_step - *last_n - 1;  // kohya's get_remove_step_no
      if (r < 0) return std::nullopt;
      r -= r % s.save_every_n_steps;
      return r > 0 ? std::optional<int64_t>(r) : std::nullopt;
    };
    if (auto r = remove_no(s.save_last_n_steps)) remove_saved(step_name(*r), true, false);
    if (auto r = remove_no(s.save_last_n_steps_state ? s.save_last_n_steps_state : s.save_last_n_steps))
      remove_saved(step_name(*r), false, s.save_state);
  };
  auto prune_epoch_saves = [&](int at_epoch) {
    auto remove_no = [&](const std::optional<int64_t>& last_n) -> std::optional<int64_t> {
      if (!last_n) return std::nullopt;
      const int64_t r = at_epoch - s.save_every_n_epochs * *last_n;  // kohya's get_remove_epoch_no
      return r > 0 ? std::optional<int64_t>(r) : std::nullopt;
    };
    if (auto r = remove_no(s.save_last_n_epochs)) remove_saved(epoch_name(*r), true, false);
    if (auto r = remove_no(s.save_last_n_epochs_state ? s.save_last_n_epochs_state : s.save_last_n_epochs))
      remove_saved(epoch_name(*r), false, s.save_state);
  };
  int resume_epoch = 0;
  size_t resume_batch = 0;
  if (!s.resume.empty()) {
    const fs::path dir = s.resume;
    std::ifstream jf(dir / "train_state.json");
    if (!jf) throw host::UserError("--resume " + s.resume + ": no train_state.json there (a folder written by --save_state)");
    nlohmann::json j;
    try {
      jf >> j;
    } catch (const std::exception& e) {
      throw host::UserError("--resume " + s.resume + "/train_state.json: " + e.what());
    }
    if (j.value("format", "") != "sumi-train-state-1")
      throw host::UserError("--resume " + s.resume + ": not a sumi training state (format '" + j.value("format", "") + "')");
    const std::string target = network_mode ? s.network_type : std::string(mode_name(mode));
    if (j.value("network", "") != target || j.value("optimizer", "") != s.optimizer_type)
      throw host::UserError("--resume " + s.resume + ": saved with network '" + j.value("network", "") + "' and optimizer '" +
                            j.value("optimizer", "") + "', this run uses '" + target + "' and '" + s.optimizer_type + "'");
    std::map<std::string, at::Tensor> saved;
    for (auto& [k, t] : io::load_all((dir / "train_state.safetensors").string())) saved[k] = t;
    at::NoGradGuard ng;
    for (const auto& e : registry.entries()) {
      if (e.component != "optimizer" && !(e.component == trained && (network_mode || e.trainable))) continue;
      auto it = saved.find(e.key());
      if (it == saved.end()) throw host::UserError("--resume " + s.resume + ": the state has no '" + e.key() + "'");
      if (!it->second.sizes().equals(e.tensor.sizes()))
        throw host::UserError("--resume " + s.resume + ": '" + e.key() + "' has another shape than this run's");
      e.tensor.copy_(it->second);
    }
    {
      auto gen = at::detail::getDefaultCPUGenerator();
      std::lock_guard<std::mutex> lock(gen.mutex());
      gen.set_state(saved.at("rng/torch_cpu"));
    }
    std::istringstream rng(j.at("data_rng").get<std::string>());
    rng >> data_rng;
    step = j.at("step").get<int64_t>();
    resume_epoch = j.at("epoch").get<int>();
    resume_batch = j.at("batch_in_epoch").get<size_t>();
    epoch = resume_epoch - 1;
    if (use_scaler && j.contains("grad_scale"))
      scaler.restore(j.at("grad_scale").get<double>(), j.at("grad_growth_tracker").get<int64_t>());
    host::log(SUMI_LOG_INFO, "train", "resuming at step " + std::to_string(step) + ", epoch " + std::to_string(resume_epoch));
  }
  // The bar counts this run's steps, so it/s and the ETA stay right after a resume.
  sumi_progress* bar = progress ? host::progress_begin("steps", total_steps - step) : nullptr;
  if (step == 0) {
    auto files = maybe_sample(0, 0);
    result.samples.insert(result.samples.end(), files.begin(), files.end());
  }

  // train_db's --stop_text_encoder_training: the text encoders are frozen once this many steps are done.
  auto te_stopped = [&](int64_t at_step) { return s.stop_text_encoder_training >= 0 && at_step >= s.stop_text_encoder_training; };
  const std::vector<std::string>* templates = s.ti_template == "object"  ? &ti_object_templates()
                                              : s.ti_template == "style" ? &ti_style_templates()
                                                                         : nullptr;
  // The learning rates of the optimizer step after `at_step` steps: base rate x the LR plugin's
  // factor; train_db's --stop_text_encoder_training keeps the text encoders as they are from then on.
  auto lrs_at = [&](int64_t at_step) {
    sumi_lr_query q{sizeof(sumi_lr_query), at_step, total_steps, s.lr_warmup_steps, s.learning_rate};
    double factor = 1.0;
    lr_sched.check(lr_sched.vtable<sumi_lr_scheduler_vtable>().factor(lr_sched.self(), &q, &factor), "factor");
    const bool te_off = mode == TrainMode::dreambooth && te_stopped(at_step);
    std::vector<double> lrs;
    for (size_t g = 0; g < base_lrs.size(); ++g) lrs.push_back(te_groups[g] && te_off ? 0.0 : base_lrs[g] * factor);
    return lrs;
  };
  // kohya's generate_step_logs after every micro-batch, at the global step: that micro-batch's
  // loss, the moving average, and the scheduler's last learning rates (after its step, so the
  // rates the next optimizer step uses).
  auto log_micro_batch = [&](double current) {
    if (!tlog.enabled()) return;
    std::vector<double> lrs = lrs_at(step);
    // AdafactorSchedule reports the rate the first parameter of each group used (relative step).
    if (lr_scheduler_type == "adafactor") {
      size_t g = 0;
      for (const auto& group : groups) {
        if (const auto* e = registry.find("optimizer", group.first + ".0.lr")) lrs[g] = e->tensor.item<double>();
        ++g;
      }
    }
    // kohya's lr/d*lr: the step size D-adaptation and Prodigy estimated, times group 0's lr.
    std::optional<double> d_lr;
    if (adapts_step_size(opt_name))
      if (const auto* d = registry.find("optimizer", "d")) d_lr = d->tensor.item<double>() * lrs.front();
    tlog.step(step, current, recorder.moving_average(), te_group ? std::optional<double>(lrs[*te_group]) : std::nullopt,
              unet_group ? std::optional<double>(lrs[*unet_group]) : std::nullopt, d_lr);
  };
  while (step < total_steps) {
    ++epoch;
    const auto plan = datasets::group_epoch_plan(data, s.seed, epoch);
    batch_in_epoch = epoch == resume_epoch ? resume_batch : 0;
    batches.start_epoch(epoch, plan, batch_in_epoch);
    for (size_t bi = batch_in_epoch; bi < plan.size(); ++bi) {
      const auto& gb = plan[bi];
      if (step >= total_steps) break;
      batch_in_epoch = bi + 1;
      const auto& ds = data[gb.dataset];
      BatchSource::Batch loaded = batches.next();  // prepared ahead on worker threads, or cached latents
      const std::vector<datasets::TrainingImage>& imgs = loaded.images;
      std::vector<std::string> captions;
      std::vector<double> weights;
      for (auto item : gb.batch.items) {
        captions.push_back(ds.caption(item, datasets::CaptionStep{epoch, step, total_steps}, data_rng));
        if (templates) {  // kohya's add_replacement("", templates): a random template replaces the caption
          const std::string& tpl = (*templates)[datasets::uniform_below(data_rng, templates->size())];
          const auto at = tpl.find("{}");
          captions.back() = tpl.substr(0, at) + s.token_string + tpl.substr(at + 2);
        }
        weights.push_back(ds.loss_weight(item, s.prior_loss_weight));
      }
      const int64_t B = static_cast<int64_t>(imgs.size());
      Handles hs;
      const at::Tensor latents = loaded.latents;
      const TrainingNoise tn = draw_training_noise(s.noise, latents, noise_ratio_rng);
      const at::Tensor& noise = tn.noise;
      const at::Tensor& timesteps = tn.timesteps;
      at::Tensor noisy, target;
      {
        sumi_tensor out = nullptr;
        nsched.check(nvt_s.add_noise(nsched.self(), hs(latents), hs(tn.input_noise), hs(timesteps), &out), "add_noise");
        noisy = hs.take(out);
        if (s.v_parameterization) {
          nsched.check(nvt_s.velocity(nsched.self(), hs(latents), hs(noise), hs(timesteps), &out), "velocity");
          target = hs.take(out);
        } else {
          target = noise;
        }
      }
      at::Tensor pred;
      {
        Autocast ac(autocast_dtype);
        std::vector<const char*> cps;
        for (const auto& c : captions) cps.push_back(c.c_str());
        sumi_tensor cond = nullptr, pooled = nullptr;
        {
          at::AutoGradMode grad(trains_text_encoder && !te_stopped(step));
          if (te_cache)
            te_cache->lookup(gb.dataset, gb.batch.items, captions, &cond, &pooled);
          else
            model.check(mvt.encode_text(model.self(), cps.data(), B, &cond, &pooled), "encode_text");
        }
        at::Tensor added;
        if (s.family == "sdxl") {
          added = at::empty({B, 6}, at::kFloat);
          for (int64_t i = 0; i < B; ++i) {
            const auto& ti = imgs[static_cast<size_t>(i)];
            added[i] = at::tensor({static_cast<float>(ti.original.height), static_cast<float>(ti.original.width),
                                   static_cast<float>(ti.crop_ltrb.top), static_cast<float>(ti.crop_ltrb.left),
                                   static_cast<float>(ti.image.height), static_cast<float>(ti.image.width)});
          }
        }
        sumi_tensor out = nullptr;
        hs.take(cond);
        if (pooled) hs.take(pooled);
        const auto st = mvt.denoise(model.self(), hs(noisy), hs(timesteps.to(at::kFloat)), cond, pooled, hs(added), &out);
        model.check(st, "denoise");
        pred = hs.take(out);
      }
      const at::Tensor huber_c = huber_threshold(loss_opts, timesteps, alphas_cumprod);
      at::Tensor loss = conditional_loss(pred.to(at::kFloat), target.to(at::kFloat), loss_opts.loss_type, huber_c).mean({1, 2, 3});
      loss = loss * at::tensor(weights, at::kDouble).to(at::kFloat);
      loss = post_process_loss(loss, timesteps, all_snr, loss_opts);
      loss = loss.mean();
      const double micro_loss = loss.item<double>();
      loss = loss / static_cast<double>(s.gradient_accumulation_steps);
      (use_scaler ? scaler.scale(loss) : loss).backward();
      accum_loss += micro_loss / static_cast<double>(s.gradient_accumulation_steps);
      recorder.add(epoch == (resume_epoch > 0 ? resume_epoch : 1), bi, micro_loss);
      if (++micro % s.gradient_accumulation_steps != 0) {
        log_micro_batch(micro_loss);  // kohya logs every micro-batch at the current global step
        continue;
      }

      // fp16: unscale, and skip the optimizer step when a gradient overflowed (GradScaler).
      const bool finite = use_scaler ? scaler.unscale(all_params) : true;
      if (use_scaler) {
        scaler.update(!finite);
        if (!finite) ++result.skipped_steps;
      }
      if (finite && s.max_grad_norm > 0) {
        double total = 0;
        for (const auto& p : all_params)
          if (p.grad().defined()) total += p.grad().to(at::kDouble).pow(2).sum().item<double>();
        total = std::sqrt(total);
        const double coef = s.max_grad_norm / (total + 1e-6);
        if (coef < 1)
          for (const auto& p : all_params)
            if (p.grad().defined()) p.grad().mul_(coef);
      }
      const std::vector<double> lrs = lrs_at(step);
      if (finite)
        optimizer.check(optimizer.vtable<sumi_optimizer_vtable>().step(optimizer.self(), lrs.data(),
                                                                       static_cast<int64_t>(lrs.size())),
                        "step");
      for (const auto& p : all_params)
        if (p.grad().defined()) p.grad().zero_();
      ++step;
      const double avr_loss = recorder.moving_average();
      result.losses.push_back(accum_loss);
      result.lrs.push_back(lrs.front());
      result.average_losses.push_back(avr_loss);
      log_micro_batch(micro_loss);
      char postfix[96];
      std::snprintf(postfix, sizeof postfix, "avr_loss=%.4f, loss=%.4f, lr=%.2e, epoch=%d", avr_loss, accum_loss, lrs.front(),
                    epoch);
      accum_loss = 0;
      if (bar) host::progress_update(bar, 1, postfix);
      {
        auto files = maybe_sample(step, std::nullopt);
        result.samples.insert(result.samples.end(), files.begin(), files.end());
      }
      if (s.save_every_n_steps > 0 && step % s.save_every_n_steps == 0 && step < total_steps) {
        save(step_name(step), step, epoch);
        save_state(step_name(step));
        prune_step_saves(step);
      }
    }
    tlog.epoch(epoch, recorder.moving_average());
    tlog.flush();
    if (s.save_every_n_epochs > 0 && epoch % s.save_every_n_epochs == 0 && step < total_steps) {
      batch_in_epoch = plan.size();
      save(epoch_name(epoch), step, epoch);
      save_state(epoch_name(epoch));
      prune_epoch_saves(epoch);
    }
    auto files = maybe_sample(step, epoch);
    result.samples.insert(result.samples.end(), files.begin(), files.end());
  }
  if (bar) host::progress_end(bar);
  tlog.flush();
  result.steps = step;
  result.output_file = save(s.output_name, step, epoch);
  save_state(s.output_name);
  {
    const std::string csv = (outdir / (s.output_name + ".loss.csv")).string();
    std::ofstream f(csv + ".tmp");
    f << "step,loss\n";
    for (size_t i = 0; i < result.losses.size(); ++i) f << i + 1 << "," << result.losses[i] << "\n";
    f.close();
    fs::rename(csv + ".tmp", csv);
  }
  if (!result.losses.empty()) {
    std::vector<int64_t> steps_axis;
    const int64_t first = step - static_cast<int64_t>(result.losses.size()) + 1;
    for (size_t i = 0; i < result.losses.size(); ++i) steps_axis.push_back(first + static_cast<int64_t>(i));
    const std::string png = (outdir / (s.output_name + ".loss.png")).string();
    try {
      logging::LossCurveOptions curve;
      if (result.lrs.size() == result.losses.size()) curve.lrs = result.lrs;
      logging::write_loss_curve_png(png, steps_axis, result.losses, s.output_name + ": training loss", curve);
      result.loss_curve = png;
    } catch (const std::exception& e) {
      host::log(SUMI_LOG_WARN, "train", std::string("no loss-curve image: ") + e.what());
    }
  }
  return result;
}

}  // namespace sumi::app
