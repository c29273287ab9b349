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
#include "io/safetensors_torch.h"
#include "model_file.h"

#include <sumi/prompt/prompt_file.h>

#include <boost/program_options.hpp>

#include <algorithm>
#include <cctype>
#include <chrono>
#include <cstdio>
#include <ctime>
#include <filesystem>
#include <iostream>
#include <random>
#include <sstream>

namespace po = boost::program_options;
namespace fs = std::filesystem;

namespace sumi::app {

namespace {

// gen_img flags sumi does not implement yet: refused by name rather than ignored.
const char* kNotYet[] = {"highres_fix_save_1st", "highres_fix_upscaler", "highres_fix_upscaler_args", "network_merge",
                         "textual_inversion_embeddings", "vae_batch_size",
                         "control_net_models", "xformers", "sdpa", "interactive", "clip_guidance_scale"};

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

int cmd_generate(const std::vector<std::string>& args) {
  std::string ckpt, vae, prompt, from_file, outdir = "outputs", sampler = "ddim", dtype_flag;
  std::vector<std::string> network_modules, network_weights;
  std::vector<double> network_mul;
  std::vector<std::string> plugin_dirs;
  int64_t W = 512, H = 512, steps = 50, n_iter = 1, images_per_prompt = 1, batch_size = 1, clip_skip = 1,
          max_emb = 3;
  double scale = 7.5, strength = 0.8, hr_scale = 0, hr_strength = -1;
  int64_t hr_steps = 28;
  std::string image_path, mask_path;
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
      "scale", po::value(&scale), "classifier-free guidance scale")("seed", po::value(&seed),
                                                                    "seed of the first image (next images: +1)")(
      "n_iter", po::value(&n_iter), "repeat every prompt this many times")(
      "images_per_prompt", po::value(&images_per_prompt), "images per prompt per iteration")(
      "batch_size", po::value(&batch_size), "batch size (images are sampled one by one)")(
      "clip_skip", po::value(&clip_skip), "use the output of the n-th last text-encoder layer")(
      "max_embeddings_multiples", po::value(&max_emb), "prompt length in 75-token chunks")(
      "v2", "SD 2.x model")("v_parameterization", "v-prediction model")("sdxl", "SDXL model")(
      "bf16", "bfloat16 weights and autocast")("fp16", "float16 weights")(
      "network_module", po::value(&network_modules)->multitoken(), "network plugin (lora, networks.lora, path)")(
      "network_weights", po::value(&network_weights)->multitoken(), "network weights file")(
      "network_mul", po::value(&network_mul)->multitoken(), "network multiplier")(
      "plugin-dir", po::value(&plugin_dirs)->composing(), "extra plugin folder")(
      "threads", po::value(&threads), "CPU threads (0 = all cores)")(
      "image_path", po::value(&image_path), "img2img start image: a file, or a folder (cycled image by image)")(
      "strength", po::value(&strength), "img2img strength in (0, 1] (default 0.8)")(
      "mask_path", po::value(&mask_path), "inpainting mask, file or folder: white = repaint (needs --image_path)")(
      "highres_fix_scale", po::value(&hr_scale), "highres fix: first pass at this fraction of the size (e.g. 0.5)")(
      "highres_fix_steps", po::value(&hr_steps), "highres fix: first pass steps (default 28)")(
      "highres_fix_strength", po::value(&hr_strength), "highres fix: first pass strength with --image_path (default --strength)")(
      "highres_fix_latents_upscaling", "highres fix: upscale latents (bilinear) instead of the decoded image");
  for (const char* f : kNotYet) d.add_options()(f, po::value<std::vector<std::string>>()->multitoken()->zero_tokens(), "");
  po::variables_map vm;
  try {
    po::store(po::command_line_parser(args).options(d).run(), vm);
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
  if (max_emb != 3) throw host::UserError("sumi generate: --max_embeddings_multiples other than 3 is not supported yet");
  if (network_modules.size() > 1 || network_weights.size() > 1)
    throw host::UserError("sumi generate: one network at a time is supported so far (got " +
                          std::to_string(std::max(network_modules.size(), network_weights.size())) + ")");
  if (network_modules.size() != network_weights.size())
    throw host::UserError("sumi generate: --network_module and --network_weights must be given together");

  host::init_runtime(threads);
  CommonOptions common;
  common.plugin_dirs = plugin_dirs;
  auto pm = make_plugin_manager(common);
  host::Registry registry;

  std::string family = vm.count("sdxl") ? "sdxl" : vm.count("v2") ? "sd2" : detect_family(ckpt);
  if (family.empty()) family = "sd1";
  const std::string dtype = vm.count("bf16") ? "bf16" : vm.count("fp16") ? "fp16" : "fp32";
  auto model_ref = pm.find(SUMI_KIND_MODEL, family);
  std::map<std::string, std::string> model_cfg{{"dtype", dtype}, {"clip_skip", std::to_string(clip_skip)}};
  if (!vae.empty()) model_cfg["vae"] = vae;
  if (vm.count("v_parameterization")) model_cfg["v_parameterization"] = "true";
  host::Component model(model_ref, "model", registry, host::make_config(*model_ref.component, model_cfg));
  model.check(model.vtable<sumi_model_vtable>().load(model.self(), ckpt.c_str()), "load");

  auto sched_ref = pm.find(SUMI_KIND_NOISE_SCHEDULER, sampler);
  // A diffusers folder says how its sampler is set up; flags override.
  std::map<std::string, std::string> sched_cfg = scheduler_config_of(ckpt, *sched_ref.component);
  if (vm.count("v_parameterization")) sched_cfg["prediction_type"] = "v_prediction";
  if (vm.count("use_karras_sigmas")) sched_cfg["use_karras_sigmas"] = "true";
  host::Component scheduler(sched_ref, "noise_scheduler", registry, host::make_config(*sched_ref.component, sched_cfg));

  std::unique_ptr<host::Component> network;
  if (!network_modules.empty()) {
    auto ref = pm.find(SUMI_KIND_NETWORK, network_modules[0]);
    network = std::make_unique<host::Component>(ref, "network", registry, host::make_config(*ref.component, {}));
    attach_network(model, *network, network_weights[0], network_mul.empty() ? 1.0 : network_mul[0], false);
  }

  std::vector<prompt::PromptSpec> specs =
      from_file.empty() ? std::vector<prompt::PromptSpec>{prompt::parse_prompt_line(prompt, "--prompt")}
                        : prompt::load_prompt_file(from_file);
  fs::create_directories(outdir);
  const std::string hash = a1111_hash(ckpt);
  const std::string model_name = fs::path(ckpt).stem().string();
  Generator gen(model, scheduler);
  std::mt19937_64 seed_rng(std::random_device{}());
  uint64_t next_seed = seed >= 0 ? static_cast<uint64_t>(seed) : seed_rng() % 4294967296ull;
  int64_t index = 0;
  const std::string stamp = timestamp();
  for (const auto& spec : specs) {
    if (spec.sampler && *spec.sampler != sampler)
      throw host::UserError(spec.origin + ": --ss (per-prompt sampler) is not supported by sumi generate yet; use --sampler");
    for (int64_t it = 0; it < n_iter * images_per_prompt; ++it) {
      ImageRequest r;
      r.prompt = spec.prompt;
      r.negative_prompt = spec.negative_prompt.value_or("");
      r.width = spec.width.value_or(W);
      r.height = spec.height.value_or(H);
      r.steps = spec.steps.value_or(steps);
      r.scale = spec.scale.value_or(scale);
      r.seed = static_cast<size_t>(it) < spec.seeds.size() ? spec.seeds[static_cast<size_t>(it)] : next_seed++;
      r.zero_empty_negative = family == "sdxl";
      std::string init_name;
      if (!images.empty()) {
        const std::string& file = images[static_cast<size_t>(index) % images.size()];
        init_name = fs::path(file).filename().string();
        const at::Tensor img = read_image(file);
        // No size given: the image's own, rounded down to a multiple of 32 as gen_img does.
        if (!spec.width && !vm.count("W")) r.width = img.size(1) - img.size(1) % 32;
        if (!spec.height && !vm.count("H")) r.height = img.size(0) - img.size(0) % 32;
        if (r.width <= 0 || r.height <= 0)
          throw host::UserError("sumi generate: " + file + " is smaller than 32 pixels; give --W and --H");
        r.init_image = to_model_image(img, r.width, r.height);
        r.strength = strength;
        if (!masks.empty())
          r.mask = to_mask(read_image(masks[static_cast<size_t>(index) % masks.size()]), r.width, r.height);
      } else if (highres) {
        r.strength = strength;
      }
      ImageResult result;
      if (highres) {
        HighresFix h;
        h.scale = hr_scale;
        h.steps = hr_steps;
        h.first_strength = hr_strength;
        h.latents_upscaling = vm.count("highres_fix_latents_upscaling") > 0;
        result = gen.run_highres(r, h);
      } else {
        result = gen.run(r);
      }
      std::ostringstream params;
      params << r.prompt << "\n";
      if (!r.negative_prompt.empty()) params << "Negative prompt: " << r.negative_prompt << "\n";
      params << "Steps: " << (highres ? hr_steps : r.steps) << ", Sampler: " << a1111_sampler(sampler, vm.count("use_karras_sigmas") > 0)
             << ", CFG scale: " << r.scale << ", Seed: " << r.seed << ", Size: " << r.width << "x" << r.height;
      if (!init_name.empty()) params << ", Denoising strength: " << (highres ? hr_strength : strength) << ", Init image: " << init_name;
      if (!masks.empty()) params << ", Mask: " << fs::path(masks[static_cast<size_t>(index) % masks.size()]).filename().string();
      if (highres)
        params << ", Hires upscale: " << 1 / hr_scale << ", Hires steps: " << r.steps
               << ", Hires upscaler: " << (vm.count("highres_fix_latents_upscaling") ? "Latent" : "bicubic")
               << (init_name.empty() ? ", Denoising strength: " : ", Hires denoising strength: ") << strength;
      if (!hash.empty()) params << ", Model hash: " << hash;
      params << ", Model: " << model_name;
      if (network) params << ", Lora: " << fs::path(network_weights[0]).stem().string();
      char name[64];
      std::snprintf(name, sizeof name, "%s_%03lld_%llu.png", stamp.c_str(), static_cast<long long>(index++),
                    static_cast<unsigned long long>(r.seed));
      const std::string path = (fs::path(outdir) / (spec.output_name ? *spec.output_name + ".png" : name)).string();
      write_png(path, to_uint8_hwc(result.image), {{"parameters", params.str()}});
      std::printf("generate: wrote %s (seed %llu)\n", path.c_str(), static_cast<unsigned long long>(r.seed));
    }
  }
  return 0;
}

}  // namespace sumi::app
