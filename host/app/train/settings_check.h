// Checking a run's settings before anything is loaded (check_train_settings) and against the
// loaded model's description (check_model_settings). Every refusal names the recipe key / flag.
#pragma once

#include "app/model_description.h"
#include "app/train/trainer.h"

namespace sumi::app {

// "network", "dreambooth" or "textual_inversion": for messages and the --save_state record.
const char* mode_name(TrainMode m);

// Precision, mode-specific keys, save windows: what needs no plugin.
void check_train_settings(const TrainSettings& s);

// What needs the model: per-text-encoder learning rates (a model with several text encoders),
// block_lr (a model that describes its UNet block groups).
void check_model_settings(const TrainSettings& s, const ModelDescription& model);

}  // namespace sumi::app
