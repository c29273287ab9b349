// The oft plugin (kohya's networks/oft.py): the modules it wraps on every fixture model and
// target set (the key lists kohya's create_network + apply_to give), kohya-made files applied
// at run time (U-Net output rotated over its channels) and merged (kohya's merge_to: weights
// rotated, biases kept) against sd-scripts' goldens, training gradients, and refusals.
#include <doctest/doctest.h>

#include "networks_test_util.h"

#include "core/tensor_handle.h"

using namespace sumi::test;

namespace {

const std::map<std::string, std::string> kOft = {{"dim", "4"}, {"alpha", "0.001"}};

std::map<std::string, std::string> with(std::map<std::string, std::string> c, const std::map<std::string, std::string>& more) {
  for (const auto& [k, v] : more) c[k] = v;
  return c;
}

std::string model_file(const std::string& model) { return fixture(model + ".safetensors"); }

}  // namespace

TEST_CASE("oft: the wrapped modules are kohya's (attention, enable_conv, enable_all_linear) on every fixture") {
  struct Case {
    std::string model, list;
    std::map<std::string, std::string> args;
  };
  const std::vector<Case> cases = {
      {"tiny-sd1", "oft", {}},
      {"tiny-sd1", "oft_conv", {{"enable_conv", "true"}}},
      {"tiny-sd1", "oft_all", {{"enable_conv", "true"}, {"enable_all_linear", "true"}}},
      {"tiny-sd2v", "oft", {}},
      {"tiny-sdxl", "oft", {}},
      {"tiny-sdxl", "oft_conv", {{"enable_conv", "true"}}},
      {"tiny-sdxl", "oft_all", {{"enable_conv", "true"}, {"enable_all_linear", "true"}}},
  };
  for (const auto& c : cases) {
    CAPTURE(c.model);
    CAPTURE(c.list);
    auto m = load_model(family_of(c.model), model_file(c.model));
    auto n = attach_network("oft", m->modules(), with(kOft, c.args));
    const auto want = key_list(net_fixture(c.model + "." + c.list + "_keys.txt"));
    CHECK(want.size() > 100);
    CHECK(registry_keys(*n) == want);
  }
}

TEST_CASE("oft: kohya's files at run time and merged give sd-scripts' goldens") {
  struct Case {
    std::string kase, model;
    std::map<std::string, std::string> args;
  };
  const std::vector<Case> cases = {
      {"tiny-sd1.oft", "tiny-sd1", {}},
      {"tiny-sd1.oft_conv", "tiny-sd1", {{"enable_conv", "true"}}},
      {"tiny-sd2v.oft", "tiny-sd2v", {}},
      {"tiny-sdxl.oft", "tiny-sdxl", {}},
  };
  at::NoGradGuard no_grad;
  for (const auto& c : cases) {
    CAPTURE(c.kase);
    auto m = load_model(family_of(c.model), model_file(c.model));
    auto n = attach_network("oft", m->modules(), with(kOft, c.args));
    load_network_file(*n, net_fixture(c.kase + ".safetensors"));
    // As generation does: inference mode, where R is computed once per multiplier.
    n->net->check(n->vt().set_training(n->net->self(), 0), "set_training");
    apply(*m, n.get());
    for (const char* mul : {"1.0", "0.5"}) {
      CAPTURE(mul);
      n->net->check(n->vt().set_multiplier(n->net->self(), std::stod(mul)), "set_multiplier");
      for (int t : {1, 500, 999}) {
        CAPTURE(t);
        const std::string key = "unet.out.t" + std::to_string(t);
        const at::Tensor got = unet_out(*m, c.kase, t);
        CHECK(rel_err(got, net_golden(c.kase, std::string("mul") + mul + "." + key)) < 1e-4);
        // The rotation does change the output (by far more than the tolerance).
        CHECK(rel_err(net_golden(c.kase, "base." + key), net_golden(c.kase, std::string("mul") + mul + "." + key)) > 1e-3);
      }
    }
    apply(*m, nullptr);
    CHECK(rel_err(unet_out(*m, c.kase, 500), net_golden(c.kase, "base.unet.out.t500")) < 1e-4);

    for (const char* mul : {"1.0", "0.5"}) {
      CAPTURE(mul);
      auto mm = load_model(family_of(c.model), model_file(c.model));
      auto nm = attach_network("oft", mm->modules(), with(kOft, c.args));
      load_network_file(*nm, net_fixture(c.kase + ".safetensors"));
      nm->net->check(nm->vt().set_multiplier(nm->net->self(), std::stod(mul)), "set_multiplier");
      merge(*mm, *nm);
      for (int t : {1, 500, 999}) {
        CAPTURE(t);
        const std::string key = "unet.out.t" + std::to_string(t);
        CHECK(rel_err(unet_out(*mm, c.kase, t), net_golden(c.kase, std::string("merged.mul") + mul + "." + key)) < 1e-4);
      }
    }
  }
}

