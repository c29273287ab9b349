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
#include "core/typed_plugins.h"
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
#include <map>
#include <memory>
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

namespace {

// The flags as given, and what follows from them once checked.
struct Flags {
  std::string ckpt, vae, prompt, from_file, outdir = "outputs", sampler = "ddim";
  std::vector<std::string> network_modules, network_weights, network_args, ti_files, plugin_dirs;
  std::vector<double> network_mul;
  int64_t W = 512, H = 512, steps = 50, n_iter = 1, images_per_prompt = 1, batch_size = 1, clip_skip = 1, max_emb = 1;
  double scale = 7.5, strength = 0.8, hr_scale = 0, hr_strength = -1, vae_batch = 0;
  int64_t hr_steps = 28;
  std::string image_path, mask_path, scheduler_config = "model";
  int64_t seed = -1;
  int threads = 0;
  po::variables_map vm;
  // Derived by check_flags.
  bool highres = false, merge = false, pre_calc = false, show_meta = false;
  std::vector<std::string> images, masks;  // img2img start images and inpainting masks, cycled
  std::string ti_list;                     // the model plugin's textual_inversion_embeddings value

  bool has(const char* flag) const { return vm.count(flag) > 0; }
  // --network_mul's missing entries are 1.
  double network_mul_of(size_t i) const { return i < network_mul.size() ? network_mul[i] : 1.0; }
};

po::options_description generate_options(Flags& f) {
  po::options_description d("sumi generate (kohya gen_img flags)");
  d.add_options()("help,h", "show this help")("ckpt", po::value(&f.ckpt), "model: single file or diffusers folder")(
      "vae", po::value(&f.vae), "separate VAE file")("prompt", po::value(&f.prompt),
                                                     "prompt; may carry options: \"a cat --n blurry --d 5\"")(
      "from_file", po::value(&f.from_file), "prompt file: one prompt per line, or .toml / .json")(
      "outdir", po::value(&f.outdir), "output folder")("W", po::value(&f.W), "width")("H", po::value(&f.H), "height")(
      "steps", po::value(&f.steps), "sampling steps")("sampler", po::value(&f.sampler),
                                                      "a noise scheduler plugin: ddim, euler, euler_a, dpmsolver++, ... (sumi plugins)")(
      "use_karras_sigmas", "Karras sigma spacing (sigma-based samplers; 'DPM++ 2M Karras')")(
      "scheduler_config", po::value(&f.scheduler_config),
      "sampler settings: model (the model's scheduler config; a single file gets its family's standard one) "
      "or gen_img (the sampler's class defaults, as kohya's gen_img builds it)")(
      "scale", po::value(&f.scale), "classifier-free guidance scale")(
      "seed", po::value(&f.seed), "seed of a single image, or the seed of the seeds (Python's random, as gen_img)")(
      "n_iter", po::value(&f.n_iter), "repeat every prompt this many times")(
      "images_per_prompt", po::value(&f.images_per_prompt), "images per prompt per iteration")(
      "batch_size", po::value(&f.batch_size), "images denoised together in one batch")(
      "vae_batch_size", po::value(&f.vae_batch), "images decoded at once (< 1: that fraction of the batch)")(
      "clip_skip", po::value(&f.clip_skip), "use the output of the n-th last text-encoder layer")(
      "max_embeddings_multiples", po::value(&f.max_emb), "prompt length in 75-token chunks (default 1 = 75 tokens)")(
      kKohyaV2, "SD 2.x model (checked against the file)")("v_parameterization", "v-prediction model")(
      kKohyaSdxl, "SDXL model (checked against the file)")(
      "vae_tiling", "VAE decode/encode of large images in overlapping tiles (the model's vae_tiling option)")(
      "vae_slicing", "VAE decode/encode one image of a batch at a time (the model's vae_slicing option)")(
      "xformers", "memory-efficient attention (the model's mem_eff_attn option: attention in small query chunks)")(
      "sdpa", "the same as --xformers")("mem_eff_attn", "the same as --xformers")(
      "bf16", "bfloat16 weights and autocast")("fp16", "float16 weights")(
      "network_module", po::value(&f.network_modules)->multitoken(), "network plugins, one per network (lora, networks.lora, path); left out: chosen from each file's keys")(
      "network_weights", po::value(&f.network_weights)->multitoken(), "network weights files, one per network")(
      "network_mul", po::value(&f.network_mul)->multitoken(), "network multipliers, one per network (default 1)")(
      "network_args", po::value(&f.network_args)->multitoken(), "per network: \"key=value;key=value\" settings of its plugin")(
      "network_merge", "merge the networks into the model's weights once instead of applying them at each step")(
      "network_pre_calc", "merge the networks into the weights (kept base copies restore them when a prompt's --am changes the multipliers, then they merge again)")(
      "network_show_meta", "print each network file's metadata (ss_*, modelspec.*) before loading it")(
      "textual_inversion_embeddings", po::value(&f.ti_files)->multitoken(), "Textual Inversion embedding files")(
      "plugin-dir", po::value(&f.plugin_dirs)->composing(), "extra plugin folder")(
      "threads", po::value(&f.threads), "CPU threads (0 = all cores)")(
      "device", po::value<std::string>(), "where to compute: cpu, cuda or cuda:N (default: CUDA when this build has it and a GPU is present)")(
      "image_path", po::value(&f.image_path), "img2img start image: a file, or a folder (cycled image by image)")(
      "strength", po::value(&f.strength), "img2img strength in (0, 1] (default 0.8)")(
      "mask_path", po::value(&f.mask_path), "inpainting mask, file or folder: white = repaint (needs --image_path)")(
      "highres_fix_scale", po::value(&f.hr_scale), "highres fix: first pass at this fraction of the size (e.g. 0.5)")(
      "highres_fix_steps", po::value(&f.hr_steps), "highres fix: first pass steps (default 28)")(
      "highres_fix_strength", po::value(&f.hr_strength), "highres fix: first pass strength with --image_path (default --strength)")(
      "highres_fix_latents_upscaling", "highres fix: upscale latents (bilinear) instead of the decoded image");
  for (const char* flag : kNotYet) d.add_options()(flag, po::value<std::vector<std::string>>()->multitoken()->zero_tokens(), "");
  d.add_options()("recipe", po::value<std::string>(), "TOML/YAML file: a [generate] table of these flags (the command line wins)")(
      "config_file", po::value<std::string>(), "the same as --recipe (kohya's name)");
  return d;
}

// Sampling, img2img / inpainting and highres fix flags.
void check_image_flags(Flags& f) {
  for (const char* flag : kNotYet)
    if (f.has(flag)) throw host::UserError(std::string("sumi generate: --") + flag + " is not supported yet");
  check_strength("strength", f.strength);
  if (f.has("highres_fix_strength")) check_strength("highres_fix_strength", f.hr_strength);
  if (f.hr_strength < 0) f.hr_strength = f.strength;
  f.highres = f.has("highres_fix_scale");
  if (f.highres && !(f.hr_scale > 0 && f.hr_scale < 1))
    throw host::UserError("sumi generate: --highres_fix_scale must be in (0, 1), the first pass's fraction of the size "
                          "(gen_img's meaning, the inverse of A1111's), got " + std::to_string(f.hr_scale));
  if (!f.highres && (f.has("highres_fix_steps") || f.has("highres_fix_strength") || f.has("highres_fix_latents_upscaling")))
    throw host::UserError("sumi generate: --highres_fix_steps/--highres_fix_strength/--highres_fix_latents_upscaling need --highres_fix_scale");
  if (f.highres && f.hr_steps <= 0) throw host::UserError("sumi generate: --highres_fix_steps must be positive");
  if (!f.mask_path.empty() && f.image_path.empty())
    throw host::UserError("sumi generate: --mask_path needs --image_path (the image to inpaint)");
  if (f.has("strength") && f.image_path.empty() && !f.highres)
    throw host::UserError("sumi generate: --strength applies to img2img (--image_path) or the highres fix second pass");
  if (!f.image_path.empty()) f.images = image_files("image_path", f.image_path);
  if (!f.mask_path.empty()) f.masks = image_files("mask_path", f.mask_path);
  if (f.ckpt.empty()) throw host::UserError("sumi generate: --ckpt is required (a .safetensors/.ckpt file or a diffusers folder)");
  if (!fs::exists(f.ckpt)) throw host::UserError("sumi generate: --ckpt '" + f.ckpt + "' does not exist");
  if (f.prompt.empty() == f.from_file.empty()) throw host::UserError("sumi generate: give exactly one of --prompt and --from_file");
  if (f.max_emb < 1)
    throw host::UserError("sumi generate: --max_embeddings_multiples must be at least 1 (75 tokens a chunk), got " +
                          std::to_string(f.max_emb));
  if (f.batch_size < 1) throw host::UserError("sumi generate: --batch_size must be at least 1, got " + std::to_string(f.batch_size));
  if (f.n_iter < 1 || f.images_per_prompt < 1)
    throw host::UserError("sumi generate: --n_iter and --images_per_prompt must be at least 1");
  if (f.has("vae_batch_size") && !(f.vae_batch > 0))
    throw host::UserError("sumi generate: --vae_batch_size must be positive (a count, or below 1 a fraction of the batch), got " +
                          std::to_string(f.vae_batch));
}

// Networks and Textual Inversion embeddings.
void check_network_flags(Flags& f) {
  // Without --network_module every file's network is found by asking the network plugins (probe).
  if (!f.network_modules.empty() && f.network_modules.size() != f.network_weights.size())
    throw host::UserError("sumi generate: --network_module and --network_weights must name the same number of networks (got " +
                          std::to_string(f.network_modules.size()) + " and " + std::to_string(f.network_weights.size()) +
                          "); leave --network_module out to let the files' keys choose the plugins");
  if (f.network_mul.size() > f.network_weights.size())
    throw host::UserError("sumi generate: " + std::to_string(f.network_mul.size()) + " --network_mul values for " +
                          std::to_string(f.network_weights.size()) + " networks");
  if (f.network_args.size() > f.network_weights.size())
    throw host::UserError("sumi generate: " + std::to_string(f.network_args.size()) + " --network_args entries for " +
                          std::to_string(f.network_weights.size()) + " networks");
  for (const auto& w : f.network_weights)
    if (!fs::exists(w)) throw host::UserError("sumi generate: --network_weights '" + w + "' does not exist");
  f.merge = f.has("network_merge");
  if (f.merge && f.network_weights.empty()) throw host::UserError("sumi generate: --network_merge needs --network_weights");
  // gen_img's --network_pre_calc merges each batch at its multipliers, restoring the base weights
  // between; networks merged by --network_merge are not in its list, so the two together would
  // leave --network_pre_calc without effect: refused.
  f.pre_calc = f.has("network_pre_calc");
  if (f.pre_calc && f.network_weights.empty()) throw host::UserError("sumi generate: --network_pre_calc needs --network_weights");
  if (f.pre_calc && f.merge)
    throw host::UserError("sumi generate: --network_pre_calc and --network_merge both merge the networks; give one "
                          "(--network_merge once, --network_pre_calc again whenever --am changes the multipliers)");
  f.show_meta = f.has("network_show_meta");
  if (f.show_meta && f.network_weights.empty()) throw host::UserError("sumi generate: --network_show_meta needs --network_weights");
  // The model plugin's textual_inversion_embeddings key is one comma-separated string.
  for (const auto& file : f.ti_files) {
    if (!fs::exists(file)) throw host::UserError("sumi generate: --textual_inversion_embeddings '" + file + "' does not exist");
    if (file.find(',') != std::string::npos)
      throw host::UserError("sumi generate: --textual_inversion_embeddings '" + file +
                            "': a path containing a comma cannot be passed to the model plugin; rename or link the file");
    f.ti_list += (f.ti_list.empty() ? "" : ",") + file;
  }
}

// The model component that loads --ckpt (the model plugins are asked; gen_img's --sdxl / --v2
// must name that one), configured from the flags and loaded.
std::unique_ptr<host::Component> load_model(host::PluginManager& pm, host::Registry& registry, const Flags& f) {
  std::vector<std::string> family_flags;
  for (const char* flag : {kKohyaSdxl, kKohyaV2})
    if (f.has(flag)) family_flags.push_back(flag);
  auto model_ref = pm.find(SUMI_KIND_MODEL, find_model_component(pm, f.ckpt, family_flags));
  // gen_img always reads prompts with weights ((word:1.3), BREAK) and in 75-token chunks.
  std::map<std::string, std::string> cfg{{"dtype", f.has("bf16") ? "bf16" : f.has("fp16") ? "fp16" : "fp32"},
                                         {"clip_skip", std::to_string(f.clip_skip)},
                                         {"prompt_weighting", "true"},
                                         {"max_embeddings_multiples", std::to_string(f.max_emb)}};
  if (!f.vae.empty()) cfg["vae"] = f.vae;
  if (!f.ti_list.empty()) cfg["textual_inversion_embeddings"] = f.ti_list;
  if (f.has("vae_tiling")) cfg["vae_tiling"] = "true";
  if (f.has("vae_slicing")) cfg["vae_slicing"] = "true";
  if (f.has("xformers") || f.has("sdpa") || f.has("mem_eff_attn")) cfg["mem_eff_attn"] = "true";
  if (f.has("v_parameterization")) cfg["v_parameterization"] = "true";
  auto model = std::make_unique<host::Component>(model_ref, "model", registry, host::make_config(*model_ref.component, cfg));
  host::ModelPlugin(*model).load(f.ckpt);
  return model;
}

// The samplers by name (--sampler, and any a prompt names with --ss), each made once.
class Samplers {
 public:
  Samplers(host::PluginManager& pm, host::Registry& registry, host::Component& model, const Flags& f)
      : pm_(pm), registry_(registry), model_(model), f_(f), source_(scheduler_source_from_string(f.scheduler_config)) {}
  host::Component& operator[](const std::string& name) {
    auto& slot = made_[name];
    if (!slot) {
      auto ref = pm_.find(SUMI_KIND_NOISE_SCHEDULER, name);
      // The model says how its sampler is set up (a folder's config, a single file's family
      // standard); flags override.
      std::map<std::string, std::string> cfg = scheduler_config_of(model_, *ref.component, source_);
      if (f_.has("v_parameterization")) cfg["prediction_type"] = "v_prediction";
      if (f_.has("use_karras_sigmas")) cfg["use_karras_sigmas"] = "true";
      slot = std::make_unique<host::Component>(ref, "noise_scheduler." + name, registry_, host::make_config(*ref.component, cfg));
    }
    return *slot;
  }

