#include "train_log.h"

#include "core/error.h"
#include "logging/event_file.h"

#include <ctime>
#include <filesystem>

namespace fs = std::filesystem;

namespace sumi::app {

void LossRecorder::add(bool first_epoch, size_t index_in_epoch, double loss) {
  if (first_epoch || index_in_epoch >= losses_.size()) {
    losses_.push_back(loss);
  } else {
    total_ -= losses_[index_in_epoch];
    losses_[index_in_epoch] = loss;
  }
  total_ += loss;
}

double LossRecorder::moving_average() const {
  return losses_.empty() ? 0.0 : total_ / static_cast<double>(losses_.size());
}

void check_log_options(const LogOptions& o) {
  if (!o.log_with.empty() && o.log_with != "tensorboard")
    throw host::UserError("[output] log_with: sumi writes TensorBoard logs only (\"tensorboard\"), got \"" + o.log_with +
                          "\"; wandb is not supported");
  if (o.log_with == "tensorboard" && o.logging_dir.empty())
    throw host::UserError("[output] log_with = \"tensorboard\" needs logging_dir (--logging_dir)");
}

TrainLog::TrainLog(const LogOptions& o) {
  check_log_options(o);
  if (o.logging_dir.empty()) return;
  const std::time_t t = std::time(nullptr);
  char stamp[32];
  std::strftime(stamp, sizeof stamp, "%Y%m%d%H%M%S", std::localtime(&t));
  const fs::path dir = fs::path(o.logging_dir) / (o.log_prefix + stamp) /
                       (o.log_tracker_name.empty() ? std::string("network_train") : o.log_tracker_name);
  try {
    writer_ = std::make_unique<logging::EventWriter>(dir.string());
  } catch (const std::exception& e) {
    throw host::UserError(std::string("[output] logging_dir: ") + e.what());
  }
}

TrainLog::~TrainLog() = default;

void TrainLog::step(int64_t step, double current, double average, std::optional<double> lr_textencoder,
                    std::optional<double> lr_unet, std::optional<double> d_lr) {
  if (!writer_) return;
  writer_->add_scalar("loss/current", current, step);
  writer_->add_scalar("loss/average", average, step);
  if (lr_textencoder) writer_->add_scalar("lr/textencoder", *lr_textencoder, step);
  if (lr_unet) writer_->add_scalar("lr/unet", *lr_unet, step);
  if (d_lr) writer_->add_scalar("lr/d*lr", *d_lr, step);
}

void TrainLog::scalar(const std::string& tag, double value, int64_t step) {
  if (writer_) writer_->add_scalar(tag, value, step);
}

void TrainLog::epoch(int epoch, double average) {
  if (writer_) writer_->add_scalar("loss/epoch", average, epoch);
}

void TrainLog::flush() {
  if (writer_) writer_->flush();
}

std::string TrainLog::event_file() const { return writer_ ? writer_->path() : std::string(); }

}  // namespace sumi::app