TEST_CASE("oft: training gradients reach oft_blocks from zero, and the multiplier 0 is the base model") {
  auto m = load_model("sd1", model_file("tiny-sd1"));
  auto n = attach_network("oft", m->modules(), kOft);
  apply(*m, n.get());
  at::Tensor out = unet_out(*m, "tiny-sd1.oft", 500);
  // Zero blocks are the identity rotation.
  CHECK(rel_err(out.detach(), net_golden("tiny-sd1.oft", "base.unet.out.t500")) < 1e-4);
  REQUIRE(out.requires_grad());
  out.square().mean().backward();
  size_t with_grad = 0, params = 0;
  for (const auto& e : n->registry.entries()) {
    if (!e.trainable) continue;
    ++params;
    const at::Tensor g = e.tensor.grad();
    if (g.defined() && g.abs().sum().item<double>() > 0) ++with_grad;
    if (g.defined()) CHECK(g.isfinite().all().item<bool>());
  }
  CHECK(params == 128);
  CHECK(with_grad > 100);

  at::NoGradGuard no_grad;
  auto m0 = load_model("sd1", model_file("tiny-sd1"));
  auto n0 = attach_network("oft", m0->modules(), kOft);
  load_network_file(*n0, net_fixture("tiny-sd1.oft.safetensors"));
  apply(*m0, n0.get());
  n0->net->check(n0->vt().set_multiplier(n0->net->self(), 0.0), "set_multiplier");
  CHECK(rel_err(unet_out(*m0, "tiny-sd1.oft", 1), net_golden("tiny-sd1.oft", "base.unet.out.t1")) < 1e-4);
}

TEST_CASE("oft: refuses what it cannot do, naming the setting") {
  auto m = load_model("sd1", model_file("tiny-sd1"));
  const auto mods = m->modules();
  // A file made with enable_conv, loaded into the attention-only set (kohya's loader drops 85 modules silently).
  {
    auto n = attach_network("oft", mods, kOft);
    const std::string e = error_of([&] { load_network_file(*n, net_fixture("tiny-sd1.oft_conv.safetensors")); });
    CHECK(e.find("enable_conv") != std::string::npos);
    CHECK(e.find("oft_unet_down_blocks_0_") != std::string::npos);
  }
  // The other way round: wrapped modules the file does not have.
  {
    auto n = attach_network("oft", mods, with(kOft, {{"enable_conv", "true"}}));
    CHECK(error_of([&] { load_network_file(*n, net_fixture("tiny-sd1.oft.safetensors")); }).find("no weights for 85 of the 213") != std::string::npos);
  }
  // The file's number of blocks differs from dim.
  {
    auto n = attach_network("oft", mods, with(kOft, {{"dim", "2"}}));
    const std::string e = error_of([&] { load_network_file(*n, net_fixture("tiny-sd1.oft.safetensors")); });
    CHECK(e.find("[4, 8, 8]") != std::string::npos);
    CHECK(e.find("network_dim") != std::string::npos);
  }
  // A LoRA file is not an OFT file.
  {
    auto n = attach_network("oft", mods, kOft);
    CHECK(error_of([&] { load_network_file(*n, fixture("tiny-sd1.lora.safetensors")); }).find("not a kohya OFT key") != std::string::npos);
  }
  CHECK(error_of([&] { attach_network("oft", mods, with(kOft, {{"dim", "5"}})); }).find("does not divide") != std::string::npos);
  CHECK(error_of([&] { attach_network("oft", mods, with(kOft, {{"train_text_encoder_only", "true"}})); }).find("only the U-Net") !=
        std::string::npos);
  CHECK(error_of([&] { attach_network("oft", mods, with(kOft, {{"alpha", "0"}})); }).find("positive") != std::string::npos);
  // kohya's OFT has no dropout and no conv_dim: the schema refuses them by name.
  CHECK(error_of([&] { attach_network("oft", mods, with(kOft, {{"dropout", "0.1"}})); }).find("has no parameter 'dropout'") !=
        std::string::npos);
  CHECK(error_of([&] { attach_network("oft", mods, with(kOft, {{"conv_dim", "4"}})); }).find("has no parameter 'conv_dim'") !=
        std::string::npos);
}
