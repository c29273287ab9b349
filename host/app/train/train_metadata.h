// The metadata kohya's scripts write into trained files, so tools that read it (A1111 / Forge,
// ComfyUI, kohya's own scripts, model sites) see a sumi file as they see a kohya one:
//   * `ss_*` training facts on networks (train_network.py), or only kohya's minimum set with
//     `no_metadata`;
//   * `modelspec.*` (Stability AI's model spec, kohya's library/sai_model_spec.py) on networks,
//     Textual Inversion embeddings and single-file model checkpoints.
// The trainer builds these at each save; the network writer adds the `sshs_*` hashes
// (network_file.h), model and embedding files get theirs written into the header afterwards
// (io::set_safetensors_metadata).
#pragma once

#include "app/model_description.h"
#include "trainer.h"

#include <cstdint>
#include <ctime>
#include <map>
#include <optional>
#include <string>
#include <utility>

namespace sumi::app {

using Metadata = std::map<std::string, std::string>;

// Facts of the run only the trainer knows, as of one save.
struct RunFacts {
  int64_t started_at = 0, finished_at = 0;  // seconds since the epoch
  long long num_train_images = 0, num_reg_images = 0;
  int64_t batches_per_epoch = 0;
  int64_t total_steps = 0;  // max_train_steps after max_train_epochs
  int64_t step = 0;         // optimizer steps done at this save
  int epoch = 0;
  int64_t width = 0, height = 0;  // the (first) dataset's resolution
};

// kohya's `ss_*` keys for a network trained with `s` (train_network.py's metadata dict). With
// `s.no_metadata` only kohya's minimum set (SS_METADATA_MINIMUM_KEYS: ss_v2,
// ss_base_model_version, ss_network_module, ss_network_dim, ss_network_alpha, ss_network_args).
// What the network plugin says of itself (ABI 1.3): its component name and its metadata slot's
// answer (ss_network_dim / ss_network_alpha / ss_network_args as it has them).
struct NetworkFacts {
  std::string component;
  bool has_metadata = false;  // false for a network built before ABI 1.3
  Metadata metadata;
};
// ss_network_module is s.network_module (--network_module as given), ss_network_args the given
// s.network_args (absent when none, as kohya). With `net`, the plugin's own values replace the
// LoRA-style ss_network_dim / ss_network_alpha (absent when the plugin gives none).
Metadata network_metadata(const TrainSettings& s, const RunFacts& run, const ModelDescription& model,
                          const NetworkFacts* net = nullptr);

// What a modelspec describes (kohya's lora / textual_inversion flags; neither = a checkpoint).
enum class ModelSpecKind { lora, textual_inversion, checkpoint };

// The inputs of kohya's sai_model_spec.build_metadata.
struct ModelSpec {
  ModelSpecKind kind = ModelSpecKind::lora;
  // The base model's modelspec.architecture (without /lora or /textual-inversion), whether its
  // LoRA files use Stability AI's key layout (implementation generative-models, else
  // diffusers), and its default resolution (for width / height 0).
  std::string architecture;
  bool sai_lora = false;
  int64_t default_width = 512, default_height = 512;
  bool v_parameterization = false;
  std::string title;  // kohya: --metadata_title, else the output name
  std::optional<std::string> author, description, license, tags;
  int64_t width = 0, height = 0;  // 0: the default resolution
  std::optional<std::pair<int64_t, int64_t>> timesteps;  // modelspec.timestep_range
  std::optional<int64_t> clip_skip;                      // modelspec.encoder_layer
  std::time_t timestamp = 0;                             // modelspec.date (local time, as kohya)
};

// modelspec.* keys exactly as kohya writes them (spec 1.0.0): architecture
// "stable-diffusion-v1" / "stable-diffusion-v2-512" / "stable-diffusion-v2-768-v" /
// "stable-diffusion-xl-v1-base", with "/lora" or "/textual-inversion" for adapters;
// implementation Stability AI's generative-models for checkpoints, embeddings and SDXL LoRA,
// "diffusers" for SD1/SD2 LoRA; prediction_type "v" or "epsilon".
Metadata modelspec_metadata(const ModelSpec& spec);

// The model's part of a spec, as its describe gives it: architecture, LoRA key layout, default
// resolution; and whether it predicts v (kohya's --v_parameterization).
void set_modelspec_model(ModelSpec& spec, const ModelDescription& model, bool v_parameterization);

// The ModelSpec of a run: kind, family, v-pred, title/author/... from the [output] metadata_*
// keys, the timestep range when min/max_timestep differ from 0/1000, clip_skip when not 1,
// the date now.
ModelSpec run_modelspec(const TrainSettings& s, ModelSpecKind kind, int64_t width, int64_t height,
                        const ModelDescription& model);

// Refuses metadata settings the run's mode has no place for: kohya's no_metadata and
// training_comment belong to train_network.py (the `ss_*` keys only networks carry).
void check_metadata_options(const TrainSettings& s);

}  // namespace sumi::app
