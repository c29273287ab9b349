// kohya's --scale_weight_norms on the lora network (networks/lora.py apply_max_norm_regularization):
// each module's delta up @ down * alpha / dim is scaled to a norm of at most the maximum, norms
// below max / 2 left alone; keys_scaled, the mean and the largest norm after scaling reported.
#include <doctest/doctest.h>

#include "lora_test_util.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>
#include <map>

using sumi::test::attach_lora;
using sumi::test::tiny_sd;

namespace {

// A module's delta written out with einsum (kohya composes a 3x3 down with a 1x1 up by conv2d).
at::Tensor delta(const at::Tensor& up, const at::Tensor& down, double alpha) {
  const double scale = alpha / static_cast<double>(down.size(0));
  if (down.dim() == 2) return at::mm(up, down) * scale;
  return at::einsum("or,rikl->oikl", {up.flatten(1), down}) * scale;
}

std::map<std::string, double> norms(const sumi::host::Registry& reg) {
  std::map<std::string, double> out;
  for (const auto& e : reg.entries()) {
    const std::string sfx = ".lora_down.weight";
    if (e.component != "network" || e.name.size() < sfx.size() || e.name.compare(e.name.size() - sfx.size(), sfx.size(), sfx) != 0)
      continue;
    const std::string mod = e.name.substr(0, e.name.size() - sfx.size());
    const auto* up = reg.find("network", mod + ".lora_up.weight");
    const auto* alpha = reg.find("network", mod + ".alpha");
    REQUIRE(up);
    REQUIRE(alpha);
    out[mod] = delta(up->tensor.detach().to(at::kDouble), e.tensor.detach().to(at::kDouble), alpha->tensor.item<double>()).norm().item<double>();
  }
  return out;
}

}  // namespace

TEST_CASE("lora apply_max_norm: norms clamped to the maximum, keys_scaled and mean / max norm as kohya computes") {
  auto a = attach_lora(tiny_sd("tiny-sd1"), {{"dim", "4"}, {"alpha", "2"}, {"conv_dim", "2"}, {"conv_alpha", "1"}});
  {
    // random ups of varied size, so some deltas are above the maximum, some between max / 2 and
    // max, some below max / 2
    at::NoGradGuard ng;
    at::manual_seed(3);
    int i = 0;
    for (const auto& e : a->registry.entries())
      if (e.component == "network" && e.name.find(".lora_up.weight") != std::string::npos)
        e.tensor.copy_(at::randn(e.tensor.sizes()) * (0.02 * static_cast<double>(1 + (i++ % 7))));
  }
  const auto before = norms(a->registry);
  REQUIRE(before.size() > 50);
  std::vector<double> sorted;
  for (const auto& [k, n] : before) sorted.push_back(n);
  std::sort(sorted.begin(), sorted.end());
  // half the modules are above it; between two norms, so float32 rounding cannot move one across
  const double max_norm = (sorted[sorted.size() / 2] + sorted[sorted.size() / 2 + 1]) / 2;
  REQUIRE(sorted[sorted.size() / 2 + 1] - sorted[sorted.size() / 2] > 1e-6 * max_norm);

  int64_t want_scaled = 0;
  double want_sum = 0, want_max = 0;
  for (const auto& [k, n] : before) {
    const double c = std::max(n, max_norm / 2);
    const double ratio = std::min(c, max_norm) / c;
    if (ratio != 1.0) ++want_scaled;
    want_sum += n * ratio;
    want_max = std::max(want_max, n * ratio);
  }
  CHECK(want_scaled > 10);

  int64_t keys = -1;
  double mean = 0, max = 0;
  a->net->check(a->vt().apply_max_norm(a->net->self(), max_norm, &keys, &mean, &max), "apply_max_norm");
  CHECK(keys == want_scaled);
  CHECK(mean == doctest::Approx(want_sum / static_cast<double>(before.size())).epsilon(1e-5));
  CHECK(max == doctest::Approx(want_max).epsilon(1e-5));

  const auto after = norms(a->registry);
  for (const auto& [k, n] : after) {
    CAPTURE(k);
    CHECK(n <= max_norm * (1 + 1e-5));
    if (before.at(k) <= max_norm) CHECK(n == doctest::Approx(before.at(k)).epsilon(1e-6));  // left alone
    else CHECK(n == doctest::Approx(max_norm).epsilon(1e-5));
  }
  // A maximum of 0 or below is refused.
  CHECK(a->vt().apply_max_norm(a->net->self(), 0.0, &keys, &mean, &max) != SUMI_OK);
}
