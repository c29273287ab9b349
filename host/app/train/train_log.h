// What a training run reports while it runs, the way kohya's train_network does: the loss
// recorder behind "avr_loss" / loss/average (a moving average over one epoch's worth of
// micro-batches) and the TensorBoard scalars of generate_step_logs, written with host/logging's
// EventWriter under <logging_dir>/<log_prefix><YYYYmmddHHMMSS>/<log_tracker_name>/ (accelerate's
// layout; the tracker name defaults to "network_train").
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace sumi::logging {
class EventWriter;
}

namespace sumi::app {

// kohya's LossRecorder: during the first epoch every loss is appended; later epochs replace the
// entry of the same micro-batch index, so the average covers the last epoch's worth.
class LossRecorder {
 public:
  void add(bool first_epoch, size_t index_in_epoch, double loss);
  double moving_average() const;

 private:
  std::vector<double> losses_;
  double total_ = 0;
};

struct LogOptions {
  std::string logging_dir;       // empty: no TensorBoard log
  std::string log_prefix;        // prepended to the per-run folder's timestamp
  std::string log_with;          // "" or "tensorboard" (wandb is refused)
  std::string log_tracker_name;  // sub-folder of the run (accelerate's run name); "" = network_train
};

// Throws host::UserError for a tracker sumi does not have, or tensorboard without logging_dir.
void check_log_options(const LogOptions& o);

class TrainLog {
 public:
  // No-op when o.logging_dir is empty.
  explicit TrainLog(const LogOptions& o);
  ~TrainLog();
  TrainLog(const TrainLog&) = delete;
  TrainLog& operator=(const TrainLog&) = delete;

  bool enabled() const { return writer_ != nullptr; }
  // generate_step_logs: loss/current, loss/average, lr/textencoder and lr/unet (each only when
  // that group trains), and lr/d*lr for D-adaptation / Prodigy, at the global step.
  void step(int64_t step, double current, double average, std::optional<double> lr_textencoder,
            std::optional<double> lr_unet, std::optional<double> d_lr = std::nullopt);
  // One more scalar of this step (kohya's max_norm/* with --scale_weight_norms).
  void scalar(const std::string& tag, double value, int64_t step);
  // loss/epoch at step = epoch (1-based), as kohya logs it after each epoch.
  void epoch(int epoch, double average);
  void flush();
  std::string event_file() const;  // "" when disabled

 private:
  std::unique_ptr<logging::EventWriter> writer_;
};

}  // namespace sumi::app