 private:
  host::PluginManager& pm_;
  host::Registry& registry_;
  host::Component& model_;
  const Flags& f_;
  SchedulerSource source_;
  std::map<std::string, std::unique_ptr<host::Component>> made_;
};

// --network_weights: each file's plugin (named, or found from its keys), configured from the
// file and --network_args, attached to the model; then merged, pre-calculated or applied.
void add_networks(NetworkStack& networks, host::PluginManager& pm, host::Registry& registry, host::Component& model,
                  const Flags& f) {
  for (size_t i = 0; i < f.network_weights.size(); ++i) {
    const std::string& path = f.network_weights[i];
    std::optional<WeightsFile> file;
    if (fs::path(path).extension() == ".safetensors" || f.network_modules.empty()) file = read_weights_file(path);
    if (f.show_meta) {
      // gen_img prints a .safetensors file's metadata; other formats carry none.
      if (!file || file->metadata.empty()) {
        std::cout << "metadata for: " << path << ": none\n";
      } else {
        std::cout << "metadata for: " << path << ":\n";
        for (const auto& [k, v] : file->metadata) std::cout << "  " << k << " = " << v << "\n";
      }
    }
    auto ref = pm.find(SUMI_KIND_NETWORK, f.network_modules.empty() ? find_network_component(pm, *file) : f.network_modules[i]);
    auto given = i < f.network_args.size() ? network_args_of(f.network_args[i], i) : std::map<std::string, std::string>{};
    auto net = std::make_unique<host::Component>(ref, "network" + std::to_string(i), registry,
                                                 host::make_config(*ref.component, given));
    // gen_img's create_network_from_weights: the ranks and the modules covered come from the file
    // (per module), read by the plugin; --network_args set the rest.
    if (file) configure_network_from_file(*net, *file);
    auto selected = prepare_network(model, *net, path, f.network_mul_of(i), false);
    networks.add(std::move(net), std::move(selected));
  }
  if (f.merge) {
    networks.merge();
  } else if (f.pre_calc) {
    std::vector<double> muls;
    for (size_t i = 0; i < f.network_weights.size(); ++i) muls.push_back(f.network_mul_of(i));
    networks.pre_calc(muls);
  } else {
    networks.apply();
  }
}

// The prompts (--prompt or --from_file), each checked against what this run can apply; the
// samplers they name are made now, so a bad --ss fails before any image.
std::vector<prompt::PromptSpec> read_prompts(const Flags& f, Samplers& samplers, const NetworkStack& networks) {
  std::vector<prompt::PromptSpec> specs = f.from_file.empty()
                                              ? std::vector<prompt::PromptSpec>{prompt::parse_prompt_line(f.prompt, "--prompt")}
                                              : prompt::load_prompt_file(f.from_file);
  for (const auto& spec : specs) {
    refuse_unapplied(spec);
    if (spec.sampler) samplers[*spec.sampler];
    if (spec.network_multipliers) {
      if (networks.size() == 0) throw host::UserError(spec.origin + ": --am sets network multipliers but no network is loaded");
      if (spec.network_multipliers->empty()) throw host::UserError(spec.origin + ": --am needs at least one multiplier");
      if (f.merge)
        throw host::UserError(spec.origin + ": --am cannot change multipliers of merged networks; drop --network_merge");
    }
    if (spec.strength) {
      if (!(*spec.strength > 0 && *spec.strength <= 1))
        throw host::UserError(spec.origin + ": --t (strength) must be in (0, 1], got " + std::to_string(*spec.strength));
      if (f.images.empty() && !f.highres)
        throw host::UserError(spec.origin + ": --t (strength) applies to img2img (--image_path) or the highres fix");
    }
  }
  return specs;
}

// Seeds as gen_img: with --seed, Python's random seeded with it draws one seed per image up
// front (a single image gets --seed itself); a prompt's --d list wins and its last entry
// repeats; otherwise a random seed per image.
class Seeds {
 public:
  Seeds(int64_t seed, int64_t total) : seed_(seed), random_(std::random_device{}()) {
    if (seed < 0) return;
    PyRandom rng(static_cast<uint64_t>(seed));
    for (int64_t i = 0; i < total; ++i) predefined_.push_back(static_cast<uint64_t>(rng.randint31()));
    if (total == 1) predefined_[0] = static_cast<uint64_t>(seed);
  }
  // The seed of image `pi` of a prompt; `prompt_seed` carries the prompt's last --d entry.
  uint64_t next(const prompt::PromptSpec& spec, int64_t pi, uint64_t& prompt_seed) {
    if (!spec.seeds.empty()) {
      if (static_cast<size_t>(pi) < spec.seeds.size()) prompt_seed = spec.seeds[static_cast<size_t>(pi)];
      return prompt_seed;
    }
    if (seed_ >= 0) return predefined_.at(next_++);
    return random_() % 2147483648ull;
  }

