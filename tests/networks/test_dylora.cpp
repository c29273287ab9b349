// The dylora plugin (kohya's networks/dylora.py): the modules and keys kohya's create_network
// gives, kohya's DyLoRA file (and its extracted rank-4 file) at run time and merged against
// sd-scripts' goldens, the per-forward rank block of training (seeded, gradients only in the
// drawn unit block, kohya's sqrt(rank / (b + unit)) factor), and refusals.
#include <doctest/doctest.h>

#include "networks_test_util.h"

#include "core/host_api.h"
#include "core/tensor_handle.h"

#include <set>

using namespace sumi::test;

namespace {

const std::map<std::string, std::string> kDy = {{"dim", "8"}, {"alpha", "4"}, {"unit", "2"}};

std::map<std::string, std::string> with(std::map<std::string, std::string> c, const std::map<std::string, std::string>& more) {
  for (const auto& [k, v] : more) c[k] = v;
  return c;
}

at::Tensor forward(TestNetwork& n, int64_t index, const at::Tensor& x, const at::Tensor& base) {
  sumi_tensor hx = sumi::host::make_handle(x), hb = sumi::host::make_handle(base), out = nullptr;
  const sumi_status st = n.vt().forward(n.net->self(), index, hx, hb, &out);
  sumi::host::host_api()->tensor_release(hx);
  sumi::host::host_api()->tensor_release(hb);
  n.net->check(st, "forward");
  at::Tensor r = sumi::host::unwrap(out);
  sumi::host::host_api()->tensor_release(out);
  return r;
}

at::Tensor param(const TestNetwork& n, const std::string& name) {
  for (const auto& e : n.registry.entries())
    if (e.component == "network" && e.name == name) return e.tensor;
  throw std::runtime_error("no " + name);
}

// The rows (dim 0) or columns (dim 1) with a non-zero gradient.
std::set<int64_t> live(const at::Tensor& grad, int64_t dim) {
  std::set<int64_t> out;
  const at::Tensor any = grad.abs().sum(1 - dim) > 0;
  for (int64_t i = 0; i < any.size(0); ++i)
    if (any[i].item<bool>()) out.insert(i);
  return out;
}

}  // namespace

TEST_CASE("dylora: the wrapped modules and keys are kohya's (LierLa, C3Lier; SDXL U-Net only)") {
  {
    auto m = load_model("sd1", fixture("tiny-sd1.safetensors"));
    CHECK(registry_keys(*attach_network("dylora", m->modules(), kDy)) == key_list(net_fixture("tiny-sd1.dylora_keys.txt")));
    CHECK(registry_keys(*attach_network("dylora", m->modules(), with(kDy, {{"conv_dim", "8"}, {"conv_alpha", "4"}}))) ==
          key_list(net_fixture("tiny-sd1.dylora_c3lier_keys.txt")));
  }
  {
    // kohya v0.7.0's DyLoRA cannot take SDXL's two text encoders; its lists hold the U-Net rows.
    auto m = load_model("sdxl", fixture("tiny-sdxl.safetensors"));
    const auto unet = with(kDy, {{"train_unet_only", "true"}});
    CHECK(registry_keys(*attach_network("dylora", m->modules(), unet)) == key_list(net_fixture("tiny-sdxl.dylora_keys.txt")));
    CHECK(registry_keys(*attach_network("dylora", m->modules(), with(unet, {{"conv_dim", "8"}}))) ==
          key_list(net_fixture("tiny-sdxl.dylora_c3lier_keys.txt")));
  }
}

TEST_CASE("dylora: kohya's file and its extracted rank-4 file give sd-scripts' goldens, at run time and merged") {
  const auto prompts = golden_prompts();
  const std::string kase = "tiny-sd1.dylora";
  at::NoGradGuard no_grad;
  struct Case {
    std::string file, prefix, dim;
  };
  for (const Case& c : {Case{"tiny-sd1.dylora.safetensors", "", "8"}, Case{"tiny-sd1.dylora-0004.safetensors", "rank4.", "4"}}) {
    CAPTURE(c.file);
    auto m = load_model("sd1", fixture("tiny-sd1.safetensors"));
    auto n = attach_network("dylora", m->modules(), with(kDy, {{"dim", c.dim}}));
    load_network_file(*n, net_fixture(c.file));
    apply(*m, n.get());
    for (const char* mul : {"1.0", "0.5"}) {
      CAPTURE(mul);
      n->net->check(n->vt().set_multiplier(n->net->self(), std::stod(mul)), "set_multiplier");
      const std::string pre = c.prefix + "mul" + mul + ".";
      CHECK(rel_err(m->encode_text(prompts).first, net_golden(kase, pre + "te.last_hidden_state")) < 1e-4);
      for (int t : {1, 500, 999}) {
        CAPTURE(t);
        const std::string key = "unet.out.t" + std::to_string(t);
        CHECK(rel_err(unet_out(*m, kase, t), net_golden(kase, pre + key)) < 1e-4);
        CHECK(rel_err(net_golden(kase, "base." + key), net_golden(kase, pre + key)) > 1e-2);
      }
    }
    auto mm = load_model("sd1", fixture("tiny-sd1.safetensors"));
    auto nm = attach_network("dylora", mm->modules(), with(kDy, {{"dim", c.dim}}));
    load_network_file(*nm, net_fixture(c.file));
    merge(*mm, *nm);
    CHECK(rel_err(mm->encode_text(prompts).first, net_golden(kase, c.prefix + "mul1.0.te.last_hidden_state")) < 1e-4);
    for (int t : {1, 500, 999}) CHECK(rel_err(unet_out(*mm, kase, t), net_golden(kase, c.prefix + "mul1.0.unet.out.t" + std::to_string(t))) < 1e-4);
  }
}

