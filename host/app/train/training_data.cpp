#include "app/train/training_data.h"

#include "app/train/settings_check.h"
#include "core/error.h"
#include "core/progress.h"

namespace sumi::app {

TrainingData load_training_data(const TrainSettings& s) {
  TrainingData t;
  t.group = s.dataset_config.empty() ? datasets::config_from_arguments(s.dataset_args)
                                     : datasets::load_dataset_config(s.dataset_config, s.dataset_args);
  for (const auto& dc : t.group.datasets)
    for (const auto& sub : dc.subsets)
      if (!sub.conditioning_data_dir.empty())
        throw host::UserError(sub.origin + ": conditioning_data_dir makes a ControlNet dataset, whose conditioning images "
                              "only ControlNet training reads; `sumi train` " + std::string(mode_name(s.mode)) +
                              " training would ignore them: drop conditioning_data_dir");
  for (const auto& dc : t.group.datasets) {
    datasets::BuildReport report;
    datasets::BuildOptions bo;
    bo.skip_bad = s.skip_bad_files;
    try {
      t.data.push_back(datasets::Dataset::build(dc, bo, &report));
    } catch (const datasets::DatasetError& e) {
      if (s.skip_bad_files) throw;
      throw datasets::DatasetError(std::string(e.what()) +
                                   "\nhint: fix or remove these files, or give --skip_bad_files to train without them");
    }
    for (const auto& w : report.warnings) host::log(SUMI_LOG_WARN, "datasets", w);
    for (const auto& p : report.skipped)
      host::log(SUMI_LOG_WARN, "datasets", "skipped " + p.path.string() + ": " + p.message + " (--skip_bad_files)");
    t.num_train_images += report.num_train_images;
    t.num_reg_images += report.num_reg_images;
  }
  for (const auto& d : t.data) t.batches_per_epoch += d.batches_per_epoch();
  if (t.batches_per_epoch == 0) throw host::UserError("the dataset has no images to train on");
  t.total_steps = s.max_train_steps;
  if (s.max_train_epochs)
    t.total_steps = *s.max_train_epochs * static_cast<int64_t>((t.batches_per_epoch + s.gradient_accumulation_steps - 1) /
                                                               s.gradient_accumulation_steps);
  return t;
}

}  // namespace sumi::app