 private:
  int64_t seed_;
  std::vector<uint64_t> predefined_;
  size_t next_ = 0;
  std::mt19937_64 random_;
};

// Generates a batch of jobs and writes each image as a PNG with A1111's `parameters` text.
class BatchWriter {
 public:
  BatchWriter(const Flags& f, host::Component& model, Samplers& samplers, NetworkStack& networks)
      : f_(f), model_(model), samplers_(samplers), networks_(networks), hash_(a1111_hash(f.ckpt)),
        model_name_(fs::path(f.ckpt).stem().string()), stamp_(timestamp()) {
    fs::create_directories(f.outdir);
    // The parameters line names each network file with the plugin that applied it ("x (oft)"):
    // A1111 writes its networks as <lora:...> prompt tags, which sumi's prompts do not carry, so
    // this is sumi's own field, quoted as A1111 quotes a value holding commas.
    for (size_t i = 0; i < f.network_weights.size(); ++i)
      network_names_ += (network_names_.empty() ? "" : ", ") + fs::path(f.network_weights[i]).stem().string() + " (" +
                        networks.network(i).info().name + ")";
  }

  void write(std::vector<Job>& batch) {
    if (batch.empty()) return;
    const Job& head = batch.front();
    if (networks_.size() && !f_.merge) networks_.set_multipliers(head.network_muls);
    host::Component& sampler = samplers_[head.sampler];
    Generator gen(model_, sampler, vae_batch_size(static_cast<int64_t>(batch.size())));
    std::vector<ImageRequest> rs;
    for (const auto& j : batch) rs.push_back(j.request);
    std::vector<ImageResult> results;
    if (f_.highres) {
      HighresFix h;
      h.scale = f_.hr_scale;
      h.steps = f_.hr_steps;
      h.first_strength = f_.hr_strength;
      h.latents_upscaling = f_.has("highres_fix_latents_upscaling");
      results = gen.run_highres_batch(rs, h);
    } else {
      results = gen.run_batch(rs);
    }
    const std::string sampler_name = host::NoiseSchedulerPlugin(sampler).describe().a1111_name;
    for (size_t k = 0; k < batch.size(); ++k) {
      const Job& j = batch[k];
      char name[64];
      std::snprintf(name, sizeof name, "%s_%03lld_%llu.png", stamp_.c_str(), static_cast<long long>(j.index),
                    static_cast<unsigned long long>(j.request.seed));
      const std::string path = (fs::path(f_.outdir) / (j.spec->output_name ? *j.spec->output_name + ".png" : name)).string();
      write_png(path, to_uint8_hwc(results[k].image), {{"parameters", parameters(j, sampler_name)}});
      std::printf("generate: wrote %s (seed %llu)\n", path.c_str(), static_cast<unsigned long long>(j.request.seed));
    }
    batch.clear();
  }

