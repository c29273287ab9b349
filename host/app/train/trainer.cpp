// The training engine: one run of any mode (train_network.py, train_db.py / fine_tune.py,
// train_textual_inversion.py), in named parts:
//   settings_check   what the settings allow (before and after the model is loaded),
//   training_data    the datasets and the run's length,
//   the components   model, noise schedule, the target (train_target.h), optimizer groups
//                    (param_groups.h), LR schedule,
//   checkpoints      saves, --save_state / --resume, pruning,
//   the step         below: the order of operations follows kohya's train_network.py so that a
//                    user's settings mean the same thing: encode latents (no grad), draw noise and
//                    timesteps (noise.h), noise the latents, predict, per-sample loss against the
//                    noise (or the v target), weight (prior loss, SNR options; loss.h), average,
//                    backward; every gradient_accumulation_steps: (unscale,) clip, step the
//                    optimizer at the scheduled learning rates; log (train_log.h) and sample
//                    (sample_images.h) as kohya does.
#include "trainer.h"

#include "app/app.h"
#include "app/model_description.h"
#include "app/train/checkpoints.h"
#include "app/train/latent_cache.h"
#include "app/train/loss.h"
#include "app/train/noise.h"
#include "app/train/optimizer_rules.h"
#include "app/train/param_groups.h"
#include "app/train/precision.h"
#include "app/train/sample_images.h"
#include "app/train/settings_check.h"
#include "app/train/train_log.h"
#include "app/train/train_metadata.h"
#include "app/train/train_target.h"
#include "app/train/training_data.h"
#include "core/error.h"
#include "core/progress.h"
#include "core/tensor_handle.h"
#include "core/typed_plugins.h"
#include "logging/loss_curve.h"

#include <sumi/datasets/random.h>

#include <ATen/ATen.h>

#include <chrono>
#include <cstddef>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <optional>
#include <tuple>

namespace fs = std::filesystem;

namespace sumi::app {

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


namespace {

using Clock = std::chrono::system_clock;

at::Tensor alphas_cumprod_of(host::Component& c) { return host::NoiseSchedulerPlugin(c).alphas_cumprod().to(at::kDouble); }

// The per-image values of the model's added conditioning (describe's added_conditioning), as
// the dataset knows them.
double added_value(const std::string& name, const datasets::TrainingImage& ti) {
  if (name == "original_height") return static_cast<double>(ti.original.height);
  if (name == "original_width") return static_cast<double>(ti.original.width);
  if (name == "crop_top") return static_cast<double>(ti.crop_ltrb.top);
  if (name == "crop_left") return static_cast<double>(ti.crop_ltrb.left);
  if (name == "target_height") return static_cast<double>(ti.image.height);
  if (name == "target_width") return static_cast<double>(ti.image.width);
  throw host::UserError("the model asks for added conditioning '" + name +
                        "', which the trainer cannot provide (known: original_height, original_width, crop_top, crop_left, "
                        "target_height, target_width)");
}

class Trainer {
 public:
  Trainer(const TrainSettings& s, const std::vector<std::string>& plugin_dirs, bool progress);
  TrainResult run();

 private:
  void load_model();
  void load_noise_schedule();
  void set_up_optimizer();
  void release_unused_parts();
  void run_epoch();
  // One micro-batch: forward, loss, backward; returns its loss.
  double micro_batch(const datasets::GroupBatch& gb, const BatchSource::Batch& loaded);
  void optimizer_step(double micro_loss);
  at::Tensor added_conditioning(const std::vector<datasets::TrainingImage>& imgs) const;
  std::vector<double> lrs_at(int64_t at_step);
  void log_micro_batch(double current);
  RunFacts run_facts() const;
  void save_checkpoint(const std::string& name);
  void sample(int64_t at_step, std::optional<int> at_epoch);
  void write_loss_files();

