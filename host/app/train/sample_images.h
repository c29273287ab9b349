// Sample images while training, as kohya's train_util.sample_images: prompts from
// --sample_prompts (.txt lines with --n --w --h --d --l --s --ss, or .toml / .json), drawn with
// the model in no-grad and the network (network training) in eval mode at multiplier 1, written as
// <output_dir>/sample/<output_name>_<step:06d or e<epoch:06d>>_<index:02d>_<YYYYmmddHHMMSS>[_<seed>].png.
// The training RNG streams are not touched, so sampling does not change the training run.
#pragma once

#include "core/component.h"
#include "core/plugin_manager.h"

#include <sumi/prompt/prompt_file.h>

#include <ATen/ATen.h>

#include <cstdint>
#include <optional>
#include <random>
#include <string>
#include <vector>

namespace sumi::app {

struct SampleOptions {
  std::string prompts;          // --sample_prompts; empty: no samples
  int64_t every_n_steps = 0;    // --sample_every_n_steps (0: off)
  int64_t every_n_epochs = 0;   // --sample_every_n_epochs (0: off; when set, every_n_steps is ignored)
  bool at_first = false;        // --sample_at_first: before the first step
  std::string sampler = "ddim"; // --sample_sampler
};

// kohya's gating. `epoch` is set for the calls at the end of an epoch (1-based) and for the call
// before training (epoch 0, step 0); per-step calls pass none.
bool should_sample(const SampleOptions& o, int64_t step, std::optional<int> epoch);

class TrainingSampler {
 public:
  // Reads and checks the prompt file up front (options sumi cannot honour are refused here, not
  // after hours of training). `model`, `network` stay owned by the caller; `network` is null when
  // the model itself is trained (DreamBooth, fine-tuning, Textual Inversion: the model as it is now,
  // with its added tokens, draws the samples).
  TrainingSampler(const SampleOptions& o, host::PluginManager& pm, host::Registry& registry, host::Component& model,
                  host::Component* network, double train_multiplier, bool v_parameterization,
                  at::ScalarType autocast, std::string output_dir, std::string output_name, uint64_t seed);

  bool enabled() const { return !prompts_.empty(); }
  // Samples every prompt when should_sample says so; returns the files written.
  std::vector<std::string> maybe_sample(int64_t step, std::optional<int> epoch);

 private:
  SampleOptions o_;
  host::PluginManager& pm_;
  host::Registry& registry_;
  host::Component& model_;
  host::Component* network_;
  double train_multiplier_;
  bool v_parameterization_;
  at::ScalarType autocast_;
  std::string output_dir_, output_name_;
  std::vector<prompt::PromptSpec> prompts_;
  std::mt19937_64 seed_rng_;  // seeds for prompts without --d
};

}  // namespace sumi::app
