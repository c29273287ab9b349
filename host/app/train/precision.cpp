#include "precision.h"

#include <ATen/autocast_mode.h>

namespace sumi::app {

Autocast::Autocast(at::ScalarType dtype) : on_(dtype != at::ScalarType::Undefined) {
  if (!on_) return;
  prev_enabled_ = at::autocast::is_cpu_enabled();
  prev_dtype_ = at::autocast::get_autocast_cpu_dtype();
  at::autocast::set_cpu_enabled(true);
  at::autocast::set_autocast_cpu_dtype(dtype);
}

Autocast::~Autocast() {
  if (!on_) return;
  at::autocast::set_cpu_enabled(prev_enabled_);
  at::autocast::set_autocast_cpu_dtype(prev_dtype_);
  at::autocast::clear_cache();
}

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
  bool finite = true;
  const double inv = 1.0 / scale_;
  for (const auto& p : params) {
    if (!p.grad().defined()) continue;
    at::Tensor g = p.grad();
    g.mul_(inv);
    if (finite && !g.isfinite().all().item<bool>()) finite = false;
  }
  return finite;
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