  const TrainSettings& s_;
  const bool progress_;
  const Clock::time_point started_ = Clock::now();
  std::optional<host::PluginManager> pm_;
  host::Registry registry_;
  at::ScalarType autocast_dtype_ = at::ScalarType::Undefined;
  TrainingData data_;
  std::optional<host::Component> model_, nsched_, optimizer_, lr_sched_;
  ModelDescription description_;
  std::unique_ptr<BatchSource> batches_;
  LossOptions loss_opts_;
  at::Tensor alphas_cumprod_, all_snr_;
  std::unique_ptr<TrainTarget> target_;
  ParamGroups groups_;
  std::unique_ptr<TextEncoderCache> te_cache_;
  std::string opt_name_, lr_scheduler_type_;
  const std::vector<std::string>* templates_ = nullptr;

  // The loop's state.
  TrainResult result_;
  TrainPosition at_;
  int resume_epoch_ = 0;
  size_t resume_batch_ = 0;
  std::mt19937_64 data_rng_, noise_ratio_rng_;
  bool use_scaler_ = false;
  GradScaler scaler_;
  int64_t micro_ = 0;
  double accum_loss_ = 0;
  std::unique_ptr<Checkpoints> checkpoints_;
  std::unique_ptr<TrainingSampler> sampler_;
  std::unique_ptr<TrainLog> tlog_;
  LossRecorder recorder_;
  sumi_progress* bar_ = nullptr;
};

Trainer::Trainer(const TrainSettings& s, const std::vector<std::string>& plugin_dirs, bool progress) : s_(s), progress_(progress) {
  CommonOptions common;
  common.plugin_dirs = plugin_dirs;
  pm_.emplace(make_plugin_manager(common));
  registry_.set_device(s.device);
  at::manual_seed(s.seed);
  check_train_settings(s);
  loss_opts_ = s.loss;
  loss_opts_.v_parameterization = s.v_parameterization;
  autocast_dtype_ = s.mixed_precision == "bf16"   ? at::kBFloat16
                    : s.mixed_precision == "fp16" ? at::kHalf
                                                  : at::ScalarType::Undefined;
  data_ = load_training_data(s);
  load_model();
  load_noise_schedule();
  // The trained target: the network plugin's parameters, or the model's own (parts / new tokens).
  target_ = make_train_target(s, *pm_, registry_, *model_, description_);
  set_up_optimizer();
  release_unused_parts();
  host::log(SUMI_LOG_INFO, "train",
            "images " + std::to_string(data_.num_train_images) + " (+" + std::to_string(data_.num_reg_images) +
                " reg), batches/epoch " + std::to_string(data_.batches_per_epoch) + ", steps " + std::to_string(data_.total_steps) +
                ", " + std::string(mode_name(s.mode)) + " " + std::to_string(groups_.numel()) + " parameters in " +
                std::to_string(groups_.groups.size()) + " groups");
}

void Trainer::load_model() {
  auto model_ref = pm_->find(SUMI_KIND_MODEL, s_.family);
  auto mcfg = s_.model_params;
  // Trained networks hold fp32 masters and compute under autocast; full_bf16 keeps everything in bf16.
  // A frozen base (networks, Textual Inversion) under bf16 autocast is converted to bf16 once at
  // load: autocast would otherwise cast every fp32 weight on every call (it caches only weights
  // that require grad) and keep the fp32 copy besides.
  const bool frozen_base = s_.mode != TrainMode::dreambooth;
  mcfg["dtype"] = s_.full_bf16 || (s_.mixed_precision == "bf16" && frozen_base) ? "bf16" : "fp32";
  const auto& c = *model_ref.component;
  auto model_has = [&](const char* key) {
    for (int64_t i = 0; i < c.n_params; ++i)
      if (std::string(c.params[i].key) == key) return true;
    return false;
  };
  if (s_.mem_eff_attn || s_.lowram) {
    if (model_has("mem_eff_attn")) mcfg["mem_eff_attn"] = "true";
    else host::log(SUMI_LOG_WARN, "train", "the model plugin '" + s_.family + "' has no mem_eff_attn option; attention runs as it does");
  }
  if (s_.lowram && model_has("vae_slicing")) mcfg["vae_slicing"] = "true";
  if (s_.gradient_checkpointing) {
    if (!model_has("gradient_checkpointing"))
      throw host::UserError("[train] gradient_checkpointing: the model plugin '" + s_.family + "' (" + model_ref.library->path +
                            ") has no 'gradient_checkpointing' option; this build cannot checkpoint; remove the flag");
    mcfg["gradient_checkpointing"] = "true";
  }
  model_.emplace(model_ref, "model", registry_, host::make_config(c, mcfg));
  host::ModelPlugin(*model_).load(s_.model_path);
  description_ = describe(*model_);
  check_model_settings(s_, description_);
  // Latent caching (before the network exists, as kohya) and the prefetching loader.
  const double latent_scale = model_latent_scale(*model_);
  batches_ = std::make_unique<BatchSource>(data_.data, s_.dataset_args, s_.seed, latent_scale,
                                           model_latent_encoder(*model_, latent_scale, s_.mixed_precision == "bf16"));
}

void Trainer::load_noise_schedule() {
  auto ref = pm_->find(SUMI_KIND_NOISE_SCHEDULER, s_.noise_scheduler_type);
  auto ncfg = s_.noise_scheduler_params;
  if (s_.v_parameterization) ncfg["prediction_type"] = "v_prediction";
  nsched_.emplace(ref, "noise_scheduler", registry_, host::make_config(*ref.component, ncfg));
  alphas_cumprod_ = alphas_cumprod_of(*nsched_);
  // kohya computes the SNR table before zero_terminal_snr rescales the betas.
  if (ncfg.count("rescale_betas_zero_snr") && ncfg.at("rescale_betas_zero_snr") == "true") {
    if (!s_.v_parameterization)
      host::log(SUMI_LOG_WARN, "train", "zero_terminal_snr without v_parameterization: training will be unexpected (as kohya warns)");
    auto plain = ncfg;
    plain["rescale_betas_zero_snr"] = "false";
    host::Component unscaled(ref, "noise_scheduler_snr", registry_, host::make_config(*ref.component, plain));
    all_snr_ = snr_table(alphas_cumprod_of(unscaled));
  } else {
    all_snr_ = snr_table(alphas_cumprod_);
  }
}

void Trainer::set_up_optimizer() {
  groups_ = build_param_groups(s_, registry_, target_->component(), description_);
  auto opt_ref = pm_->find(SUMI_KIND_OPTIMIZER, s_.optimizer_type);
  optimizer_.emplace(opt_ref, "optimizer", registry_, host::make_config(*opt_ref.component, s_.optimizer_params));
  add_param_groups(*optimizer_, groups_);
  // kohya's text-encoder output cache (text encoders not trained, static captions).
  te_cache_ = TextEncoderCache::create(data_.data, s_.dataset_args, description_.text_encoder_output_cache,
                                       groups_.trains_text_encoder, *model_, s_.mixed_precision == "bf16", mode_name(s_.mode));
  // kohya's get_optimizer / get_scheduler_fix rules (Adafactor's relative step, D-adaptation's lrs).
  opt_name_ = opt_ref.component->name;
  lr_scheduler_type_ = scheduler_for(opt_name_, s_.optimizer_params, s_.lr_scheduler_type);
  auto lr_ref = pm_->find(SUMI_KIND_LR_SCHEDULER, lr_scheduler_type_);
  lr_sched_.emplace(lr_ref, "lr_scheduler", registry_,
                    host::make_config(*lr_ref.component, lr_scheduler_type_ == s_.lr_scheduler_type
                                                              ? s_.lr_scheduler_params
                                                              : std::map<std::string, std::string>{}));
  std::vector<std::string> group_names;
  for (const auto& g : groups_.groups) group_names.push_back(g.first);
  const double factor = host::LrSchedulerPlugin(*lr_sched_).factor(0, data_.total_steps, s_.lr_warmup_steps, s_.learning_rate);
  std::vector<double> first_lrs;
  for (double lr : groups_.base_lrs) first_lrs.push_back(lr * factor);
  check_optimizer_lrs(opt_name_, group_names, groups_.base_lrs, first_lrs);
}

// What the run no longer needs (kohya keeps it all): the VAE once every latent is cached, when
// nothing decodes (no sample images) and the whole model is not saved (DreamBooth / fine-tuning).
void Trainer::release_unused_parts() {
  if (!batches_->options().cache_latents || !s_.sample.prompts.empty() || s_.mode == TrainMode::dreambooth) return;
  if (!host::ModelPlugin(*model_).release_part("vae")) return;
  result_.vae_released = true;
  host::log(SUMI_LOG_INFO, "train", "released the VAE: every latent is cached and nothing decodes");
}

RunFacts Trainer::run_facts() const {
  RunFacts r;
  r.started_at = std::chrono::duration_cast<std::chrono::seconds>(started_.time_since_epoch()).count();
  r.finished_at = std::chrono::duration_cast<std::chrono::seconds>(Clock::now().time_since_epoch()).count();
  r.num_train_images = data_.num_train_images;
  r.num_reg_images = data_.num_reg_images;
  r.batches_per_epoch = static_cast<int64_t>(data_.batches_per_epoch);
  r.total_steps = data_.total_steps;
  r.step = at_.step;
  r.epoch = at_.epoch;
  const auto& reso = data_.group.datasets.front().buckets.resolution;
  r.width = reso.width;
  r.height = reso.height;
  return r;
}

void Trainer::save_checkpoint(const std::string& name) {
  checkpoints_->save(name, run_facts());
  checkpoints_->save_state(name, at_, data_rng_, use_scaler_ ? &scaler_ : nullptr);
}

void Trainer::sample(int64_t at_step, std::optional<int> at_epoch) {
  auto files = sampler_->maybe_sample(at_step, at_epoch);
  result_.samples.insert(result_.samples.end(), files.begin(), files.end());
}

// The learning rates of the optimizer step after `at_step` steps: base rate x the LR plugin's
// factor; train_db's --stop_text_encoder_training keeps the text encoders as they are from then on.
std::vector<double> Trainer::lrs_at(int64_t at_step) {
  const double factor =
      host::LrSchedulerPlugin(*lr_sched_).factor(at_step, data_.total_steps, s_.lr_warmup_steps, s_.learning_rate);
  const bool te_off = s_.mode == TrainMode::dreambooth && s_.stop_text_encoder_training >= 0 &&
                      at_step >= s_.stop_text_encoder_training;
  std::vector<double> lrs;
  for (size_t g = 0; g < groups_.base_lrs.size(); ++g)
    lrs.push_back(groups_.text_encoder[g] && te_off ? 0.0 : groups_.base_lrs[g] * factor);
  return lrs;
}

// kohya's generate_step_logs after every micro-batch, at the global step: that micro-batch's
// loss, the moving average, and the scheduler's last learning rates (after its step, so the
// rates the next optimizer step uses).
void Trainer::log_micro_batch(double current) {
  if (!tlog_->enabled()) return;
  std::vector<double> lrs = lrs_at(at_.step);
  // AdafactorSchedule reports the rate the first parameter of each group used (relative step).
  if (lr_scheduler_type_ == "adafactor") {
    size_t g = 0;
    for (const auto& group : groups_.groups) {
      if (const auto* e = registry_.find("optimizer", group.first + ".0.lr")) lrs[g] = e->tensor.item<double>();
      ++g;
    }
  }
  // kohya's lr/d*lr: the step size D-adaptation and Prodigy estimated, times group 0's lr.
  std::optional<double> d_lr;
  if (adapts_step_size(opt_name_))
    if (const auto* d = registry_.find("optimizer", "d")) d_lr = d->tensor.item<double>() * lrs.front();
  tlog_->step(at_.step, current, recorder_.moving_average(),
              groups_.first_text_encoder ? std::optional<double>(lrs[*groups_.first_text_encoder]) : std::nullopt,
              groups_.first_unet ? std::optional<double>(lrs[*groups_.first_unet]) : std::nullopt, d_lr);
}

at::Tensor Trainer::added_conditioning(const std::vector<datasets::TrainingImage>& imgs) const {
  const auto& names = description_.added_conditioning;
  if (names.empty()) return at::Tensor();
  const int64_t n = static_cast<int64_t>(names.size());
  at::Tensor added = at::empty({static_cast<int64_t>(imgs.size()), n}, at::kFloat);
  auto acc = added.accessor<float, 2>();
  for (size_t i = 0; i < imgs.size(); ++i)
    for (int64_t k = 0; k < n; ++k) acc[static_cast<int64_t>(i)][k] = static_cast<float>(added_value(names[static_cast<size_t>(k)], imgs[i]));
  return added;
}

double Trainer::micro_batch(const datasets::GroupBatch& gb, const BatchSource::Batch& loaded) {
  const auto& ds = data_.data[gb.dataset];
  const std::vector<datasets::TrainingImage>& imgs = loaded.images;
  std::vector<std::string> captions;
  std::vector<double> weights;
  for (auto item : gb.batch.items) {
    captions.push_back(ds.caption(item, datasets::CaptionStep{at_.epoch, at_.step, data_.total_steps}, data_rng_));
    if (templates_) {  // kohya's add_replacement("", templates): a random template replaces the caption
      const std::string& tpl = (*templates_)[datasets::uniform_below(data_rng_, templates_->size())];
      const auto at = tpl.find("{}");
      captions.back() = tpl.substr(0, at) + s_.token_string + tpl.substr(at + 2);
    }
    weights.push_back(ds.loss_weight(item, s_.prior_loss_weight));
  }
  // The noise is drawn on the CPU (the same draws on every device), then everything goes where
  // the model computes; the per-image losses come back for the weighting.
  const c10::Device dev = registry_.device();
  TrainingNoise tn = draw_training_noise(s_.noise, loaded.latents, noise_ratio_rng_);
  const at::Tensor latents = loaded.latents.to(dev);
  tn.noise = tn.noise.to(dev);
  tn.input_noise = tn.input_noise.to(dev);
  host::NoiseSchedulerPlugin nsched(*nsched_);
  const at::Tensor noisy = nsched.add_noise(latents, tn.input_noise, tn.timesteps);
  const at::Tensor target = s_.v_parameterization ? nsched.velocity(latents, tn.noise, tn.timesteps) : tn.noise;
  at::Tensor pred;
  {
    Autocast ac(autocast_dtype_, dev.type());
    host::ModelPlugin model(*model_);
    at::Tensor cond, pooled;
    {
      const bool te_stopped = s_.stop_text_encoder_training >= 0 && at_.step >= s_.stop_text_encoder_training;
      at::AutoGradMode grad(groups_.trains_text_encoder && !te_stopped);
      std::tie(cond, pooled) = te_cache_ ? te_cache_->lookup(gb.dataset, gb.batch.items, captions) : model.encode_text(captions);
    }
    at::Tensor added = added_conditioning(imgs);
    if (added.defined()) added = added.to(dev);
    pred = model.denoise(noisy, tn.timesteps.to(dev, at::kFloat), cond, pooled, added);
  }
  const at::Tensor huber_c = huber_threshold(loss_opts_, tn.timesteps, alphas_cumprod_);
  at::Tensor loss = conditional_loss(pred.to(at::kFloat), target.to(at::kFloat), loss_opts_.loss_type, huber_c)
                       .mean({1, 2, 3})
                       .to(at::kCPU);
  loss = loss * at::tensor(weights, at::kDouble).to(at::kFloat);
  loss = post_process_loss(loss, tn.timesteps, all_snr_, loss_opts_);
  loss = loss.mean();
  const double micro_loss = loss.item<double>();
  loss = loss / static_cast<double>(s_.gradient_accumulation_steps);
  (use_scaler_ ? scaler_.scale(loss) : loss).backward();
  accum_loss_ += micro_loss / static_cast<double>(s_.gradient_accumulation_steps);
  return micro_loss;
}

void Trainer::optimizer_step(double micro_loss) {
  // fp16: unscale, and skip the optimizer step when a gradient overflowed (GradScaler).
  const bool finite = use_scaler_ ? scaler_.unscale(groups_.all) : true;
  if (use_scaler_) {
    scaler_.update(!finite);
    if (!finite) ++result_.skipped_steps;
  }
  if (finite && s_.max_grad_norm > 0) {
    // Summed where the gradients are, in float64 and parameter order; one read at the end.
    at::Tensor sum;
    for (const auto& p : groups_.all) {
      if (!p.grad().defined()) continue;
      const at::Tensor s = p.grad().to(at::kDouble).pow(2).sum();
      sum = sum.defined() ? sum + s : s;
    }
    const double total = std::sqrt(sum.defined() ? sum.item<double>() : 0.0);
    const double coef = s_.max_grad_norm / (total + 1e-6);
    if (coef < 1)
      for (const auto& p : groups_.all)
        if (p.grad().defined()) p.grad().mul_(coef);
  }
  const std::vector<double> lrs = lrs_at(at_.step);
  if (finite)
    host::OptimizerPlugin(*optimizer_).step(lrs);
  for (const auto& p : groups_.all)
    if (p.grad().defined()) p.grad().zero_();
  ++at_.step;
  // kohya's --scale_weight_norms: the network's max-norm rule after the step.
  std::string norms;
  if (s_.scale_weight_norms > 0) {
    host::Component* net = target_->network();
    if (!net) throw host::UserError("[network] scale_weight_norms (--scale_weight_norms) needs a network to train");
    at::NoGradGuard ng;
    const auto r = host::NetworkPlugin(*net).apply_max_norm(s_.scale_weight_norms);
    if (!r)
      throw host::UserError("[network] scale_weight_norms (--scale_weight_norms): network '" + s_.network_type +
                            "' has no max-norm rule (its plugin predates ABI 1.3's apply_max_norm)");
    const int64_t keys = r->keys_scaled;
    const double mean = r->mean_norm, max = r->max_norm;
    result_.keys_scaled.push_back(keys);
    result_.average_key_norms.push_back(mean);
    result_.max_key_norms.push_back(max);
    char buf[96];
    std::snprintf(buf, sizeof buf, "keys_scaled=%lld, average_key_norm=%.4g, ", static_cast<long long>(keys), mean);
    norms = buf;
    tlog_->scalar("max_norm/keys_scaled", static_cast<double>(keys), at_.step);
    tlog_->scalar("max_norm/average_key_norm", mean, at_.step);
    tlog_->scalar("max_norm/max_key_norm", max, at_.step);
  }
  const double avr_loss = recorder_.moving_average();
  result_.losses.push_back(accum_loss_);
  result_.lrs.push_back(lrs.front());
  result_.average_losses.push_back(avr_loss);
  log_micro_batch(micro_loss);
  char postfix[192];
  std::snprintf(postfix, sizeof postfix, "%savr_loss=%.4f, loss=%.4f, lr=%.2e, epoch=%d", norms.c_str(), avr_loss, accum_loss_, lrs.front(),
                at_.epoch);
  accum_loss_ = 0;
  if (bar_) host::progress_update(bar_, 1, postfix);
  sample(at_.step, std::nullopt);
  if (s_.save_every_n_steps > 0 && at_.step % s_.save_every_n_steps == 0 && at_.step < data_.total_steps) {
    save_checkpoint(checkpoints_->step_name(at_.step));
    checkpoints_->prune_step_saves(at_.step);
  }
}

void Trainer::run_epoch() {
  ++at_.epoch;
  const auto plan = datasets::group_epoch_plan(data_.data, s_.seed, at_.epoch);
  at_.batch_in_epoch = at_.epoch == resume_epoch_ ? resume_batch_ : 0;
  batches_->start_epoch(at_.epoch, plan, at_.batch_in_epoch);
  for (size_t bi = at_.batch_in_epoch; bi < plan.size(); ++bi) {
    if (at_.step >= data_.total_steps) break;
    at_.batch_in_epoch = bi + 1;
    const BatchSource::Batch loaded = batches_->next();  // prepared ahead on worker threads, or cached latents
    const double micro_loss = micro_batch(plan[bi], loaded);
    recorder_.add(at_.epoch == (resume_epoch_ > 0 ? resume_epoch_ : 1), bi, micro_loss);
    if (++micro_ % s_.gradient_accumulation_steps != 0) {
      log_micro_batch(micro_loss);  // kohya logs every micro-batch at the current global step
      continue;
    }
    optimizer_step(micro_loss);
  }
  tlog_->epoch(at_.epoch, recorder_.moving_average());
  tlog_->flush();
  if (s_.save_every_n_epochs > 0 && at_.epoch % s_.save_every_n_epochs == 0 && at_.step < data_.total_steps) {
    at_.batch_in_epoch = plan.size();
    save_checkpoint(checkpoints_->epoch_name(at_.epoch));
    checkpoints_->prune_epoch_saves(at_.epoch);
  }
  sample(at_.step, at_.epoch);
}

void Trainer::write_loss_files() {
  const fs::path outdir = s_.output_dir;
  const std::string csv = (outdir / (s_.output_name + ".loss.csv")).string();
  {
    std::ofstream f(csv + ".tmp");
    f << "step,loss\n";
    for (size_t i = 0; i < result_.losses.size(); ++i) f << i + 1 << "," << result_.losses[i] << "\n";
  }
  fs::rename(csv + ".tmp", csv);
  if (result_.losses.empty()) return;
  std::vector<int64_t> steps_axis;
  const int64_t first = at_.step - static_cast<int64_t>(result_.losses.size()) + 1;
  for (size_t i = 0; i < result_.losses.size(); ++i) steps_axis.push_back(first + static_cast<int64_t>(i));
  const std::string png = (outdir / (s_.output_name + ".loss.png")).string();
  try {
    logging::LossCurveOptions curve;
    if (result_.lrs.size() == result_.losses.size()) curve.lrs = result_.lrs;
    logging::write_loss_curve_png(png, steps_axis, result_.losses, s_.output_name + ": training loss", curve);
    result_.loss_curve = png;
  } catch (const std::exception& e) {
    host::log(SUMI_LOG_WARN, "train", std::string("no loss-curve image: ") + e.what());
  }
}

TrainResult Trainer::run() {
  data_rng_ = datasets::derived_rng(s_.seed, 7);
  // The stream Python's `random` plays in kohya (multires noise ratios).
  noise_ratio_rng_ = datasets::derived_rng(s_.seed, 11);
  use_scaler_ = s_.mixed_precision == "fp16";
  checkpoints_ = std::make_unique<Checkpoints>(s_, registry_, *target_);
  sampler_ = std::make_unique<TrainingSampler>(s_.sample, *pm_, registry_, *model_, target_->network(), s_.network_multiplier,
                                               s_.v_parameterization, autocast_dtype_, s_.output_dir, s_.output_name, s_.seed);
  tlog_ = std::make_unique<TrainLog>(s_.log);
  result_.event_file = tlog_->event_file();
  if (auto resumed = checkpoints_->resume(data_rng_, use_scaler_ ? &scaler_ : nullptr)) {
    at_.step = resumed->step;
    resume_epoch_ = resumed->epoch;
    resume_batch_ = resumed->batch_in_epoch;
    at_.epoch = resume_epoch_ - 1;
  }
  // The bar counts this run's steps, so it/s and the ETA stay right after a resume.
  bar_ = progress_ ? host::progress_begin("steps", data_.total_steps - at_.step) : nullptr;
  if (at_.step == 0) sample(0, 0);
  templates_ = s_.ti_template == "object" ? &ti_object_templates() : s_.ti_template == "style" ? &ti_style_templates() : nullptr;
  while (at_.step < data_.total_steps) run_epoch();
  if (bar_) host::progress_end(bar_);
  tlog_->flush();
  result_.steps = at_.step;
  result_.output_file = checkpoints_->save(s_.output_name, run_facts());
  checkpoints_->save_state(s_.output_name, at_, data_rng_, use_scaler_ ? &scaler_ : nullptr);
  write_loss_files();
  return result_;
}

}  // namespace

TrainResult train(const TrainSettings& s, const std::vector<std::string>& plugin_dirs, bool progress) {
  Trainer trainer(s, plugin_dirs, progress);
  return trainer.run();
}

TrainResult train_network(const TrainSettings& s, const std::vector<std::string>& plugin_dirs, bool progress) {
  return train(s, plugin_dirs, progress);
}

}  // namespace sumi::app
