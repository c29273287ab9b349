// The recipe's [datasets] table (kohya's dataset flags: --train_data_dir, --resolution,
// --shuffle_caption, --cache_latents, ...) as the dataset layer's kohya-named options, and the
// --dataset_config file it may name. Every key is handed on: the dataset layer rejects the
// ones it does not know, naming the nearest valid key.
#pragma once

#include <sumi/datasets/config.h>
#include <sumi/recipe/value.h>

#include <string>

namespace sumi::app {

// Throws UserError for several [[datasets]] tables, values that are not bool/number/string,
// and options sumi does not implement yet.
datasets::CliOptions dataset_options(const recipe::Value& root, std::string& dataset_config);

}  // namespace sumi::app
