// The run's datasets, built and checked up front (every image decoded, every caption read), and
// the run's length in optimizer steps.
#pragma once

#include "app/train/trainer.h"

#include <sumi/datasets/dataset.h>

#include <cstdint>
#include <vector>

namespace sumi::app {

struct TrainingData {
  datasets::DatasetGroupConfig group;
  std::vector<datasets::Dataset> data;
  long long num_train_images = 0, num_reg_images = 0;
  size_t batches_per_epoch = 0;
  int64_t total_steps = 0;  // max_train_steps, or max_train_epochs in optimizer steps
};

// Throws a UserError / DatasetError naming the file for a dataset that cannot be trained on.
TrainingData load_training_data(const TrainSettings& s);

}  // namespace sumi::app
