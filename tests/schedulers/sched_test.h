// Drives a noise-scheduler component through its C vtable with ATen tensors, and loads the
// fixtures' golden tensors.
#pragma once

#include <doctest/doctest.h>

#include "core/host_api.h"
#include "core/tensor_handle.h"
#include "sumi/io/safetensors_torch.h"
#include "../common/plugin_test.h"

#include <ATen/ATen.h>

#include <map>
#include <memory>
#include <string>

namespace sumi::test {

class Sched {
 public:
  explicit Sched(const std::string& name, const std::map<std::string, std::string>& cfg = {})
      : c_(make(SUMI_KIND_NOISE_SCHEDULER, name, reg_, cfg, "noise_scheduler")) {}

  void set_timesteps(int64_t n) { c_->check(vt().set_timesteps(c_->self(), n), "set_timesteps"); }
  at::Tensor timesteps() { return out([&](sumi_tensor* o) { return vt().timesteps(c_->self(), o); }, "timesteps"); }
  at::Tensor sigmas() { return out([&](sumi_tensor* o) { return vt().sigmas(c_->self(), o); }, "sigmas"); }
  at::Tensor alphas_cumprod() {
    return out([&](sumi_tensor* o) { return vt().alphas_cumprod(c_->self(), o); }, "alphas_cumprod");
  }
  double init_noise_sigma() {
    double v = 0;
    c_->check(vt().init_noise_sigma(c_->self(), &v), "init_noise_sigma");
    return v;
  }
  at::Tensor scale(const at::Tensor& x, int64_t i) {
    Handle hx(x);
    return out([&](sumi_tensor* o) { return vt().scale_model_input(c_->self(), hx.h, i, o); }, "scale_model_input");
  }
  at::Tensor step(const at::Tensor& mo, int64_t i, const at::Tensor& x, const at::Tensor& noise = at::Tensor()) {
    Handle hm(mo), hx(x), hn(noise);
    return out([&](sumi_tensor* o) { return vt().step(c_->self(), hm.h, i, hx.h, hn.h, o); }, "step");
  }
  at::Tensor add_noise(const at::Tensor& x0, const at::Tensor& noise, const at::Tensor& ts) {
    Handle a(x0), b(noise), c(ts);
    return out([&](sumi_tensor* o) { return vt().add_noise(c_->self(), a.h, b.h, c.h, o); }, "add_noise");
  }
  at::Tensor velocity(const at::Tensor& x0, const at::Tensor& noise, const at::Tensor& ts) {
    Handle a(x0), b(noise), c(ts);
    return out([&](sumi_tensor* o) { return vt().velocity(c_->self(), a.h, b.h, c.h, o); }, "velocity");
  }

 private:
  struct Handle {
    explicit Handle(const at::Tensor& t) : h(t.defined() ? host::make_handle(t) : nullptr) {}
    ~Handle() { host::host_api()->tensor_release(h); }
    sumi_tensor h;
  };
  const sumi_noise_scheduler_vtable& vt() const { return c_->vtable<sumi_noise_scheduler_vtable>(); }
  template <class F>
  at::Tensor out(F f, const char* what) {
    sumi_tensor o = nullptr;
    c_->check(f(&o), what);
    at::Tensor t = host::unwrap(o);
    host::host_api()->tensor_release(o);
    return t;
  }
  host::Registry reg_;
  std::unique_ptr<host::Component> c_;
};

inline std::map<std::string, at::Tensor> goldens(const std::string& model) {
  std::map<std::string, at::Tensor> m;
  for (auto& [k, v] : io::load_all(std::string(SUMI_TEST_DATA) + "/fixtures/" + model + ".golden.safetensors"))
    m[k] = v.to(at::kDouble);
  return m;
}

// Largest |a - b| / max(|b|, floor).
inline double max_rel(const at::Tensor& a, const at::Tensor& b, double floor = 1e-30) {
  return ((a.to(at::kDouble) - b.to(at::kDouble)).abs() / b.to(at::kDouble).abs().clamp_min(floor)).max().item<double>();
}
inline double rel_norm(const at::Tensor& a, const at::Tensor& b) {
  return ((a.to(at::kDouble) - b.to(at::kDouble)).norm() / b.to(at::kDouble).norm()).item<double>();
}

}  // namespace sumi::test
