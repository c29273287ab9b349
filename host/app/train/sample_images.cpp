#include "sample_images.h"

#include "app/app.h"
#include "app/generation.h"
#include "app/image_io.h"
#include "app/model_description.h"
#include "core/error.h"
#include "core/typed_plugins.h"
#include "precision.h"

#include <ctime>
#include <filesystem>
#include <sstream>

namespace fs = std::filesystem;

namespace sumi::app {

bool should_sample(const SampleOptions& o, int64_t step, std::optional<int> epoch) {
  if (o.prompts.empty()) return false;
  if (step == 0) return o.at_first;
  if (o.every_n_steps <= 0 && o.every_n_epochs <= 0) return false;
  if (o.every_n_epochs > 0) return epoch && *epoch % o.every_n_epochs == 0;  // every_n_steps ignored, as kohya
  return !epoch && step % o.every_n_steps == 0;
}

namespace {

// Per-prompt options that kohya's training samples do not read, or sumi's sampler cannot do.
void refuse_unsupported(const prompt::PromptSpec& p) {
  auto no = [&](bool set, const char* opt, const char* what) {
    if (set)
      throw host::UserError("--sample_prompts " + p.origin + ": " + opt + " (" + what +
                            ") is not supported for sample images during training; remove it");
  };
  no(p.negative_scale.has_value(), "--nl", "negative scale");
  no(p.network_multipliers.has_value(), "--am", "network multipliers; samples use the trained network at 1");
  no(p.strength.has_value(), "--t", "img2img strength");
  no(p.original_width || p.original_height || p.original_width_negative || p.original_height_negative, "--ow/--oh/--nw/--nh",
     "the model's size conditioning");
  no(p.crop_top || p.crop_left, "--ct/--cl", "the model's crop conditioning");
  no(p.controlnet_image.has_value(), "--cn", "ControlNet image");
  no(p.output_name.has_value(), "--f", "file name; kohya's naming is used");
  if (p.seeds.size() > 1)
    throw host::UserError("--sample_prompts " + p.origin + ": --d takes one seed for sample images, got " +
                          std::to_string(p.seeds.size()));
}

std::string local_timestamp() {
  const std::time_t t = std::time(nullptr);
  char b[32];
  std::strftime(b, sizeof b, "%Y%m%d%H%M%S", std::localtime(&t));
  return b;
}

}  // namespace

TrainingSampler::TrainingSampler(const SampleOptions& o, host::PluginManager& pm, host::Registry& registry,
                                 host::Component& model, host::Component* network, double train_multiplier,
                                 bool v_parameterization, at::ScalarType autocast, std::string output_dir,
                                 std::string output_name, uint64_t seed)
    : o_(o),
      pm_(pm),
      registry_(registry),
      model_(model),
      network_(network),
      train_multiplier_(train_multiplier),
      v_parameterization_(v_parameterization),
      autocast_(autocast),
      output_dir_(std::move(output_dir)),
      output_name_(std::move(output_name)),
      seed_rng_(seed ^ 0x5a3d1e5eULL) {
  if (o_.prompts.empty()) {
    if (o_.every_n_steps > 0 || o_.every_n_epochs > 0 || o_.at_first)
      throw host::UserError("[sample] every_n_steps / every_n_epochs / at_first need prompts (--sample_prompts)");
    return;
  }
  if (o_.every_n_steps < 0 || o_.every_n_epochs < 0)
    throw host::UserError("[sample] every_n_steps and every_n_epochs must be >= 0");
  register_sampler_names(pm_);
  try {
    prompts_ = prompt::load_prompt_file(o_.prompts);
  } catch (const std::exception& e) {
    throw host::UserError(std::string("--sample_prompts: ") + e.what());
  }
  if (prompts_.empty()) throw host::UserError("--sample_prompts " + o_.prompts + ": the file holds no prompt");
  for (const auto& p : prompts_) {
    refuse_unsupported(p);
    pm_.find(SUMI_KIND_NOISE_SCHEDULER, p.sampler.value_or(o_.sampler));  // an unknown sampler fails now
  }
}

std::vector<std::string> TrainingSampler::maybe_sample(int64_t step, std::optional<int> epoch) {
  std::vector<std::string> written;
  if (!should_sample(o_, step, epoch)) return written;
  // The network samples in eval mode (no dropout) at multiplier 1, and trains on afterwards as before.
  struct Restore {
    host::Component* net;
    double multiplier;
    ~Restore() {
      if (net) host::NetworkPlugin(*net).resume_training_noexcept(multiplier);
    }
  } restore{nullptr, train_multiplier_};
  if (network_) {
    host::NetworkPlugin(*network_).set_training(false);
    restore.net = network_;
    host::NetworkPlugin(*network_).set_multiplier(1.0);
  }

  const fs::path dir = fs::path(output_dir_) / "sample";
  fs::create_directories(dir);
  char num[32];
  if (epoch)
    std::snprintf(num, sizeof num, "e%06d", *epoch);
  else
    std::snprintf(num, sizeof num, "%06lld", static_cast<long long>(step));
  for (size_t i = 0; i < prompts_.size(); ++i) {
    const auto& p = prompts_[i];
    const std::string sampler = p.sampler.value_or(o_.sampler);
    auto ref = pm_.find(SUMI_KIND_NOISE_SCHEDULER, sampler);
    std::map<std::string, std::string> cfg;
    if (v_parameterization_) cfg["prediction_type"] = "v_prediction";
    host::Component sched(ref, "sample_scheduler", registry_, host::make_config(*ref.component, cfg));
    ImageRequest r;
    r.prompt = p.prompt;
    r.negative_prompt = p.negative_prompt.value_or("");
    const int64_t w = p.width.value_or(512), h = p.height.value_or(512);
    // kohya rounds down to a multiple of the VAE's factor (8 for its models), at least 64.
    const int64_t f = describe(model_).vae_scale_factor;
    r.width = std::max<int64_t>(64, w - w % f);
    r.height = std::max<int64_t>(64, h - h % f);
    r.steps = p.steps.value_or(30);
    r.scale = p.scale.value_or(7.5);
    const bool seeded = !p.seeds.empty();
    r.seed = seeded ? p.seeds.front() : seed_rng_() % 4294967296ULL;
    ImageResult result;
    {
      at::NoGradGuard ng;
      Autocast ac(autocast_, model_.device().type());
      result = Generator(model_, sched).run(r, false);
    }
    char idx[32];
    std::snprintf(idx, sizeof idx, "_%02zu_", i);
    std::string name = output_name_ + "_" + num + idx + local_timestamp();
    if (seeded) name += "_" + std::to_string(r.seed);
    const std::string path = (dir / (name + ".png")).string();
    std::ostringstream params;
    params << r.prompt << "\nNegative prompt: " << r.negative_prompt << "\nSteps: " << r.steps
           << ", Sampler: " << host::NoiseSchedulerPlugin(sched).describe().a1111_name
           << ", CFG scale: " << r.scale << ", Seed: " << r.seed << ", Size: " << r.width << "x" << r.height;
    write_png(path, to_uint8_hwc(result.image), {{"parameters", params.str()}});
    written.push_back(path);
  }
  return written;
}

}  // namespace sumi::app
