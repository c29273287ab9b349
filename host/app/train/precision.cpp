#include "precision.h"

#include <ATen/autocast_mode.h>
#include <torch/version.h>

namespace sumi::app {

namespace {
// The CPU autocast switches moved in libtorch 2.4 (device-generic names); this is the host's one
// place that knows both spellings.
#if TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 4)
bool cpu_enabled() { return at::autocast::is_autocast_enabled(c10::DeviceType::CPU); }
void set_cpu_enabled(bool on) { at::autocast::set_autocast_enabled(c10::DeviceType::CPU, on); }
at::ScalarType cpu_dtype() { return at::autocast::get_autocast_dtype(c10::DeviceType::CPU); }
void set_cpu_dtype(at::ScalarType t) { at::autocast::set_autocast_dtype(c10::DeviceType::CPU, t); }
#else
bool cpu_enabled() { return at::autocast::is_cpu_enabled(); }
void set_cpu_enabled(bool on) { at::autocast::set_cpu_enabled(on); }
at::ScalarType cpu_dtype() { return at::autocast::get_autocast_cpu_dtype(); }
void set_cpu_dtype(at::ScalarType t) { at::autocast::set_autocast_cpu_dtype(t); }
#endif
}  // namespace

Autocast::Autocast(at::ScalarType dtype) : on_(dtype != at::ScalarType::Undefined) {
  if (!on_) return;
  prev_enabled_ = cpu_enabled();
  prev_dtype_ = cpu_dtype();
  // The dtype first: libtorch 1.13 throws for anything but bf16, and a constructor that throws
  // runs no destructor, so nothing may have been switched on by then.
  set_cpu_dtype(dtype);
  set_cpu_enabled(true);
  at::autocast::increment_nesting();
}

Autocast::~Autocast() {
  if (!on_) return;
  if (at::autocast::decrement_nesting() == 0) at::autocast::clear_cache();
  set_cpu_enabled(prev_enabled_);
  set_cpu_dtype(prev_dtype_);
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