 private:
  // --vae_batch_size: a count, or below 1 a fraction of this batch; 0 = the whole batch.
  int64_t vae_batch_size(int64_t n) const {
    if (f_.vae_batch <= 0) return 0;
    if (f_.vae_batch >= 1) return static_cast<int64_t>(f_.vae_batch);
    return std::max<int64_t>(1, static_cast<int64_t>(static_cast<double>(n) * f_.vae_batch));
  }

  // A1111's `parameters` text: how the image was made, as A1111 / ComfyUI read it back.
  std::string parameters(const Job& j, const std::string& sampler_name) const {
    const ImageRequest& r = j.request;
    std::ostringstream params;
    params << r.prompt << "\n";
    if (!r.negative_prompt.empty()) params << "Negative prompt: " << r.negative_prompt << "\n";
    params << "Steps: " << (f_.highres ? f_.hr_steps : r.steps) << ", Sampler: " << sampler_name << ", CFG scale: " << r.scale
           << ", Seed: " << r.seed << ", Size: " << r.width << "x" << r.height;
    if (!j.init_name.empty())
      params << ", Denoising strength: " << (f_.highres ? f_.hr_strength : r.strength) << ", Init image: " << j.init_name;
    if (!j.mask_name.empty()) params << ", Mask: " << j.mask_name;
    if (f_.highres)
      params << ", Hires upscale: " << 1 / f_.hr_scale << ", Hires steps: " << r.steps
             << ", Hires upscaler: " << (f_.has("highres_fix_latents_upscaling") ? "Latent" : "bicubic")
             << (j.init_name.empty() ? ", Denoising strength: " : ", Hires denoising strength: ") << r.strength;
    if (!hash_.empty()) params << ", Model hash: " << hash_;
    params << ", Model: " << model_name_;
    if (networks_.size()) params << ", Networks: \"" << network_names_ << "\"";
    return params.str();
  }

