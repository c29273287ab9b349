// The ABI 1.3 network contract on the real sd1 model: module records carry the borrowed base
// bias (NULL for layers without one), and a LoRA network reports no bias change and kohya's
// metadata of its configuration.
#include <doctest/doctest.h>

#include "core/tensor_handle.h"
#include "../models/models_test_util.h"

using namespace sumi::test;

TEST_CASE("network contract: sumi_module_info gives the layer's bias, bias_delta of a LoRA is none") {
  auto m = load_model("sd1", fixture("tiny-sd1.safetensors"));
  const auto modules = m->modules();
  int with_bias = 0, without = 0;
  for (const auto& info : modules) {
    REQUIRE(info.struct_size == sizeof(sumi_module_info));
    const std::string name = info.name;
    if (name.find("_attn1_to_q") != std::string::npos) CHECK(info.bias == nullptr);  // diffusers: no bias on q/k/v
    if (!info.bias) {
      ++without;
      continue;
    }
    ++with_bias;
    const at::Tensor& b = sumi::host::unwrap(info.bias);
    CHECK(b.dim() == 1);
    CHECK(b.size(0) == info.out_features);
  }
  CHECK(with_bias > 0);
  CHECK(without > 0);

  auto n = attach_lora(modules, {{"dim", "4"}, {"alpha", "2"}});
  load_network_file(*n, fixture("tiny-sd1.lora.safetensors"));
  const auto& vt = n->vt();
  REQUIRE(SUMI_HAS_FIELD(&vt, sumi_network_vtable, bias_delta));
  for (size_t i = 0; i < modules.size(); ++i) {
    if (!n->selected[i]) continue;
    sumi_tensor d = reinterpret_cast<sumi_tensor>(&n);  // must be overwritten
    n->net->check(vt.bias_delta(n->net->self(), static_cast<int64_t>(i), &d), "bias_delta");
    CHECK(d == nullptr);
  }
}
