// The network-training loop. Order of operations follows kohya's train_network.py so that a
// user's settings mean the same thing: encode latents (no grad), draw noise (+ offset), draw
// timesteps in [min_timestep, max_timestep), noise the latents, predict, MSE per sample against
// the noise (or the v target), weight (prior loss, min-SNR), average, backward; every
// gradient_accumulation_steps: clip, step the optimizer at the scheduled learning rates.
#include "trainer.h"

#include "app/app.h"
#include "core/error.h"
#include "core/op_bridge.h"
#include "core/progress.h"
#include "core/runtime.h"
#include "core/tensor_handle.h"
#include "io/safetensors_torch.h"
#include "app/train/network_file.h"
#include "app/train/latent_cache.h"

#include <sumi/datasets/dataset.h>
#include <sumi/datasets/random.h>

#include "batch_tensor.h"

#include <ATen/ATen.h>
#include <ATen/autocast_mode.h>

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

// Owns handles handed to vtable calls for one scope.
struct Handles {
  std::vector<sumi_tensor> hs;
  ~Handles() {
    for (auto h : hs) host::release_handle(h);
  }
  sumi_tensor operator()(const at::Tensor& t) {
    if (!t.defined()) return nullptr;
    hs.push_back(host::make_handle(t));
    return hs.back();
  }
  at::Tensor take(sumi_tensor h) {
    if (!h) return at::Tensor();
    hs.push_back(h);
    return host::unwrap(h);
  }
};

// bf16 autocast on the device the model runs on (CPU here), restored on exit.
struct Autocast {
  bool on;
  bool prev_enabled = false;
  at::ScalarType prev_dtype = at::kBFloat16;
  explicit Autocast(bool enable) : on(enable) {
    if (!on) return;
    prev_enabled = at::autocast::is_cpu_enabled();
    prev_dtype = at::autocast::get_autocast_cpu_dtype();
    at::autocast::set_cpu_enabled(true);
    at::autocast::set_autocast_cpu_dtype(at::kBFloat16);
  }
  ~Autocast() {
    if (!on) return;
    at::autocast::set_cpu_enabled(prev_enabled);
    at::autocast::set_autocast_cpu_dtype(prev_dtype);
    at::autocast::clear_cache();
  }
};

std::string network_args_json(const std::map<std::string, std::string>& params) {
  nlohmann::json j = nlohmann::json::object();
  for (const auto& [k, v] : params)
    if (k != "dim" && k != "alpha" && k != "dropout") j[k] = v;
  return j.dump();
}

}  // namespace