  const Flags& f_;
  host::Component& model_;
  Samplers& samplers_;
  NetworkStack& networks_;
  std::string hash_, model_name_, stamp_, network_names_;
};

// An image of `spec`: its request from the prompt's options over the flags, with the start
// image and mask of its running number (`index`) for img2img / inpainting.
Job make_job(const Flags& f, const prompt::PromptSpec& spec, int64_t index, uint64_t seed, size_t networks,
             bool zero_empty_negative) {
  Job j;
  j.spec = &spec;
  j.index = index;
  j.sampler = spec.sampler.value_or(f.sampler);
  // --am pads with its last value (gen_img); --network_mul's missing entries are 1.
  for (size_t k = 0; k < networks; ++k)
    j.network_muls.push_back(spec.network_multipliers ? (k < spec.network_multipliers->size() ? (*spec.network_multipliers)[k]
                                                                                              : spec.network_multipliers->back())
                                                      : f.network_mul_of(k));
  ImageRequest& r = j.request;
  r.prompt = spec.prompt;
  r.negative_prompt = spec.negative_prompt.value_or("");
  r.width = spec.width.value_or(f.W);
  r.height = spec.height.value_or(f.H);
  r.steps = spec.steps.value_or(f.steps);
  r.scale = spec.scale.value_or(f.scale);
  r.seed = seed;
  r.zero_empty_negative = zero_empty_negative;
  const double s = spec.strength.value_or(f.strength);
  if (!f.images.empty()) {
    const std::string& file = f.images[static_cast<size_t>(index) % f.images.size()];
    j.init_name = fs::path(file).filename().string();
    const at::Tensor img = read_image(file);
    // No size given: the image's own, rounded down to a multiple of 32 as gen_img does.
    if (!spec.width && !f.has("W")) r.width = img.size(1) - img.size(1) % 32;
    if (!spec.height && !f.has("H")) r.height = img.size(0) - img.size(0) % 32;
    if (r.width <= 0 || r.height <= 0)
      throw host::UserError("sumi generate: " + file + " is smaller than 32 pixels; give --W and --H");
    r.init_image = to_model_image(img, r.width, r.height);
    r.strength = s;
    if (!f.masks.empty()) {
      const std::string& mfile = f.masks[static_cast<size_t>(index) % f.masks.size()];
      j.mask_name = fs::path(mfile).filename().string();
      r.mask = to_mask(read_image(mfile), r.width, r.height);
    }
  } else if (f.highres) {
    r.strength = s;
  }
  return j;
}

}  // namespace

