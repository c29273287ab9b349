// What the 8-bit optimizer tests share (test_optim_8bit.cpp, test_optim_8bit_static.cpp): a plugin
// run on arbitrary tensors through the ABI, and bitsandbytes' create_dynamic_map transcribed.
#pragma once

#include "optim_golden_util.h"

#include <ATen/ATen.h>

#include <map>
#include <memory>
#include <string>
#include <vector>

namespace sumi::test::optim8 {

// ---- a plugin run on arbitrary tensors

struct Opt {
  sumi::host::Registry reg;
  std::unique_ptr<sumi::host::Component> opt;
  std::vector<at::Tensor> params;

  Opt(const std::string& name, const std::map<std::string, std::string>& cfg) {
    opt = sumi::test::make(SUMI_KIND_OPTIMIZER, name, reg, cfg, "optimizer");
  }
  // Adds a group; the parameters are fresh leaves copied from `init`.
  void group(const std::string& name, const std::vector<at::Tensor>& init) {
    std::vector<sumi_tensor> hs;
    for (const auto& t : init) {
      params.push_back(t.clone().requires_grad_(true));
      hs.push_back(sumi::host::make_handle(params.back()));
    }
    const sumi_status s = opt->vtable<sumi_optimizer_vtable>().add_param_group(opt->self(), name.c_str(), hs.data(),
                                                                               static_cast<int64_t>(hs.size()));
    for (auto h : hs) sumi::host::host_api()->tensor_release(h);
    opt->check(s, "add_param_group");
  }
  void step(const std::vector<at::Tensor>& grads, const std::vector<double>& lrs) {
    for (size_t i = 0; i < params.size(); ++i) params[i].mutable_grad() = grads[i].clone();
    opt->check(opt->vtable<sumi_optimizer_vtable>().step(opt->self(), lrs.data(), static_cast<int64_t>(lrs.size())), "step");
  }
  at::Tensor state(const std::string& name) const {
    const auto* e = reg.find("optimizer", name);
    REQUIRE_MESSAGE(e != nullptr, "no optimizer state '" << name << "'");
    return e->tensor;
  }
  // Bytes of the registry entries named "<prefix>*".
  int64_t state_bytes(const std::string& prefix) const {
    int64_t n = 0;
    for (const auto& e : reg.entries())
      if (e.name.rfind(prefix, 0) == 0) n += static_cast<int64_t>(e.tensor.nbytes());
    return n;
  }
};

inline std::vector<float> to_vec(const at::Tensor& t) {
  const at::Tensor c = t.detach().to(at::kFloat).contiguous();
  return std::vector<float>(c.data_ptr<float>(), c.data_ptr<float>() + c.numel());
}

// ---- bitsandbytes, transcribed

// functional.create_dynamic_map(signed), run with libtorch (the ATen linspace PyTorch runs).
inline std::vector<float> bnb_dynamic_map(bool is_signed) {
  std::vector<float> data;
  for (int i = 0; i < 7; ++i) {
    const int64_t items = is_signed ? (int64_t{1} << i) + 1 : (int64_t{1} << (i + 1)) + 1;
    const at::Tensor boundaries = at::linspace(0.1, 1, items);
    const at::Tensor means = (boundaries.slice(0, 0, -1) + boundaries.slice(0, 1)) / 2.0;
    for (float v : to_vec(means * std::pow(10.0, -6 + i))) data.push_back(v);
    if (is_signed)
      for (float v : to_vec(means * -std::pow(10.0, -6 + i))) data.push_back(v);
  }
  data.push_back(0.0f);
  data.push_back(1.0f);
  std::sort(data.begin(), data.end());
  return data;
}

}  // namespace sumi::test::optim8
