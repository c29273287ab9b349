// Helpers of the optimizer golden tests (test_optim_golden.cpp, test_optim_8bit.cpp): the fixture
// problem of tests/data/fixtures/optimizers (three tensors w, b, conv in the groups text_encoder and
// unet), an optimizer plugin run on it step by step, and the README's tolerance checks.
#pragma once

#include <doctest/doctest.h>

#include "core/host_api.h"
#include "core/tensor_handle.h"
#include "sumi/io/safetensors_torch.h"
#include "../common/plugin_test.h"
#include "../common/test_data.h"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <fstream>

namespace sumi::test::optim {

using Json = nlohmann::json;

struct Case {
  std::string file;                          // fixture name, e.g. "Prodigy.warmup"
  std::string plugin;                        // sumi optimizer name
  std::map<std::string, std::string> cfg;    // --optimizer_args as sumi passes them
  std::vector<std::string> scalars;          // group values kept in the registry under the same name
  std::map<std::string, std::string> rename;  // reference state key -> sumi's, where they differ
  bool lr_per_param = false;                  // Adafactor: per-parameter state "lr" = effective.lr_per_param
};

inline const char* const kNames[] = {"w", "b", "conv"};
inline const char* const kGroups[] = {"text_encoder", "text_encoder", "unet"};
inline const int kIndex[] = {0, 1, 0};

struct Golden {
  Json j;
  std::map<std::string, at::Tensor> t;
};

inline Golden load(const std::string& file) {
  Golden g;
  std::ifstream in(sumi::test::fixture("optimizers/" + file + ".json"));
  REQUIRE(in.good());
  in >> g.j;
  for (auto& [k, v] : sumi::io::load_all(sumi::test::fixture("optimizers/" + file + ".safetensors"))) g.t[k] = v;
  return g;
}

inline double tol(const Json& tolerances, const std::string& key, const char* field, double fallback) {
  if (!tolerances.contains(key) || !tolerances[key].contains(field) || tolerances[key][field].is_null()) return fallback;
  return tolerances[key][field].get<double>();
}

// Max-norm relative and floored element-wise checks of the README. `elem_decides` is false where
// the fixture's own perturbation runs saw no spread at all in this category (its elem_rel is then
// only the 1e-5 floor): DAdaptLion's s is a sum of +-dlr terms whose near-cancelling elements
// carry any last-bit difference of d (a BLAS dot in another order moves d by ~1e-8), which the
// perturbations (they never change a sign, so never d) cannot see. There the element-wise result
// is reported as a warning and the max-norm check decides.
inline void check_tensor(const at::Tensor& got, const at::Tensor& ref, double maxnorm_rel, double elem_rel, const std::string& what,
                  bool elem_decides = true) {
  CAPTURE(what);
  REQUIRE(got.sizes() == ref.sizes());
  const at::Tensor g = got.to(at::kDouble), r = ref.to(at::kDouble);
  const double scale = r.abs().max().item<double>();
  const double err = (g - r).abs().max().item<double>();
  CHECK(err <= maxnorm_rel * scale);
  const at::Tensor floor = at::clamp_min(r.abs(), 1e-3 * scale);
  const at::Tensor excess = (g - r).abs() - elem_rel * floor;
  const int64_t worst = excess.flatten().argmax().item<int64_t>();
  CAPTURE(worst);
  CAPTURE(g.flatten()[worst].item<double>());
  CAPTURE(r.flatten()[worst].item<double>());
  CAPTURE(scale);
  if (elem_decides)
    CHECK(excess.max().item<double>() <= 0);
  else
    WARN(excess.max().item<double>() <= 0);
}

struct Run {
  sumi::host::Registry reg;
  std::unique_ptr<sumi::host::Component> opt;
  std::vector<at::Tensor> params;
};

inline std::unique_ptr<Run> start(const Case& c, const Golden& g, const std::map<std::string, at::Tensor>* init = nullptr) {
  auto run = std::make_unique<Run>();
  run->opt = sumi::test::make(SUMI_KIND_OPTIMIZER, c.plugin, run->reg, c.cfg, "optimizer");
  for (const char* n : kNames) {
    const at::Tensor from = init ? init->at(n) : g.t.at(std::string("init.") + n);
    run->params.push_back(from.clone().requires_grad_(true));
  }
  for (const std::string group : {"text_encoder", "unet"}) {
    std::vector<sumi_tensor> hs;
    for (size_t i = 0; i < 3; ++i)
      if (kGroups[i] == group) hs.push_back(sumi::host::make_handle(run->params[i]));
    run->opt->check(run->opt->vtable<sumi_optimizer_vtable>().add_param_group(run->opt->self(), group.c_str(), hs.data(),
                                                                               static_cast<int64_t>(hs.size())),
                    "add_param_group");
    for (auto h : hs) sumi::host::host_api()->tensor_release(h);
  }
  return run;
}

inline void step(Run& run, const Golden& g, int k) {
  for (size_t i = 0; i < 3; ++i)
    run.params[i].mutable_grad() = g.t.at("grad." + std::to_string(k) + "." + kNames[i]).clone();
  std::vector<double> lrs;
  for (const auto& lr : g.j["steps"][k - 1]["lr_used"]) lrs.push_back(lr.is_null() ? 0.0 : lr.get<double>());
  run.opt->check(run.opt->vtable<sumi_optimizer_vtable>().step(run.opt->self(), lrs.data(), static_cast<int64_t>(lrs.size())),
                 "step");
}

inline std::string state_name(size_t i, const std::string& key) {
  return std::string(kGroups[i]) + "." + std::to_string(kIndex[i]) + "." + key;
}

}  // namespace sumi::test::optim
