// What a run trains, one kind per mode: a network plugin's parameters (train_network.py), the
// model's own parts (train_db.py / fine_tune.py) or new tokens (train_textual_inversion.py).
// Each sets itself up on the loaded model and writes its own file.
#pragma once

#include "app/model_description.h"
#include "app/train/train_metadata.h"
#include "app/train/trainer.h"
#include "core/component.h"
#include "core/plugin_manager.h"
#include "core/registry.h"

#include <filesystem>
#include <memory>
#include <string>

namespace sumi::app {

class TrainTarget {
 public:
  virtual ~TrainTarget() = default;
  // The registry component that holds the trained parameters ("network" or "model").
  virtual const char* component() const = 0;
  // Whether save_state keeps all of the component's tensors (a network: its state too) or only
  // the trainable ones (a model's frozen weights come from its file).
  virtual bool state_keeps_all() const { return false; }
  // The network being trained, for sample images; nullptr otherwise.
  virtual host::Component* network() { return nullptr; }
  // What --resume checks the state was saved for ("network" name or the mode).
  virtual std::string state_name() const = 0;
  // Whether a save named `name` is a folder (a diffusers model) rather than `<name>.safetensors`.
  virtual bool saves_folder() const { return false; }
  // Writes the trained result to `path` (through a temporary name), with kohya's metadata for
  // the run so far (`run`).
  virtual void save(const std::filesystem::path& path, const RunFacts& run) = 0;
};

// The target of `s.mode`, set up on the loaded `model` (attaches the network, adds the token, or
// makes the model's parts trainable).
std::unique_ptr<TrainTarget> make_train_target(const TrainSettings& s, host::PluginManager& pm, host::Registry& registry,
                                               host::Component& model, const ModelDescription& description);

}  // namespace sumi::app
