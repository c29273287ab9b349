// `sumi train`: kohya-style training from a recipe and/or kohya's flags. The mode is [train] mode,
// or what kohya's scripts imply: a [network] section (--network_module) means train_network.py,
// token_string (--token_string) train_textual_inversion.py, in_json (--in_json) fine_tune.py,
// anything else train_db.py (DreamBooth).
#include "commands.h"

#include "app.h"
#include "core/error.h"
#include "core/runtime.h"
#include "model_file.h"
#include "train/dataset_options.h"
#include "train/trainer.h"

#include <sumi/recipe/kohya.h>
#include <sumi/recipe/load.h>
#include <sumi/recipe/schema.h>

#include <cstdio>
#include <iostream>
#include <random>
#include <set>

namespace sumi::app {

namespace {

// A plugin section's own keys (not the host's) as text values for the plugin's schema.
std::map<std::string, std::string> plugin_params(const recipe::ResolvedSection& sec) {
  std::set<std::string> host_keys;
  for (const auto& spec : recipe::host_schema(sec.name())) host_keys.insert(spec.key);
  std::map<std::string, std::string> out;
  for (const auto& e : sec.entries()) {
    if (host_keys.count(e.key) || !sec.has(e.key)) continue;
    std::string text;
    switch (e.type) {
      case SUMI_PARAM_STRING: text = sec.get_string(e.key); break;
      case SUMI_PARAM_BOOL: text = sec.get_bool(e.key) ? "true" : "false"; break;
      case SUMI_PARAM_DOUBLE_LIST:
        for (double d : sec.get_double_list(e.key)) text += (text.empty() ? "" : ",") + recipe::format_double(d);
        break;
      case SUMI_PARAM_INT_LIST:
        for (int64_t i : sec.get_int_list(e.key)) text += (text.empty() ? "" : ",") + std::to_string(i);
        break;
      default: text = sec.text(e.key);
    }
    out[e.key] = text;
  }
  return out;
}

// kohya's ss_network_module: --network_module as given (the recipe layer keeps it as the type's
// source text); a recipe's bare plugin name reads as kohya's "networks.<name>", a dotted module
// or a library path as written.
std::string kohya_network_module(const recipe::Value& network_table, const std::string& type) {
  const recipe::Value* v = network_table.find("type");
  if (v && !v->source_text().empty()) return v->source_text();
  if (type.find('.') != std::string::npos || type.find('/') != std::string::npos) return type;
  return "networks." + type;
}

// kohya's net_kwargs (ss_network_args): the network keys the user gave that no kohya flag of their
// own sets (--network_dim, --network_alpha, --network_dropout, --network_train_*_only), as their
// text, in the order given. Schema defaults and host keys are not arguments.
std::vector<std::pair<std::string, std::string>> kohya_network_args(const recipe::Value& network_table,
                                                                    const recipe::ResolvedSection& net) {
  std::set<std::string> own;
  for (const auto& spec : recipe::host_schema("network")) own.insert(spec.key);
  for (const auto& f : recipe::kohya_flags()) {
    const std::string target = f.target;
    if (f.kind != recipe::KohyaKind::KeyValues && target.rfind("network.", 0) == 0) own.insert(target.substr(8));
  }
  std::vector<std::pair<std::string, std::string>> out;
  for (const auto& key : network_table.keys()) {
    if (own.count(key) || !net.has(key)) continue;
    const recipe::Value& v = *network_table.find(key);
    std::string text = v.kind() == recipe::Value::Kind::String ? v.as_string() : v.source_text();
    if (text.empty()) text = v.kind() == recipe::Value::Kind::Bool ? (v.as_bool() ? "True" : "False") : v.text();
    out.emplace_back(key, text);
  }
  return out;
}

// The model section completed: a path is required; the family comes from the file when the recipe
// does not name it. Training noises with DDPM (kohya's schedule) unless told otherwise.
void complete_model_and_noise(recipe::Value& root, host::PluginManager& pm) {
  const recipe::Value* model = root.find("model");
  if (!model || !model->find("path"))
    throw host::UserError("sumi train: no model: give --pretrained_model_name_or_path or [model] path");
  if (!model->find("type")) {
    // The model plugins are asked which loads the file; kohya's --v2 must name that one.
    const recipe::Value* v2 = model->find("v2");
    const std::vector<std::string> flags = v2 && v2->as_bool() ? std::vector<std::string>{"v2"} : std::vector<std::string>{};
    const std::string component = find_model_component(pm, model->find("path")->as_string(), flags);
    recipe::set_override(root, "model.type", "\"" + component + "\"", "detected from the model file");
  }
  // Naming DDPM lets its own keys (rescale_betas_zero_snr, which --zero_terminal_snr sets) be
  // validated against its schema.
  const recipe::Value* nsec = root.find("noise_scheduler");
  if (!nsec || !nsec->find("type")) recipe::set_override(root, "noise_scheduler.type", "\"ddpm\"", "training default");
}

// [train] mode, or what kohya's scripts imply; a [network] section must agree with it.
std::string train_mode_name(const recipe::Value& root, const datasets::CliOptions& dataset_args) {
  std::string mode_name;
  const recipe::Value* tr = root.find("train");
  const recipe::Value* m = tr ? tr->find("mode") : nullptr;
  if (m) mode_name = m->as_string();
  else if (root.find("network")) mode_name = "network";
  else if (tr && tr->find("token_string")) mode_name = "textual_inversion";
  else if (dataset_args.count("in_json")) mode_name = "fine_tune";
  else mode_name = "dreambooth";
  const TrainMode mode = parse_train_mode(mode_name);
  if (mode == TrainMode::network && !root.find("network"))
    throw host::UserError("[train] mode = \"network\" needs a [network] section (--network_module networks.lora, ...)");
  if (mode != TrainMode::network && root.find("network"))
    throw host::UserError("[network] (--network_module / --network_*) makes no sense in " + mode_name +
                          " mode: drop it, or train a network (mode = \"network\")");
  return mode_name;
}

void set_model(TrainSettings& s, const recipe::ResolvedSection& m, const std::string& mode_name) {
  s.model_path = m.get_string("path");
  s.family = m.get_string("type");
  s.model_params = plugin_params(m);
  s.v_parameterization = m.has("v_parameterization") && m.get_bool("v_parameterization");
  if (m.has("base_weights")) s.base_weights = m.get_string_list("base_weights");
  if (m.has("base_weights_multiplier")) s.base_weights_multiplier = m.get_double_list("base_weights_multiplier");
  if ((m.has("base_weights") || m.has("base_weights_multiplier")) && mode_name != "network")
    throw host::UserError("[model] base_weights (--base_weights) is train_network.py's: network files merged into the model before a "
                          "network is trained; this run is " + mode_name + " (merge them first with `sumi merge_lora --sd_model`)");
}

void set_network(TrainSettings& s, const recipe::Value& network_table, const recipe::ResolvedSection& net) {
  s.network_type = net.get_string("type");
  s.network_params = plugin_params(net);
  s.network_module = kohya_network_module(network_table, s.network_type);
  s.network_args = kohya_network_args(network_table, net);
  if (net.has("weights")) s.network_weights = net.get_string("weights");
  s.dim_from_weights = net.has("dim_from_weights") && net.get_bool("dim_from_weights");
  if (net.has("scale_weight_norms")) s.scale_weight_norms = net.get_double("scale_weight_norms");
  s.network_multiplier = net.get_double("multiplier");
}

// Textual Inversion's token and which text encoders train.
void set_tokens_and_text_encoder(TrainSettings& s, const recipe::ResolvedSection& train, const std::string& mode_name) {
  if (train.has("token_string")) s.token_string = train.get_string("token_string");
  if (train.has("init_word")) s.init_word = train.get_string("init_word");
  if (train.has("weights")) s.ti_weights = train.get_string("weights");
  s.num_vectors_per_token = train.get_int("num_vectors_per_token");
  if (train.get_bool("use_object_template") && train.get_bool("use_style_template"))
    throw host::UserError("[train] use_object_template and use_style_template: choose one");
  s.ti_template = train.get_bool("use_object_template") ? "object" : train.get_bool("use_style_template") ? "style" : "";
  // train_db.py trains the text encoder unless --stop_text_encoder_training is negative; fine_tune.py
  // only with --train_text_encoder, and so does sdxl_train.py (SDXL's DreamBooth and fine-tuning
  // script, which has no --stop_text_encoder_training: given for SDXL, it trains them as train_db).
  const bool te_flag = train.get_bool("train_text_encoder");
  if (train.has("stop_text_encoder_training")) {
    if (mode_name != "dreambooth")
      throw host::UserError("[train] stop_text_encoder_training is DreamBooth's (train_db.py); this run is " + mode_name);
    s.stop_text_encoder_training = train.get_int("stop_text_encoder_training");
  }
  if (mode_name == "dreambooth") {
    if (te_flag && s.stop_text_encoder_training < 0 && train.has("stop_text_encoder_training"))
      throw host::UserError("[train] train_text_encoder with a negative stop_text_encoder_training: choose one");
    s.train_text_encoder = train.has("stop_text_encoder_training") ? s.stop_text_encoder_training >= 0 : te_flag;
    s.train_text_encoder_by_model = !train.has("stop_text_encoder_training") && !te_flag;
    if (s.stop_text_encoder_training < 0) s.stop_text_encoder_training = -1;
  } else {
    s.train_text_encoder = te_flag;
  }
}

void set_schedules(TrainSettings& s, const recipe::ResolvedSection& opt, const recipe::ResolvedSection& lr,
                   const recipe::ResolvedSection& ns) {
  s.optimizer_type = opt.get_string("type");
  s.optimizer_params = plugin_params(opt);
  s.learning_rate = opt.get_double("learning_rate");
  if (opt.has("unet_lr")) s.unet_lr = opt.get_double("unet_lr");
  if (opt.has("text_encoder_lr")) s.text_encoder_lr = opt.get_double("text_encoder_lr");
  if (opt.has("text_encoder_lr1")) s.text_encoder_lr1 = opt.get_double("text_encoder_lr1");
  if (opt.has("text_encoder_lr2")) s.text_encoder_lr2 = opt.get_double("text_encoder_lr2");
  if (opt.has("block_lr")) s.block_lr = opt.get_double_list("block_lr");
  s.lr_scheduler_type = lr.get_string("type");
  s.lr_scheduler_params = plugin_params(lr);
  s.lr_warmup_steps = lr.get_int("warmup_steps");
  s.noise_scheduler_type = ns.get_string("type");
  s.noise_scheduler_params = plugin_params(ns);
}

// The training loop's [train] keys: steps, batches, precision, noise and loss.
void set_training_loop(TrainSettings& s, const recipe::ResolvedSection& train) {
  s.max_train_steps = train.get_int("max_train_steps");
  if (train.has("max_train_epochs")) s.max_train_epochs = train.get_int("max_train_epochs");
  s.seed = train.has("seed") ? static_cast<uint64_t>(train.get_int("seed")) : std::random_device{}();
  s.dataset_args["train_batch_size"] = static_cast<long long>(train.get_int("batch_size"));
  s.dataset_args["max_data_loader_n_workers"] = static_cast<long long>(train.get_int("max_data_loader_n_workers"));
  s.dataset_args["persistent_data_loader_workers"] = train.get_bool("persistent_data_loader_workers");
  s.gradient_accumulation_steps = train.get_int("gradient_accumulation_steps");
  s.max_grad_norm = train.get_double("max_grad_norm");
  s.mixed_precision = train.get_string("mixed_precision");
  s.full_bf16 = train.get_bool("full_bf16");
  s.gradient_checkpointing = train.get_bool("gradient_checkpointing");
  s.mem_eff_attn = train.get_bool("mem_eff_attn") || train.get_bool("xformers") || train.get_bool("sdpa");
  s.lowram = train.get_bool("lowram");
  s.noise.noise_offset = train.get_double("noise_offset");
  s.noise.noise_offset_random_strength = train.get_bool("noise_offset_random_strength");
  if (train.has("adaptive_noise_scale")) s.noise.adaptive_noise_scale = train.get_double("adaptive_noise_scale");
  s.noise.multires_noise_iterations = train.get_int("multires_noise_iterations");
  s.noise.multires_noise_discount = train.get_double("multires_noise_discount");
  s.noise.ip_noise_gamma = train.get_double("ip_noise_gamma");
  s.noise.ip_noise_gamma_random_strength = train.get_bool("ip_noise_gamma_random_strength");
  s.noise.min_timestep = train.get_int("min_timestep");
  s.noise.max_timestep = train.get_int("max_timestep");
  s.loss.loss_type = train.get_string("loss_type");
  s.loss.huber_schedule = train.get_string("huber_schedule");
  s.loss.huber_c = train.get_double("huber_c");
  s.loss.huber_scale = train.get_double("huber_scale");
  if (train.has("min_snr_gamma")) s.loss.min_snr_gamma = train.get_double("min_snr_gamma");
  s.loss.scale_v_pred_loss_like_noise_pred = train.get_bool("scale_v_pred_loss_like_noise_pred");
  if (train.has("v_pred_like_loss")) s.loss.v_pred_like_loss = train.get_double("v_pred_like_loss");
  s.loss.debiased_estimation_loss = train.get_bool("debiased_estimation_loss");
  s.prior_loss_weight = train.get_double("prior_loss_weight");
  s.skip_bad_files = train.get_bool("skip_bad_files");
}

// [output]: where and how the result and its states are saved, logs and metadata.
void set_output(TrainSettings& s, const recipe::ResolvedSection& out) {
  s.output_dir = out.get_string("output_dir");
  s.output_name = out.get_string("output_name");
  s.save_model_as = out.get_string("save_model_as");
  if (s.mode != TrainMode::dreambooth && s.save_model_as != "safetensors")
    throw host::UserError("[output] save_model_as: " + std::string(s.mode == TrainMode::network ? "networks" : "embeddings") +
                          " are saved as safetensors; got '" + s.save_model_as + "'");
  s.save_precision = out.get_string("save_precision");
  s.save_every_n_steps = out.get_int("save_every_n_steps");
  s.save_every_n_epochs = out.get_int("save_every_n_epochs");
  s.save_state = out.get_bool("save_state");
  for (auto [key, field] : {std::pair{"save_last_n_epochs", &s.save_last_n_epochs},
                            std::pair{"save_last_n_epochs_state", &s.save_last_n_epochs_state},
                            std::pair{"save_last_n_steps", &s.save_last_n_steps},
                            std::pair{"save_last_n_steps_state", &s.save_last_n_steps_state}})
    if (out.has(key)) *field = out.get_int(key);
  if (out.has("logging_dir")) s.log.logging_dir = out.get_string("logging_dir");
  s.log.log_prefix = out.get_string("log_prefix");
  s.log.log_with = out.get_string("log_with");
  s.log.log_tracker_name = out.get_string("log_tracker_name");
  if (out.has("training_comment")) s.training_comment = out.get_string("training_comment");
  s.no_metadata = out.get_bool("no_metadata");
  if (out.has("metadata_title")) s.metadata_title = out.get_string("metadata_title");
  if (out.has("metadata_author")) s.metadata_author = out.get_string("metadata_author");
  if (out.has("metadata_description")) s.metadata_description = out.get_string("metadata_description");
  if (out.has("metadata_license")) s.metadata_license = out.get_string("metadata_license");
  if (out.has("metadata_tags")) s.metadata_tags = out.get_string("metadata_tags");
}

void set_sample(TrainSettings& s, const recipe::ResolvedSection& sample) {
  if (sample.has("prompts")) s.sample.prompts = sample.get_string("prompts");
  s.sample.every_n_steps = sample.get_int("every_n_steps");
  s.sample.every_n_epochs = sample.get_int("every_n_epochs");
  s.sample.at_first = sample.get_bool("at_first");
  s.sample.sampler = sample.get_string("sampler");
}

// The recipe tree, completed and validated, as the trainer's settings.
TrainSettings train_settings(recipe::Value& root, host::PluginManager& pm, const CommonOptions& o) {
  complete_model_and_noise(root, pm);
  std::string dataset_config;
  TrainSettings s;
  s.device = run_device(o.device);
  s.dataset_args = dataset_options(root, dataset_config);
  s.dataset_config = dataset_config;
  const std::string mode_name = train_mode_name(root, s.dataset_args);
  // Validate everything else against the host's keys and the plugins' schemas.
  const auto schemas = plugin_schemas(root, pm);
  const auto m = resolve(root, "model", schemas);
  const auto opt = resolve(root, "optimizer", schemas);
  const auto lr = resolve(root, "lr_scheduler", schemas);
  const auto ns = resolve(root, "noise_scheduler", schemas);
  const auto train = resolve(root, "train", schemas);
  const auto out = resolve(root, "output", schemas);
  const auto sample = resolve(root, "sample", schemas);

  set_model(s, m, mode_name);
  s.mode = parse_train_mode(mode_name);
  if (s.mode == TrainMode::network) {
    const auto net = resolve(root, "network", schemas);
    set_network(s, *root.find("network"), net);
  }
  set_tokens_and_text_encoder(s, train, mode_name);
  set_schedules(s, opt, lr, ns);
  set_training_loop(s, train);
  set_output(s, out);
  set_sample(s, sample);
  if (train.has("resume")) s.resume = train.get_string("resume");
  return s;
}

void print_result(const TrainResult& result, const TrainSettings& s) {
  std::printf("train: %lld steps, loss %.5f (first) -> %.5f (last)\n", static_cast<long long>(result.steps),
              result.losses.empty() ? 0.0 : result.losses.front(), result.losses.empty() ? 0.0 : result.losses.back());
  std::printf("train: wrote %s\n", result.output_file.c_str());
  if (!result.event_file.empty()) std::printf("train: TensorBoard log %s\n", result.event_file.c_str());
  if (!result.loss_curve.empty()) std::printf("train: loss curve %s\n", result.loss_curve.c_str());
  if (!result.samples.empty()) std::printf("train: %zu sample images in %s/sample\n", result.samples.size(), s.output_dir.c_str());
  if (result.skipped_steps > 0)
    std::printf("train: %lld optimizer steps skipped for inf/NaN fp16 gradients\n", static_cast<long long>(result.skipped_steps));
}

}  // namespace

int cmd_train(const std::vector<std::string>& args) {
  CommonOptions o;
  std::string help;
  if (!parse_common(args, o, help)) {
    std::cout << "usage: sumi train [--recipe RECIPE] [kohya train_network.py / train_db.py / fine_tune.py / train_textual_inversion.py flags] [--set section.key=value]...\n"
                 "e.g.  sumi train --pretrained_model_name_or_path model.safetensors --train_data_dir data \\\n"
                 "        --network_module networks.lora --network_dim 4 --output_dir out --max_train_steps 100\n"
                 "modes: --network_module (network), --token_string (Textual Inversion), --in_json (fine-tuning), "
                 "else DreamBooth; or [train] mode\n\n"
              << help;
    return 0;
  }
  host::init_runtime(o.threads);
  auto pm = make_plugin_manager(o);
  recipe::Value root = load_recipe_tree(o);
  const TrainSettings s = train_settings(root, pm, o);
  print_result(train_network(s, o.plugin_dirs), s);
  return 0;
}

}  // namespace sumi::app