TrainResult train_network(const TrainSettings& s, const std::vector<std::string>& plugin_dirs, bool progress) {
  using clock = std::chrono::system_clock;
  const auto started = clock::now();
  CommonOptions common;
  common.plugin_dirs = plugin_dirs;
  auto pm = make_plugin_manager(common);
  host::Registry registry;
  at::manual_seed(s.seed);

  if (s.mixed_precision != "no" && s.mixed_precision != "bf16")
    throw host::UserError("[train] mixed_precision: sumi supports \"no\" and \"bf16\" so far, got \"" + s.mixed_precision +
                          "\" (fp16 needs loss scaling, which sumi does not support yet)");
  if (s.gradient_accumulation_steps < 1) throw host::UserError("[train] gradient_accumulation_steps must be >= 1");
  if (s.min_timestep < 0 || s.max_timestep > 1000 || s.min_timestep >= s.max_timestep)
    throw host::UserError("[train] need 0 <= min_timestep < max_timestep <= 1000");

  // --- the dataset, checked up front (every image decoded, every caption read)
  datasets::DatasetGroupConfig group = s.dataset_config.empty()
                                           ? datasets::config_from_arguments(s.dataset_args)
                                           : datasets::load_dataset_config(s.dataset_config, s.dataset_args);
  std::vector<datasets::Dataset> data;
  long long num_train_images = 0, num_reg_images = 0;
  for (const auto& dc : group.datasets) {
    datasets::BuildReport report;
    data.push_back(datasets::Dataset::build(dc, {}, &report));
    for (const auto& w : report.warnings) host::log(SUMI_LOG_WARN, "datasets", w);
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
  mcfg["dtype"] = "fp32";  // trained networks hold fp32 masters; bf16 comes from autocast
  host::Component model(model_ref, "model", registry, host::make_config(*model_ref.component, mcfg));
  const auto& mvt = model.vtable<sumi_model_vtable>();
  model.check(mvt.load(model.self(), s.model_path.c_str()), ("load " + s.model_path).c_str());
  // Latent caching (before the network exists, as kohya) and the prefetching loader.
  BatchSource batches(data, s.dataset_args, s.seed, s.family, model_latent_encoder(model, s.family, s.mixed_precision == "bf16"));

  auto nsched_ref = pm.find(SUMI_KIND_NOISE_SCHEDULER, s.noise_scheduler_type);
  auto ncfg = s.noise_scheduler_params;
  if (s.v_parameterization) ncfg["prediction_type"] = "v_prediction";
  host::Component nsched(nsched_ref, "noise_scheduler", registry, host::make_config(*nsched_ref.component, ncfg));
  const auto& nvt_s = nsched.vtable<sumi_noise_scheduler_vtable>();
  at::Tensor alphas_cumprod;
  {
    sumi_tensor h = nullptr;
    nsched.check(nvt_s.alphas_cumprod(nsched.self(), &h), "alphas_cumprod");
    alphas_cumprod = host::unwrap(h).to(at::kDouble);
    host::release_handle(h);
  }

  auto net_ref = pm.find(SUMI_KIND_NETWORK, s.network_type);
  host::Component network(net_ref, "network", registry, host::make_config(*net_ref.component, s.network_params));
  attach_network(model, network, s.network_weights, s.network_multiplier, true);

  const auto groups = registry.param_groups("network");
  if (groups.empty()) throw host::UserError("the network adapts no module of this model: nothing to train");
  bool trains_text_encoder = false;
  std::vector<double> base_lrs;
  auto opt_ref = pm.find(SUMI_KIND_OPTIMIZER, s.optimizer_type);
  host::Component optimizer(opt_ref, "optimizer", registry, host::make_config(*opt_ref.component, s.optimizer_params));
  std::vector<at::Tensor> all_params;
  for (const auto& [gname, params] : groups) {
    const bool te = gname.rfind("text_encoder", 0) == 0;
    trains_text_encoder |= te;
    base_lrs.push_back(te ? s.text_encoder_lr.value_or(s.learning_rate) : s.unet_lr.value_or(s.learning_rate));
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
  const auto te_cache = TextEncoderCache::create(data, s.dataset_args, s.family, trains_text_encoder, model, s.mixed_precision == "bf16");
  auto lr_ref = pm.find(SUMI_KIND_LR_SCHEDULER, s.lr_scheduler_type);
  host::Component lr_sched(lr_ref, "lr_scheduler", registry, host::make_config(*lr_ref.component, s.lr_scheduler_params));

  int64_t n_params = 0;
  for (const auto& p : all_params) n_params += p.numel();
  host::log(SUMI_LOG_INFO, "train",
            "images " + std::to_string(num_train_images) + " (+" + std::to_string(num_reg_images) + " reg), batches/epoch " +
                std::to_string(batches_per_epoch) + ", steps " + std::to_string(total_steps) + ", network " +
                std::to_string(n_params) + " parameters in " + std::to_string(groups.size()) + " groups");

  // --- the loop
  const bool bf16 = s.mixed_precision == "bf16";
  TrainResult result;
  sumi_progress* bar = progress ? host::progress_begin("steps", total_steps) : nullptr;
  std::mt19937_64 data_rng = datasets::derived_rng(s.seed, 7);
  int64_t step = 0, micro = 0;
  double accum_loss = 0;
  int epoch = 0;
  const fs::path outdir = s.output_dir;
  fs::create_directories(outdir);
  auto metadata = [&](int64_t at_step, int at_epoch) {
    std::map<std::string, std::string> m{
        {"ss_session_id", std::to_string(s.seed)},
        {"ss_training_started_at", std::to_string(std::chrono::duration_cast<std::chrono::seconds>(started.time_since_epoch()).count())},
        {"ss_training_finished_at", std::to_string(std::chrono::duration_cast<std::chrono::seconds>(clock::now().time_since_epoch()).count())},
        {"ss_output_name", s.output_name},
        {"ss_learning_rate", std::to_string(s.learning_rate)},
        {"ss_unet_lr", s.unet_lr ? std::to_string(*s.unet_lr) : "None"},
        {"ss_text_encoder_lr", s.text_encoder_lr ? std::to_string(*s.text_encoder_lr) : "None"},
        {"ss_num_train_images", std::to_string(num_train_images)},
        {"ss_num_reg_images", std::to_string(num_reg_images)},
        {"ss_num_batches_per_epoch", std::to_string(batches_per_epoch)},
        {"ss_num_epochs", std::to_string(at_epoch)},
        {"ss_epoch", std::to_string(at_epoch)},
        {"ss_steps", std::to_string(at_step)},
        {"ss_max_train_steps", std::to_string(total_steps)},
        {"ss_gradient_accumulation_steps", std::to_string(s.gradient_accumulation_steps)},
        {"ss_lr_warmup_steps", std::to_string(s.lr_warmup_steps)},
        {"ss_lr_scheduler", s.lr_scheduler_type},
        {"ss_network_module", "networks." + s.network_type},
        {"ss_network_dim", s.network_params.count("dim") ? s.network_params.at("dim") : "4"},
        {"ss_network_alpha", s.network_params.count("alpha") ? s.network_params.at("alpha") : "1"},
        {"ss_network_dropout", s.network_params.count("dropout") ? s.network_params.at("dropout") : "None"},
        {"ss_network_args", network_args_json(s.network_params)},
        {"ss_mixed_precision", s.mixed_precision},
        {"ss_full_fp16", "False"},
        {"ss_v2", s.family == "sd2" ? "True" : "False"},
        {"ss_base_model_version", s.family == "sdxl" ? "sdxl_base_v1-0" : s.family == "sd2" ? (s.v_parameterization ? "sd_v2_768_v" : "sd_v2_512") : "sd_v1"},
        {"ss_clip_skip", s.model_params.count("clip_skip") ? s.model_params.at("clip_skip") : "None"},
        {"ss_seed", std::to_string(s.seed)},
        {"ss_noise_offset", std::to_string(s.noise_offset)},
        {"ss_optimizer", s.optimizer_type},
        {"ss_max_grad_norm", std::to_string(s.max_grad_norm)},
        {"ss_prior_loss_weight", std::to_string(s.prior_loss_weight)},
        {"ss_min_snr_gamma", s.min_snr_gamma ? std::to_string(*s.min_snr_gamma) : "None"},
        {"ss_sd_model_name", fs::path(s.model_path).filename().string()},
        {"ss_vae_name", s.model_params.count("vae") && !s.model_params.at("vae").empty() ? fs::path(s.model_params.at("vae")).filename().string() : "None"},
        {"ss_training_comment", "None"},
        {"ss_sd_scripts_commit_hash", "sumi 0.1.0"},
    };
    const auto& b = group.datasets.front().buckets;
    for (const auto& [k, v] : modelspec_lora(s.family, s.v_parameterization, s.output_name, b.resolution.width, b.resolution.height))
      m[k] = v;
    m["ss_resolution"] = "(" + std::to_string(b.resolution.width) + ", " + std::to_string(b.resolution.height) + ")";
    return m;
  };
  auto save = [&](const std::string& name, int64_t at_step, int at_epoch) {
    const std::string path = (outdir / (name + ".safetensors")).string();
    save_network(path, registry, "network", s.save_precision, metadata(at_step, at_epoch));
    return path;
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
      if (e.component == "network" || e.component == "optimizer") tensors.emplace_back(e.key(), e.tensor.detach().contiguous());
    {
      auto gen = at::detail::getDefaultCPUGenerator();
      std::lock_guard<std::mutex> lock(gen.mutex());
      tensors.emplace_back("rng/torch_cpu", gen.get_state());
    }
    std::ostringstream rng;
    rng << data_rng;
    nlohmann::json j{{"format", "sumi-train-state-1"}, {"step", step},         {"epoch", epoch},
                     {"batch_in_epoch", batch_in_epoch}, {"seed", s.seed}, {"data_rng", rng.str()},
                     {"network", s.network_type},        {"optimizer", s.optimizer_type}};
    io::save_tensors((tmp / "train_state.safetensors").string(), tensors, {});
    std::ofstream((tmp / "train_state.json").string()) << j.dump(1);
    fs::remove_all(dir);
    fs::rename(tmp, dir);
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
    if (j.value("network", "") != s.network_type || j.value("optimizer", "") != s.optimizer_type)
      throw host::UserError("--resume " + s.resume + ": saved with network '" + j.value("network", "") + "' and optimizer '" +
                            j.value("optimizer", "") + "', this run uses '" + s.network_type + "' and '" + s.optimizer_type + "'");
    std::map<std::string, at::Tensor> saved;
    for (auto& [k, t] : io::load_all((dir / "train_state.safetensors").string())) saved[k] = t;
    at::NoGradGuard ng;
    for (const auto& e : registry.entries()) {
      if (e.component != "network" && e.component != "optimizer") continue;
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
    host::log(SUMI_LOG_INFO, "train", "resuming at step " + std::to_string(step) + ", epoch " + std::to_string(resume_epoch));
    if (bar) host::progress_update(bar, step, nullptr);
  }

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
        weights.push_back(ds.loss_weight(item, s.prior_loss_weight));
      }
      const int64_t B = static_cast<int64_t>(imgs.size());
      Handles hs;
      const at::Tensor latents = loaded.latents;
      at::Tensor noise = at::randn_like(latents);
      if (s.noise_offset > 0) noise = noise + s.noise_offset * at::randn({B, latents.size(1), 1, 1});
      const at::Tensor timesteps = at::randint(s.min_timestep, s.max_timestep, {B}, at::kLong);
      at::Tensor noisy, target;
      {
        sumi_tensor out = nullptr;
        nsched.check(nvt_s.add_noise(nsched.self(), hs(latents), hs(noise), hs(timesteps), &out), "add_noise");
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
        Autocast ac(bf16);
        std::vector<const char*> cps;
        for (const auto& c : captions) cps.push_back(c.c_str());
        sumi_tensor cond = nullptr, pooled = nullptr;
        {
          at::AutoGradMode grad(trains_text_encoder);
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
      at::Tensor loss = (pred.to(at::kFloat) - target.to(at::kFloat)).pow(2).mean({1, 2, 3});
      loss = loss * at::tensor(weights, at::kDouble).to(at::kFloat);
      if (s.min_snr_gamma) {
        // Min-SNR weighting (Hang et al.): min(SNR, gamma) / SNR for eps; / (SNR + 1) for v.
        const at::Tensor ac_t = alphas_cumprod.index_select(0, timesteps);
        const at::Tensor snr = ac_t / (1 - ac_t);
        at::Tensor w = at::clamp_max(snr, *s.min_snr_gamma) / (s.v_parameterization ? snr + 1 : snr);
        loss = loss * w.to(at::kFloat);
      }
      loss = loss.mean() / static_cast<double>(s.gradient_accumulation_steps);
      loss.backward();
      accum_loss += loss.item<double>();
      if (++micro % s.gradient_accumulation_steps != 0) continue;

      if (s.max_grad_norm > 0) {
        double total = 0;
        for (const auto& p : all_params)
          if (p.grad().defined()) total += p.grad().to(at::kDouble).pow(2).sum().item<double>();
        total = std::sqrt(total);
        const double coef = s.max_grad_norm / (total + 1e-6);
        if (coef < 1)
          for (const auto& p : all_params)
            if (p.grad().defined()) p.grad().mul_(coef);
      }
      sumi_lr_query q{sizeof(sumi_lr_query), step, total_steps, s.lr_warmup_steps, s.learning_rate};
      double factor = 1.0;
      lr_sched.check(lr_sched.vtable<sumi_lr_scheduler_vtable>().factor(lr_sched.self(), &q, &factor), "factor");
      std::vector<double> lrs;
      for (double b : base_lrs) lrs.push_back(b * factor);
      optimizer.check(optimizer.vtable<sumi_optimizer_vtable>().step(optimizer.self(), lrs.data(),
                                                                     static_cast<int64_t>(lrs.size())),
                      "step");
      for (const auto& p : all_params)
        if (p.grad().defined()) p.grad().zero_();
      ++step;
      result.losses.push_back(accum_loss);
      char postfix[64];
      std::snprintf(postfix, sizeof postfix, "loss=%.4f, lr=%.2e, epoch=%d", accum_loss, lrs.front(), epoch);
      accum_loss = 0;
      if (bar) host::progress_update(bar, 1, postfix);
      if (s.save_every_n_steps > 0 && step % s.save_every_n_steps == 0 && step < total_steps) {
        char n[32];
        std::snprintf(n, sizeof n, "-step%08lld", static_cast<long long>(step));
        save(s.output_name + n, step, epoch);
        save_state(s.output_name + n);
      }
    }
    if (s.save_every_n_epochs > 0 && epoch % s.save_every_n_epochs == 0 && step < total_steps) {
      char n[32];
      std::snprintf(n, sizeof n, "-%06d", epoch);
      batch_in_epoch = plan.size();
      save(s.output_name + n, step, epoch);
      save_state(s.output_name + n);
    }
  }
  if (bar) host::progress_end(bar);
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
  return result;
}

}  // namespace sumi::app
