#include "precision.h"

namespace sumi::app {

Autocast::Autocast(at::ScalarType dtype, c10::DeviceType device) {
  if (dtype != at::ScalarType::Undefined) guard_ = std::make_unique<torch_compat::AutocastGuard>(device, dtype);
}

Autocast::~Autocast() = default;

bool cpu_fp16_autocast_available() {
  try {
    at::NoGradGuard ng;
    Autocast ac(at::kHalf);
    const at::Tensor x = at::ones({1, 2, 4, 4});
    const at::Tensor y = at::conv2d(x, at::ones({2, 2, 3, 3}), {}, 1, 1);
    const at::Tensor z = at::linear(y.flatten(1), at::ones({3, 32}));
    return z.isfinite().all().item<bool>();
  } catch (const std::exception&) {
    return false;
  }
}

GradScaler::GradScaler(GradScalerOptions o) : o_(o), scale_(o.init_scale) {}

bool GradScaler::unscale(const std::vector<at::Tensor>& params) const {
  at::NoGradGuard ng;
  // One flag where the gradients are, read once (a read per parameter would sync a GPU each time).
  at::Tensor bad;
  const double inv = 1.0 / scale_;
  for (const auto& p : params) {
    if (!p.grad().defined()) continue;
    at::Tensor g = p.grad();
    g.mul_(inv);
    const at::Tensor b = g.isfinite().all().logical_not();
    bad = bad.defined() ? bad.logical_or(b) : b;
  }
  return !bad.defined() || !bad.item<bool>();
}

void GradScaler::update(bool found_inf) {
  if (found_inf) {
    scale_ *= o_.backoff_factor;
    growth_tracker_ = 0;
    return;
  }
  if (++growth_tracker_ == o_.growth_interval) {
    scale_ *= o_.growth_factor;
    growth_tracker_ = 0;
  }
}

}  // namespace sumi::app