TEST_CASE("dylora: training draws a unit block per forward; only it learns, scaled by sqrt(rank / (b + unit))") {
  sumi_module_info info{};
  info.struct_size = sizeof(info);
  info.name = "lora_unet_down_blocks_0_attentions_0_proj_in";
  info.kind = SUMI_MODULE_LINEAR;
  info.role = SUMI_ROLE_UNET;
  info.in_features = 6;
  info.out_features = 5;
  info.kernel[0] = info.kernel[1] = 1;
  info.stride[0] = info.stride[1] = 1;
  info.in_transformer = 1;
  auto n = attach_network("dylora", {info}, kDy);
  REQUIRE(n->selected[0]);

  at::manual_seed(7);
  const at::Tensor down = at::randn({8, 6}), up = at::randn({5, 8}), x = at::randn({3, 6}), base = at::randn({3, 5});
  {
    const std::string name = info.name;
    std::vector<std::string> keys = {name + ".lora_down.weight", name + ".lora_up.weight", name + ".alpha"};
    std::vector<const char*> ck;
    for (auto& k : keys) ck.push_back(k.c_str());
    std::vector<sumi_tensor> hs = {sumi::host::make_handle(down), sumi::host::make_handle(up), sumi::host::make_handle(at::scalar_tensor(4.0))};
    const sumi_status st = n->vt().load(n->net->self(), ck.data(), hs.data(), 3);
    for (auto h : hs) sumi::host::host_api()->tensor_release(h);
    n->net->check(st, "load");
  }
  const at::Tensor P_down = param(*n, std::string(info.name) + ".lora_down.weight");
  const at::Tensor P_up = param(*n, std::string(info.name) + ".lora_up.weight");
  const at::Tensor full = at::linear(at::linear(x, down), up);

  // Inference: the full rank at the multiplier, as a LoRA.
  n->net->check(n->vt().set_multiplier(n->net->self(), 0.5), "set_multiplier");
  CHECK(at::allclose(forward(*n, 0, x, base), base + full * (0.5 * 4.0 / 8.0), 1e-5, 1e-6));

  n->net->check(n->vt().set_training(n->net->self(), 1), "set_training");
  auto run = [&](int steps) {
    std::vector<int64_t> blocks;
    for (int s = 0; s < steps; ++s) {
      const at::Tensor out = forward(*n, 0, x, base);
      out.sum().backward();
      const auto rows = live(P_down.grad(), 0), cols = live(P_up.grad(), 1);
      REQUIRE(rows.size() == 2);
      const int64_t b = *rows.begin();
      CHECK(b % 2 == 0);
      CHECK(*rows.rbegin() == b + 1);
      CHECK(cols == rows);
      // All ranks compute; the multiplier (0.5) is ignored, as kohya's training forward does.
      CHECK(at::allclose(out.detach(), base + full * (4.0 / 8.0 * std::sqrt(8.0 / static_cast<double>(b + 2))), 1e-5, 1e-6));
      blocks.push_back(b);
      P_down.mutable_grad().zero_();
      P_up.mutable_grad().zero_();
    }
    return blocks;
  };
  at::manual_seed(2024);
  const auto first = run(12);
  at::manual_seed(2024);
  CHECK(run(12) == first);  // the host's seeded generator decides
  CHECK(std::set<int64_t>(first.begin(), first.end()).size() >= 3);
}

TEST_CASE("dylora: refuses what kohya refuses or would ignore, naming the setting") {
  auto m = load_model("sd1", fixture("tiny-sd1.safetensors"));
  const auto mods = m->modules();
  CHECK(error_of([&] { attach_network("dylora", mods, with(kDy, {{"unit", "3"}})); }).find("multiple of unit") != std::string::npos);
  CHECK(error_of([&] { attach_network("dylora", mods, with(kDy, {{"conv_dim", "4"}})); }).find("conv_dim 4 differs from dim 8") !=
        std::string::npos);
  CHECK(error_of([&] { attach_network("dylora", mods, with(kDy, {{"conv_dim", "8"}, {"conv_alpha", "1"}})); }).find("ignores conv_alpha") !=
        std::string::npos);
  CHECK(error_of([&] { attach_network("dylora", mods, with(kDy, {{"dropout", "0.1"}})); }).find("has no parameter 'dropout'") !=
        std::string::npos);
  {
    auto n = attach_network("dylora", mods, with(kDy, {{"dim", "4"}}));
    const std::string e = error_of([&] { load_network_file(*n, net_fixture("tiny-sd1.dylora.safetensors")); });
    CHECK(e.find("[8, 32]") != std::string::npos);
    CHECK(e.find("rank is 8") != std::string::npos);
  }
  {
    auto n = attach_network("dylora", mods, kDy);
    CHECK(error_of([&] { load_network_file(*n, net_fixture("tiny-sd1.oft.safetensors")); }).find("not a kohya LoRA / DyLoRA key") != std::string::npos);
  }
}
