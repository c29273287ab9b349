// Periodic and final saves of a run: kohya's file names (<name>-step00000010, <name>-000002),
// --save_state folders (<name>-state: trained tensors, optimizer state, the RNGs and the
// position in the epoch plan) and --resume from one, --save_last_n_* pruning.
#pragma once

#include "app/train/precision.h"
#include "app/train/train_target.h"
#include "app/train/trainer.h"
#include "core/registry.h"

#include <cstdint>
#include <filesystem>
#include <optional>
#include <random>
#include <string>

namespace sumi::app {

// Where the run is: optimizer steps done, the epoch (1-based; 0 before the first) and the
// batches of its plan consumed.
struct TrainPosition {
  int64_t step = 0;
  int epoch = 0;
  size_t batch_in_epoch = 0;
};

class Checkpoints {
 public:
  Checkpoints(const TrainSettings& s, host::Registry& registry, TrainTarget& target);

  std::string step_name(int64_t step) const;   // <output_name>-step%08d
  std::string epoch_name(int64_t epoch) const; // <output_name>-%06d
  // The trained file (or folder) `name` writes, and writes it.
  std::filesystem::path saved_path(const std::string& name) const;
  std::string save(const std::string& name, const RunFacts& run);
  // With --save_state: <name>-state, written under a temporary name and renamed.
  void save_state(const std::string& name, const TrainPosition& at, const std::mt19937_64& data_rng, const GradScaler* scaler) const;
  // With --resume: restores the trained tensors, the optimizer state, the RNGs and the scaler;
  // returns where the run stopped (nullopt without --resume).
  std::optional<TrainPosition> resume(std::mt19937_64& data_rng, GradScaler* scaler) const;
  // --save_last_n_steps(_state) / --save_last_n_epochs(_state): remove the save that fell out of
  // the window after a periodic save at `step` / `epoch`.
  void prune_step_saves(int64_t step) const;
  void prune_epoch_saves(int epoch) const;

 private:
  bool in_state(const host::RegistryEntry& e) const;
  void remove_saved(const std::string& name, bool model_file, bool state) const;

  const TrainSettings& s_;
  host::Registry& registry_;
  TrainTarget& target_;
  std::filesystem::path outdir_;
};

}  // namespace sumi::app
