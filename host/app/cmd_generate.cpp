// `sumi generate`: text-to-image, img2img, inpainting and highres fix with kohya gen_img's
// flags. The model family and sampler are plugins; a LoRA (or any network module) applies at
// runtime. Outputs are PNGs carrying A1111's `parameters` text, so A1111/ComfyUI users can read
// back how each image was made.
#include "commands.h"

#include "app.h"
#include "core/error.h"
#include "core/op_bridge.h"
#include "core/runtime.h"
#include "core/tensor_handle.h"
#include "generation.h"
#include "image_io.h"
#include "sumi/io/safetensors_torch.h"
#include "model_file.h"
#include "network_settings.h"
#include "network_stack.h"
#include "py_random.h"

#include <sumi/prompt/prompt_file.h>

#include <nlohmann/json.hpp>
#include <sumi/recipe/load.h>
#include <sumi/recipe/suggest.h>

#include <boost/program_options.hpp>

#include <algorithm>
#include <cctype>
#include <chrono>
#include <cstdio>
#include <ctime>
#include <filesystem>
#include <iostream>
#include <optional>
#include <random>
#include <sstream>

namespace po = boost::program_options;
namespace fs = std::filesystem;

namespace sumi::app {

namespace {

// gen_img flags sumi does not implement yet: refused by name rather than ignored.
const char* kNotYet[] = {"highres_fix_save_1st", "highres_fix_upscaler", "highres_fix_upscaler_args", "control_net_models",
                         "interactive", "clip_guidance_scale"};

// A1111's sampler labels for the `parameters` text.
std::string a1111_sampler(const std::string& s, bool karras) {
  static const std::map<std::string, std::string> names = {
      {"ddim", "DDIM"},       {"pndm", "PLMS"},         {"lms", "LMS"},          {"k_lms", "LMS"},
      {"euler", "Euler"},     {"k_euler", "Euler"},     {"euler_a", "Euler a"},  {"k_euler_a", "Euler a"},
      {"heun", "Heun"},       {"dpm_2", "DPM2"},        {"k_dpm_2", "DPM2"},     {"dpm_2_a", "DPM2 a"},
      {"k_dpm_2_a", "DPM2 a"}, {"dpmsolver", "DPM++ 2M"}, {"dpmsolver++", "DPM++ 2M"}, {"dpmsingle", "DPM++ SDE"}};
  auto it = names.find(s);
  std::string n = it == names.end() ? s : it->second;
  return karras ? n + " Karras" : n;
}

// A file, or the images of a folder in name order (gen_img cycles through them image by image).
std::vector<std::string> image_files(const std::string& flag, const std::string& path) {
  if (!fs::exists(path)) throw host::UserError("sumi generate: --" + flag + " '" + path + "' does not exist");
  if (!fs::is_directory(path)) return {path};
  std::vector<std::string> out;
  for (const auto& e : fs::directory_iterator(path)) {
    std::string ext = e.path().extension().string();
    for (auto& ch : ext) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
    if (e.is_regular_file() && (ext == ".png" || ext == ".jpg" || ext == ".jpeg" || ext == ".webp" || ext == ".bmp"))
      out.push_back(e.path().string());
  }
  std::sort(out.begin(), out.end());
  if (out.empty())
    throw host::UserError("sumi generate: --" + flag + " folder '" + path + "' holds no .png/.jpg/.jpeg/.webp/.bmp image");
  return out;
}

void check_strength(const std::string& flag, double v) {
  if (!(v > 0 && v <= 1))
    throw host::UserError("sumi generate: --" + flag + " must be in (0, 1], got " + std::to_string(v));
}

std::string timestamp() {
  const std::time_t t = std::time(nullptr);
  char b[32];
  std::strftime(b, sizeof b, "%Y%m%d%H%M%S", std::localtime(&t));
  return b;
}

}  // namespace

namespace {

// One image to make, in gen_img's order (iteration, prompt, image of the prompt).
struct Job {
  ImageRequest request;
  const prompt::PromptSpec* spec = nullptr;
  std::string sampler;
  std::vector<double> network_muls;
  std::string init_name, mask_name;
  int64_t index = 0;  // running image number (file names, image/mask cycling)
};

// gen_img splits a batch where these differ (its BatchDataExt), plus the sampler (--ss).
bool same_batch(const Job& a, const Job& b) {
  const ImageRequest &x = a.request, &y = b.request;
  return x.width == y.width && x.height == y.height && x.steps == y.steps && x.scale == y.scale &&
         x.strength == y.strength && a.sampler == b.sampler && a.network_muls == b.network_muls;
}

// "key=value;key=value" (gen_img's --network_args entry for one network).
std::map<std::string, std::string> network_args_of(const std::string& text, size_t which) {
  std::map<std::string, std::string> out;
  size_t from = 0;
  while (from <= text.size()) {
    size_t to = text.find(';', from);
    if (to == std::string::npos) to = text.size();
    const std::string item = text.substr(from, to - from);
    from = to + 1;
    if (item.empty()) continue;
    const size_t eq = item.find('=');
    if (eq == std::string::npos || eq == 0)
      throw host::UserError("sumi generate: --network_args entry " + std::to_string(which + 1) + " ('" + text +
                            "'): '" + item + "' is not key=value; separate several with ';' (\"dim=8;alpha=4\")");
    out[item.substr(0, eq)] = item.substr(eq + 1);
  }
  return out;
}

// A prompt option gen_img or train_util knows but sumi generate does not apply: refused by name.
void refuse_unapplied(const prompt::PromptSpec& s) {
  const char* flag = s.negative_scale ? "--nl (negative scale)"
                     : s.controlnet_image ? "--cn (ControlNet image)"
                     : (s.original_width || s.original_height) ? "--ow/--oh (SDXL original size)"
                     : (s.original_width_negative || s.original_height_negative) ? "--nw/--nh (SDXL negative original size)"
                     : (s.crop_top || s.crop_left) ? "--ct/--cl (SDXL crop)"
                                                   : nullptr;
  if (flag) throw host::UserError(s.origin + ": the prompt option " + std::string(flag) + " is not supported by sumi generate yet; remove it");
}


// The recipe form of the flags: `--recipe F` (or kohya's `--config_file F`), a TOML or YAML file
// whose [generate] table (or top level) holds gen_img flag names as keys. Its settings come
// first; a flag also given on the command line wins.
std::vector<std::string> with_recipe_settings(const std::vector<std::string>& args, const po::options_description& d) {
  std::string file, flag;
  for (size_t i = 0; i < args.size(); ++i)
    for (const char* f : {"--recipe", "--config_file"}) {
      const std::string name = f;
      if (args[i] == name && i + 1 < args.size()) file = args[i + 1], flag = name;
      else if (args[i].rfind(name + "=", 0) == 0) file = args[i].substr(name.size() + 1), flag = name;
    }
  if (file.empty()) return args;
  if (!fs::is_regular_file(file)) throw host::UserError("sumi generate: " + flag + " '" + file + "' does not exist");
  const std::string ext = fs::path(file).extension().string();
  recipe::Value root;
  if (ext == ".toml") root = recipe::load_toml_file(file);
  else if (ext == ".yaml" || ext == ".yml") root = recipe::load_yaml_file(file);
  else throw host::UserError("sumi generate: " + flag + " '" + file + "': expected a .toml, .yaml or .yml file");
  const recipe::Value* table = root.find("generate");
  if (!table) table = &root;
  if (!table->is_table()) throw host::UserError(file + ": [generate] must be a table of gen_img flag names and values");
  std::vector<std::string> names;
  for (const auto& o : d.options()) names.push_back(o->long_name());
  auto given = [&](const std::string& key) {
    return std::any_of(args.begin(), args.end(), [&](const std::string& a) { return a == "--" + key || a.rfind("--" + key + "=", 0) == 0; });
  };
  auto text = [](const recipe::Value& v) {
    return v.kind() == recipe::Value::Kind::String ? v.as_string()
           : v.kind() == recipe::Value::Kind::Double ? recipe::format_double(v.as_double())
                                                    : v.text();
  };
  std::vector<std::string> out;
  for (const auto& key : table->keys()) {
    const recipe::Value& v = *table->find(key);
    const po::option_description* o = d.find_nothrow(key, false);
    if (!o || key == "recipe" || key == "config_file" || key == "help")
      throw host::UserError(v.origin() + ": '" + key + "' is not a sumi generate setting (keys are gen_img flag names, see " +
                            "sumi generate --help)" + recipe::did_you_mean(key, names));
    if (given(key)) continue;
    if (v.kind() == recipe::Value::Kind::Bool) {
      if (o->semantic()->max_tokens() == 0) {
        if (v.as_bool()) out.push_back("--" + key);
        continue;
      }
      out.push_back("--" + key);
      out.push_back(v.as_bool() ? "true" : "false");
      continue;
    }
    if (o->semantic()->max_tokens() == 0)
      throw host::UserError(v.origin() + ": '" + key + "' is a switch: give true or false, got " + v.text());
    out.push_back("--" + key);
    if (v.is_array())
      for (const auto& item : v.items()) out.push_back(text(item));
    else
      out.push_back(text(v));
  }
  // The file's own flag goes too: it has been read.
  for (size_t i = 0; i < args.size(); ++i) {
    if (args[i] == flag) {
      ++i;
      continue;
    }
    if (args[i].rfind(flag + "=", 0) == 0) continue;
    out.push_back(args[i]);
  }
  return out;
}
}  // namespace

int cmd_generate(const std::vector<std::string>& args) {
  std::string ckpt, vae, prompt, from_file, outdir = "outputs", sampler = "ddim";
  std::vector<std::string> network_modules, network_weights, network_args, ti_files;
  std::vector<double> network_mul;
  std::vector<std::string> plugin_dirs;
  int64_t W = 512, H = 512, steps = 50, n_iter = 1, images_per_prompt = 1, batch_size = 1, clip_skip = 1, max_emb = 1;
  double scale = 7.5, strength = 0.8, hr_scale = 0, hr_strength = -1, vae_batch = 0;
  int64_t hr_steps = 28;
  std::string image_path, mask_path, scheduler_config = "model";
  int64_t seed = -1;
  int threads = 0;
  po::options_description d("sumi generate (kohya gen_img flags)");
  d.add_options()("help,h", "show this help")("ckpt", po::value(&ckpt), "model: single file or diffusers folder")(
      "vae", po::value(&vae), "separate VAE file")("prompt", po::value(&prompt),
                                                   "prompt; may carry options: \"a cat --n blurry --d 5\"")(
      "from_file", po::value(&from_file), "prompt file: one prompt per line, or .toml / .json")(
      "outdir", po::value(&outdir), "output folder")("W", po::value(&W), "width")("H", po::value(&H), "height")(
      "steps", po::value(&steps), "sampling steps")("sampler", po::value(&sampler), "ddim, euler, euler_a, dpmsolver++, ...")(
      "use_karras_sigmas", "Karras sigma spacing (sigma-based samplers; 'DPM++ 2M Karras')")(
      "scheduler_config", po::value(&scheduler_config),
      "sampler settings: model (the model's scheduler config; a single file gets its family's standard one) "
      "or gen_img (the sampler's class defaults, as kohya's gen_img builds it)")(
      "scale", po::value(&scale), "classifier-free guidance scale")(
      "seed", po::value(&seed), "seed of a single image, or the seed of the seeds (Python's random, as gen_img)")(
      "n_iter", po::value(&n_iter), "repeat every prompt this many times")(
      "images_per_prompt", po::value(&images_per_prompt), "images per prompt per iteration")(
      "batch_size", po::value(&batch_size), "images denoised together in one batch")(
      "vae_batch_size", po::value(&vae_batch), "images decoded at once (< 1: that fraction of the batch)")(
      "clip_skip", po::value(&clip_skip), "use the output of the n-th last text-encoder layer")(
      "max_embeddings_multiples", po::value(&max_emb), "prompt length in 75-token chunks (default 1 = 75 tokens)")(
      kKohyaV2, "SD 2.x model")("v_parameterization", "v-prediction model")(kKohyaSdxl, "SDXL model")(
      "vae_tiling", "VAE decode/encode of large images in overlapping tiles (the model's vae_tiling option)")(
      "vae_slicing", "VAE decode/encode one image of a batch at a time (the model's vae_slicing option)")(
      "xformers", "memory-efficient attention (the model's mem_eff_attn option: attention in small query chunks)")(
      "sdpa", "the same as --xformers")("mem_eff_attn", "the same as --xformers")(
      "bf16", "bfloat16 weights and autocast")("fp16", "float16 weights")(
      "network_module", po::value(&network_modules)->multitoken(), "network plugins, one per network (lora, networks.lora, path); left out: chosen from each file's keys")(
      "network_weights", po::value(&network_weights)->multitoken(), "network weights files, one per network")(
      "network_mul", po::value(&network_mul)->multitoken(), "network multipliers, one per network (default 1)")(
      "network_args", po::value(&network_args)->multitoken(), "per network: \"key=value;key=value\" settings of its plugin")(
      "network_merge", "merge the networks into the model's weights once instead of applying them at each step")(
      "network_pre_calc", "merge the networks into the weights (kept base copies restore them when a prompt's --am changes the multipliers, then they merge again)")(
      "network_show_meta", "print each network file's metadata (ss_*, modelspec.*) before loading it")(
      "textual_inversion_embeddings", po::value(&ti_files)->multitoken(), "Textual Inversion embedding files")(
      "plugin-dir", po::value(&plugin_dirs)->composing(), "extra plugin folder")(
      "threads", po::value(&threads), "CPU threads (0 = all cores)")(
      "device", po::value<std::string>(), "where to compute: cpu, cuda or cuda:N (default: CUDA when this build has it and a GPU is present)")(
      "image_path", po::value(&image_path), "img2img start image: a file, or a folder (cycled image by image)")(
      "strength", po::value(&strength), "img2img strength in (0, 1] (default 0.8)")(
      "mask_path", po::value(&mask_path), "inpainting mask, file or folder: white = repaint (needs --image_path)")(
      "highres_fix_scale", po::value(&hr_scale), "highres fix: first pass at this fraction of the size (e.g. 0.5)")(
      "highres_fix_steps", po::value(&hr_steps), "highres fix: first pass steps (default 28)")(
      "highres_fix_strength", po::value(&hr_strength), "highres fix: first pass strength with --image_path (default --strength)")(
      "highres_fix_latents_upscaling", "highres fix: upscale latents (bilinear) instead of the decoded image");
  for (const char* f : kNotYet) d.add_options()(f, po::value<std::vector<std::string>>()->multitoken()->zero_tokens(), "");
  d.add_options()("recipe", po::value<std::string>(), "TOML/YAML file: a [generate] table of these flags (the command line wins)")(
      "config_file", po::value<std::string>(), "the same as --recipe (kohya's name)");
  po::variables_map vm;
  try {
    po::store(po::command_line_parser(with_recipe_settings(args, d)).options(d).run(), vm);
    po::notify(vm);
  } catch (const po::error& e) {
    throw host::UserError(std::string("sumi generate: ") + e.what() + " (see sumi generate --help)");
  }
  if (vm.count("help")) {
    std::cout << d;
    return 0;
  }
  for (const char* f : kNotYet)
    if (vm.count(f)) throw host::UserError(std::string("sumi generate: --") + f + " is not supported yet");
  check_strength("strength", strength);
  if (vm.count("highres_fix_strength")) check_strength("highres_fix_strength", hr_strength);
  if (hr_strength < 0) hr_strength = strength;
  const bool highres = vm.count("highres_fix_scale") > 0;
  if (highres && !(hr_scale > 0 && hr_scale < 1))
    throw host::UserError("sumi generate: --highres_fix_scale must be in (0, 1), the first pass's fraction of the size "
                          "(gen_img's meaning, the inverse of A1111's), got " + std::to_string(hr_scale));
  if (!highres && (vm.count("highres_fix_steps") || vm.count("highres_fix_strength") || vm.count("highres_fix_latents_upscaling")))
    throw host::UserError("sumi generate: --highres_fix_steps/--highres_fix_strength/--highres_fix_latents_upscaling need --highres_fix_scale");
  if (highres && hr_steps <= 0) throw host::UserError("sumi generate: --highres_fix_steps must be positive");
  if (!mask_path.empty() && image_path.empty()) throw host::UserError("sumi generate: --mask_path needs --image_path (the image to inpaint)");
  if (vm.count("strength") && image_path.empty() && !highres)
    throw host::UserError("sumi generate: --strength applies to img2img (--image_path) or the highres fix second pass");
  const std::vector<std::string> images = image_path.empty() ? std::vector<std::string>{} : image_files("image_path", image_path);
  const std::vector<std::string> masks = mask_path.empty() ? std::vector<std::string>{} : image_files("mask_path", mask_path);
  if (ckpt.empty()) throw host::UserError("sumi generate: --ckpt is required (a .safetensors/.ckpt file or a diffusers folder)");
  if (!fs::exists(ckpt)) throw host::UserError("sumi generate: --ckpt '" + ckpt + "' does not exist");
  if (prompt.empty() == from_file.empty()) throw host::UserError("sumi generate: give exactly one of --prompt and --from_file");
  if (max_emb < 1)
    throw host::UserError("sumi generate: --max_embeddings_multiples must be at least 1 (75 tokens a chunk), got " +
                          std::to_string(max_emb));
  if (batch_size < 1) throw host::UserError("sumi generate: --batch_size must be at least 1, got " + std::to_string(batch_size));
  if (n_iter < 1 || images_per_prompt < 1)
    throw host::UserError("sumi generate: --n_iter and --images_per_prompt must be at least 1");
  if (vm.count("vae_batch_size") && !(vae_batch > 0))
    throw host::UserError("sumi generate: --vae_batch_size must be positive (a count, or below 1 a fraction of the batch), got " +
                          std::to_string(vae_batch));
  // Without --network_module every file's network is found by asking the network plugins (probe).
  if (!network_modules.empty() && network_modules.size() != network_weights.size())
    throw host::UserError("sumi generate: --network_module and --network_weights must name the same number of networks (got " +
                          std::to_string(network_modules.size()) + " and " + std::to_string(network_weights.size()) +
                          "); leave --network_module out to let the files' keys choose the plugins");
  if (network_mul.size() > network_weights.size())
    throw host::UserError("sumi generate: " + std::to_string(network_mul.size()) + " --network_mul values for " +
                          std::to_string(network_weights.size()) + " networks");
  if (network_args.size() > network_weights.size())
    throw host::UserError("sumi generate: " + std::to_string(network_args.size()) + " --network_args entries for " +
                          std::to_string(network_weights.size()) + " networks");
  for (const auto& w : network_weights)
    if (!fs::exists(w)) throw host::UserError("sumi generate: --network_weights '" + w + "' does not exist");
  const bool merge = vm.count("network_merge") > 0;
  if (merge && network_weights.empty()) throw host::UserError("sumi generate: --network_merge needs --network_weights");
  // gen_img's --network_pre_calc merges each batch at its multipliers, restoring the base weights
  // between; networks merged by --network_merge are not in its list, so the two together would
  // leave --network_pre_calc without effect: refused.
  const bool pre_calc = vm.count("network_pre_calc") > 0;
  if (pre_calc && network_weights.empty()) throw host::UserError("sumi generate: --network_pre_calc needs --network_weights");
  if (pre_calc && merge)
    throw host::UserError("sumi generate: --network_pre_calc and --network_merge both merge the networks; give one "
                          "(--network_merge once, --network_pre_calc again whenever --am changes the multipliers)");
  const bool show_meta = vm.count("network_show_meta") > 0;
  if (show_meta && network_weights.empty()) throw host::UserError("sumi generate: --network_show_meta needs --network_weights");
  // The model plugin's textual_inversion_embeddings key is one comma-separated string.
  std::string ti_list;
  for (const auto& f : ti_files) {
    if (!fs::exists(f)) throw host::UserError("sumi generate: --textual_inversion_embeddings '" + f + "' does not exist");
    if (f.find(',') != std::string::npos)
      throw host::UserError("sumi generate: --textual_inversion_embeddings '" + f +
                            "': a path containing a comma cannot be passed to the model plugin; rename or link the file");
    ti_list += (ti_list.empty() ? "" : ",") + f;
  }

  host::init_runtime(threads);
  CommonOptions common;
  common.plugin_dirs = plugin_dirs;
  auto pm = make_plugin_manager(common);
  host::Registry registry;
  registry.set_device(run_device(vm.count("device") ? vm["device"].as<std::string>() : ""));

  // The model plugins are asked which loads the file; gen_img's --sdxl / --v2 must name that one.
  std::vector<std::string> family_flags;
  for (const char* f : {kKohyaSdxl, kKohyaV2})
    if (vm.count(f)) family_flags.push_back(f);
  std::string family = find_model_component(pm, ckpt, family_flags);
  const std::string dtype = vm.count("bf16") ? "bf16" : vm.count("fp16") ? "fp16" : "fp32";
  auto model_ref = pm.find(SUMI_KIND_MODEL, family);
  // gen_img always reads prompts with weights ((word:1.3), BREAK) and in 75-token chunks.
  std::map<std::string, std::string> model_cfg{{"dtype", dtype},
                                               {"clip_skip", std::to_string(clip_skip)},
                                               {"prompt_weighting", "true"},
                                               {"max_embeddings_multiples", std::to_string(max_emb)}};
  if (!vae.empty()) model_cfg["vae"] = vae;
  if (!ti_list.empty()) model_cfg["textual_inversion_embeddings"] = ti_list;
  if (vm.count("vae_tiling")) model_cfg["vae_tiling"] = "true";
  if (vm.count("vae_slicing")) model_cfg["vae_slicing"] = "true";
  if (vm.count("xformers") || vm.count("sdpa") || vm.count("mem_eff_attn")) model_cfg["mem_eff_attn"] = "true";
  if (vm.count("v_parameterization")) model_cfg["v_parameterization"] = "true";
  host::Component model(model_ref, "model", registry, host::make_config(*model_ref.component, model_cfg));
  model.check(model.vtable<sumi_model_vtable>().load(model.self(), ckpt.c_str()), "load");

  const SchedulerSource sched_source = scheduler_source_from_string(scheduler_config);
  const bool zero_empty_negative = nlohmann::json::parse(describe_model(model)).value("force_zeros_for_empty_prompt", false);
  // Samplers by name: --sampler, and any a prompt names with --ss.
  std::map<std::string, std::unique_ptr<host::Component>> schedulers;
  auto scheduler_for = [&](const std::string& name) -> host::Component& {
    auto& slot = schedulers[name];
    if (!slot) {
      auto ref = pm.find(SUMI_KIND_NOISE_SCHEDULER, name);
      // The model says how its sampler is set up (a folder's config, a single file's family
      // standard); flags override.
      std::map<std::string, std::string> cfg = scheduler_config_of(model, *ref.component, sched_source);
      if (vm.count("v_parameterization")) cfg["prediction_type"] = "v_prediction";
      if (vm.count("use_karras_sigmas")) cfg["use_karras_sigmas"] = "true";
      slot = std::make_unique<host::Component>(ref, "noise_scheduler." + name, registry, host::make_config(*ref.component, cfg));
    }
    return *slot;
  };
  scheduler_for(sampler);

  NetworkStack networks(model);
  for (size_t i = 0; i < network_weights.size(); ++i) {
    const bool safetensors = fs::path(network_weights[i]).extension() == ".safetensors";
    std::optional<WeightsFile> file;
    if (safetensors || network_modules.empty()) file = read_weights_file(network_weights[i]);
    if (show_meta) {
      // gen_img prints a .safetensors file's metadata; other formats carry none.
      if (!file || file->metadata.empty()) {
        std::cout << "metadata for: " << network_weights[i] << ": none\n";
      } else {
        std::cout << "metadata for: " << network_weights[i] << ":\n";
        for (const auto& [k, v] : file->metadata) std::cout << "  " << k << " = " << v << "\n";
      }
    }
    auto ref = pm.find(SUMI_KIND_NETWORK, network_modules.empty() ? find_network_component(pm, *file) : network_modules[i]);
    auto given = i < network_args.size() ? network_args_of(network_args[i], i) : std::map<std::string, std::string>{};
    auto net = std::make_unique<host::Component>(ref, "network" + std::to_string(i), registry,
                                                 host::make_config(*ref.component, given));
    // gen_img's create_network_from_weights: the ranks and the modules covered come from the file
    // (per module), read by the plugin; --network_args set the rest.
    if (file) configure_network_from_file(*net, *file);
    auto selected = prepare_network(model, *net, network_weights[i], i < network_mul.size() ? network_mul[i] : 1.0, false);
    networks.add(std::move(net), std::move(selected));
  }
  if (merge) networks.merge();
  else if (pre_calc) {
    std::vector<double> muls;
    for (size_t i = 0; i < network_weights.size(); ++i) muls.push_back(i < network_mul.size() ? network_mul[i] : 1.0);
    networks.pre_calc(muls);
  } else {
    networks.apply();
  }

  register_sampler_names(pm);
  std::vector<prompt::PromptSpec> specs =
      from_file.empty() ? std::vector<prompt::PromptSpec>{prompt::parse_prompt_line(prompt, "--prompt")}
                        : prompt::load_prompt_file(from_file);
  for (const auto& spec : specs) {
    refuse_unapplied(spec);
    if (spec.sampler) scheduler_for(*spec.sampler);
    if (spec.network_multipliers) {
      if (networks.size() == 0) throw host::UserError(spec.origin + ": --am sets network multipliers but no network is loaded");
      if (spec.network_multipliers->empty()) throw host::UserError(spec.origin + ": --am needs at least one multiplier");
      if (merge)
        throw host::UserError(spec.origin + ": --am cannot change multipliers of merged networks; drop --network_merge");
    }
    if (spec.strength) {
      if (!(*spec.strength > 0 && *spec.strength <= 1))
        throw host::UserError(spec.origin + ": --t (strength) must be in (0, 1], got " + std::to_string(*spec.strength));
      if (images.empty() && !highres)
        throw host::UserError(spec.origin + ": --t (strength) applies to img2img (--image_path) or the highres fix");
    }
  }

  // Seeds as gen_img: with --seed, Python's random seeded with it draws one seed per image up
  // front (a single image gets --seed itself); a prompt's --d list wins and its last entry
  // repeats; otherwise a random seed per image.
  const int64_t total = n_iter * static_cast<int64_t>(specs.size()) * images_per_prompt;
  std::vector<uint64_t> predefined;
  if (seed >= 0) {
    PyRandom rng(static_cast<uint64_t>(seed));
    for (int64_t i = 0; i < total; ++i) predefined.push_back(static_cast<uint64_t>(rng.randint31()));
    if (total == 1) predefined[0] = static_cast<uint64_t>(seed);
  }
  std::mt19937_64 seed_rng(std::random_device{}());
  size_t next_predefined = 0;

  fs::create_directories(outdir);
  const std::string hash = a1111_hash(ckpt);
  const std::string model_name = fs::path(ckpt).stem().string();
  const std::string stamp = timestamp();
  const int64_t vae_batch_size =
      vae_batch <= 0 ? 0 : vae_batch < 1 ? -1 : static_cast<int64_t>(vae_batch);  // -1: fraction, per batch
  // The parameters line names each network file with the plugin that applied it ("x (oft)"):
  // A1111 writes its networks as <lora:...> prompt tags, which sumi's prompts do not carry, so
  // this is sumi's own field, quoted as A1111 quotes a value holding commas.
  std::string network_names;
  for (size_t i = 0; i < network_weights.size(); ++i)
    network_names += (network_names.empty() ? "" : ", ") + fs::path(network_weights[i]).stem().string() + " (" +
                     networks.network(i).info().name + ")";

  auto write_batch = [&](std::vector<Job>& batch) {
    if (batch.empty()) return;
    const Job& head = batch.front();
    if (networks.size() && !merge) networks.set_multipliers(head.network_muls);
    const int64_t n = static_cast<int64_t>(batch.size());
    const int64_t vb = vae_batch_size >= 0 ? vae_batch_size : std::max<int64_t>(1, static_cast<int64_t>(static_cast<double>(n) * vae_batch));
    Generator gen(model, scheduler_for(head.sampler), vb);
    std::vector<ImageRequest> rs;
    for (const auto& j : batch) rs.push_back(j.request);
    std::vector<ImageResult> results;
    if (highres) {
      HighresFix h;
      h.scale = hr_scale;
      h.steps = hr_steps;
      h.first_strength = hr_strength;
      h.latents_upscaling = vm.count("highres_fix_latents_upscaling") > 0;
      results = gen.run_highres_batch(rs, h);
    } else {
      results = gen.run_batch(rs);
    }
    for (size_t k = 0; k < batch.size(); ++k) {
      const Job& j = batch[k];
      const ImageRequest& r = j.request;
      std::ostringstream params;
      params << r.prompt << "\n";
      if (!r.negative_prompt.empty()) params << "Negative prompt: " << r.negative_prompt << "\n";
      params << "Steps: " << (highres ? hr_steps : r.steps) << ", Sampler: " << a1111_sampler(j.sampler, vm.count("use_karras_sigmas") > 0)
             << ", CFG scale: " << r.scale << ", Seed: " << r.seed << ", Size: " << r.width << "x" << r.height;
      if (!j.init_name.empty()) params << ", Denoising strength: " << (highres ? hr_strength : r.strength) << ", Init image: " << j.init_name;
      if (!j.mask_name.empty()) params << ", Mask: " << j.mask_name;
      if (highres)
        params << ", Hires upscale: " << 1 / hr_scale << ", Hires steps: " << r.steps
               << ", Hires upscaler: " << (vm.count("highres_fix_latents_upscaling") ? "Latent" : "bicubic")
               << (j.init_name.empty() ? ", Denoising strength: " : ", Hires denoising strength: ") << r.strength;
      if (!hash.empty()) params << ", Model hash: " << hash;
      params << ", Model: " << model_name;
      if (networks.size()) params << ", Networks: \"" << network_names << "\"";
      char name[64];
      std::snprintf(name, sizeof name, "%s_%03lld_%llu.png", stamp.c_str(), static_cast<long long>(j.index),
                    static_cast<unsigned long long>(r.seed));
      const std::string path = (fs::path(outdir) / (j.spec->output_name ? *j.spec->output_name + ".png" : name)).string();
      write_png(path, to_uint8_hwc(results[k].image), {{"parameters", params.str()}});
      std::printf("generate: wrote %s (seed %llu)\n", path.c_str(), static_cast<unsigned long long>(r.seed));
    }
    batch.clear();
  };

  std::vector<Job> batch;
  int64_t index = 0;
  for (int64_t it = 0; it < n_iter; ++it) {
    for (const auto& spec : specs) {
      uint64_t prompt_seed = 0;
      for (int64_t pi = 0; pi < images_per_prompt; ++pi) {
        Job j;
        j.spec = &spec;
        j.index = index;
        j.sampler = spec.sampler.value_or(sampler);
        // --am pads with its last value (gen_img); --network_mul's missing entries are 1.
        for (size_t k = 0; k < networks.size(); ++k)
          j.network_muls.push_back(spec.network_multipliers
                                       ? (k < spec.network_multipliers->size() ? (*spec.network_multipliers)[k]
                                                                               : spec.network_multipliers->back())
                                   : k < network_mul.size() ? network_mul[k]
                                                            : 1.0);
        ImageRequest& r = j.request;
        r.prompt = spec.prompt;
        r.negative_prompt = spec.negative_prompt.value_or("");
        r.width = spec.width.value_or(W);
        r.height = spec.height.value_or(H);
        r.steps = spec.steps.value_or(steps);
        r.scale = spec.scale.value_or(scale);
        if (!spec.seeds.empty()) {
          if (static_cast<size_t>(pi) < spec.seeds.size()) prompt_seed = spec.seeds[static_cast<size_t>(pi)];
          r.seed = prompt_seed;
        } else if (seed >= 0) {
          r.seed = predefined.at(next_predefined++);
        } else {
          r.seed = seed_rng() % 2147483648ull;
        }
        r.zero_empty_negative = zero_empty_negative;
        const double s = spec.strength.value_or(strength);
        if (!images.empty()) {
          const std::string& file = images[static_cast<size_t>(index) % images.size()];
          j.init_name = fs::path(file).filename().string();
          const at::Tensor img = read_image(file);
          // No size given: the image's own, rounded down to a multiple of 32 as gen_img does.
          if (!spec.width && !vm.count("W")) r.width = img.size(1) - img.size(1) % 32;
          if (!spec.height && !vm.count("H")) r.height = img.size(0) - img.size(0) % 32;
          if (r.width <= 0 || r.height <= 0)
            throw host::UserError("sumi generate: " + file + " is smaller than 32 pixels; give --W and --H");
          r.init_image = to_model_image(img, r.width, r.height);
          r.strength = s;
          if (!masks.empty()) {
            const std::string& mfile = masks[static_cast<size_t>(index) % masks.size()];
            j.mask_name = fs::path(mfile).filename().string();
            r.mask = to_mask(read_image(mfile), r.width, r.height);
          }
        } else if (highres) {
          r.strength = s;
        }
        ++index;
        if (!batch.empty() && !same_batch(batch.back(), j)) write_batch(batch);
        batch.push_back(std::move(j));
        if (static_cast<int64_t>(batch.size()) == batch_size) write_batch(batch);
      }
    }
  }
  write_batch(batch);
  return 0;
}

}  // namespace sumi::app