int cmd_generate(const std::vector<std::string>& args) {
  Flags f;
  const po::options_description d = generate_options(f);
  try {
    po::store(po::command_line_parser(with_recipe_settings(args, d)).options(d).run(), f.vm);
    po::notify(f.vm);
  } catch (const po::error& e) {
    throw host::UserError(std::string("sumi generate: ") + e.what() + " (see sumi generate --help)");
  }
  if (f.has("help")) {
    std::cout << d;
    return 0;
  }
  check_image_flags(f);
  check_network_flags(f);

  host::init_runtime(f.threads);
  CommonOptions common;
  common.plugin_dirs = f.plugin_dirs;
  auto pm = make_plugin_manager(common);
  host::Registry registry;
  registry.set_device(run_device(f.has("device") ? f.vm["device"].as<std::string>() : ""));
  auto model = load_model(pm, registry, f);
  const bool zero_empty_negative =
      nlohmann::json::parse(describe_model(*model)).value("force_zeros_for_empty_prompt", false);
  Samplers samplers(pm, registry, *model, f);
  samplers[f.sampler];
  NetworkStack networks(*model);
  add_networks(networks, pm, registry, *model, f);
  register_sampler_names(pm);
  const std::vector<prompt::PromptSpec> specs = read_prompts(f, samplers, networks);

  Seeds seeds(f.seed, f.n_iter * static_cast<int64_t>(specs.size()) * f.images_per_prompt);
  BatchWriter writer(f, *model, samplers, networks);
  std::vector<Job> batch;
  int64_t index = 0;
  for (int64_t it = 0; it < f.n_iter; ++it) {
    for (const auto& spec : specs) {
      uint64_t prompt_seed = 0;
      for (int64_t pi = 0; pi < f.images_per_prompt; ++pi) {
        const uint64_t seed = seeds.next(spec, pi, prompt_seed);
        Job j = make_job(f, spec, index++, seed, networks.size(), zero_empty_negative);
        if (!batch.empty() && !same_batch(batch.back(), j)) writer.write(batch);
        batch.push_back(std::move(j));
        if (static_cast<int64_t>(batch.size()) == f.batch_size) writer.write(batch);
      }
    }
  }
  writer.write(batch);
  return 0;
}

}  // namespace sumi::app
