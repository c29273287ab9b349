// Mixed precision for training: an autocast scope on the run's device (CPU: bf16, or fp16 where
// the libtorch build can compute in fp16 on the CPU; CUDA: fp16 or bf16), and dynamic loss scaling with the semantics of
// torch.cuda.amp.GradScaler, which fp16 training needs so small gradients do not flush to zero.
#pragma once

#include <ATen/ATen.h>
#include <sumi/torch_compat.hpp>

#include <cstdint>
#include <memory>
#include <vector>

namespace sumi::app {

// Autocast of `device` (CPU or CUDA) to `dtype` for the scope; at::ScalarType::Undefined leaves
// it off.
class Autocast {
 public:
  explicit Autocast(at::ScalarType dtype, c10::DeviceType device = c10::DeviceType::CPU);
  ~Autocast();
  Autocast(const Autocast&) = delete;
  Autocast& operator=(const Autocast&) = delete;

 private:
  std::unique_ptr<torch_compat::AutocastGuard> guard_;
};

// Whether linear and conv2d run under fp16 CPU autocast in this libtorch (1.13 refuses fp16 as
// the CPU autocast dtype; 2.x accepts it and has fp16 CPU kernels). Leaves the autocast state
// as it found it either way.
bool cpu_fp16_autocast_available();

struct GradScalerOptions {
  double init_scale = 65536.0;
  double growth_factor = 2.0;
  double backoff_factor = 0.5;
  int64_t growth_interval = 2000;
};

// GradScaler: scale the loss before backward; before the optimizer step unscale the gradients
// and skip the step when any is inf/NaN; then update: back off at once after a bad step, grow
// after growth_interval good steps in a row.
class GradScaler {
 public:
  explicit GradScaler(GradScalerOptions o = {});
  at::Tensor scale(const at::Tensor& loss) const { return loss * scale_; }
  // Divides every defined gradient by the scale; false when any gradient holds inf or NaN.
  bool unscale(const std::vector<at::Tensor>& params) const;
  void update(bool found_inf);
  double scale_value() const { return scale_; }
  int64_t growth_tracker() const { return growth_tracker_; }
  void restore(double scale, int64_t growth_tracker) {
    scale_ = scale;
    growth_tracker_ = growth_tracker;
  }

 private:
  GradScalerOptions o_;
  double scale_;
  int64_t growth_tracker_ = 0;
};

}  // namespace sumi::app
