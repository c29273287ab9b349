// The model's adaptable modules through the real lora plugin: the network that kohya's
// networks/lora.py builds for each fixture (LierLa and C3Lier key lists), and the kohya-made
// tiny-sd1 LoRA applied at run time (set_network) and merged (SdModel::merge_network), both
// against the `lora.*` goldens that sd-scripts computed.
#include <doctest/doctest.h>

#include <sumi/tensor.hpp>

#include <algorithm>
#include <fstream>

#include "core/host_api.h"
#include "core/tensor_handle.h"
#include "sumi/io/safetensors_torch.h"
#include "models_test_util.h"
#include "sd_model.h"

using namespace sumi::test;

namespace {

using Network = TestNetwork;

std::string shape_text(const at::Tensor& t) {
  std::string s = "[";
  for (int64_t i = 0; i < t.dim(); ++i) s += (i ? ", " : "") + std::to_string(t.size(i));
  return s + "]";
}

std::vector<std::string> registry_keys(const Network& n) {
  std::vector<std::string> out;
  for (const auto& e : n.registry.entries())
    if (e.component == "network")
      out.push_back(e.name + "\t" + shape_text(e.tensor) + "\t" + sumi::io::dtype_from_scalar_type(e.tensor.scalar_type()));
  std::sort(out.begin(), out.end());
  return out;
}

std::vector<std::string> key_list(const std::string& path) {
  std::ifstream in(path);
  REQUIRE(in);
  std::vector<std::string> out;
  std::string line;
  while (std::getline(in, line))
    if (!line.empty() && line[0] != '#') out.push_back(line);
  std::sort(out.begin(), out.end());
  return out;
}


}  // namespace

TEST_CASE("models: module lists give kohya's LoRA networks for every fixture and form") {
  for (const std::string model : {"tiny-sd1", "tiny-sd2v", "tiny-sdxl"}) {
    for (const std::string& path : {fixture(model + ".safetensors"), fixture(model)}) {
      CAPTURE(path);
      auto m = load_model(family_of(model), path);
      const auto modules = m->modules();
      for (const auto& info : modules) {
        REQUIRE(info.weight != nullptr);
        const at::Tensor& w = sumi::host::unwrap(info.weight);
        CHECK(w.size(0) == info.out_features);
        if (info.kind == SUMI_MODULE_CONV2D) CHECK(w.size(2) == info.kernel[0]);
      }
      auto lierla = attach_lora(modules, {{"dim", "4"}, {"alpha", "2"}});
      CHECK(registry_keys(*lierla) == key_list(fixture(model + ".lora_keys.lierla.txt")));
      auto c3lier = attach_lora(modules, {{"dim", "4"}, {"alpha", "2"}, {"conv_dim", "4"}, {"conv_alpha", "1"}});
      CHECK(registry_keys(*c3lier) == key_list(fixture(model + ".lora_keys.c3lier.txt")));
    }
  }
}

TEST_CASE("models: downsampler convs carry stride 2 and 3x3 convs padding 1") {
  auto m = load_model("sd1", fixture("tiny-sd1.safetensors"));
  bool seen = false;
  for (const auto& info : m->modules()) {
    const std::string name = info.name;
    if (name == "lora_unet_down_blocks_0_downsamplers_0_conv") {
      seen = true;
      CHECK(info.stride[0] == 2);
      CHECK(info.padding[0] == 1);
      CHECK(info.kind == SUMI_MODULE_CONV2D);
      CHECK_FALSE(info.in_transformer);
    }
    if (name == "lora_unet_down_blocks_0_attentions_0_proj_in") CHECK(info.in_transformer);
    if (name == "lora_te_text_model_encoder_layers_0_self_attn_q_proj") {
      CHECK(info.in_transformer);
      CHECK(info.role == SUMI_ROLE_TEXT_ENCODER);
    }
  }
  CHECK(seen);
}

TEST_CASE("models: the kohya LoRA at run time and merged equals sd-scripts' goldens (tiny-sd1)") {
  const auto prompts = golden_prompts();
  auto g = [](const std::string& k) { return golden("tiny-sd1", k); };
  auto run_unet = [&](const std::function<at::Tensor(const at::Tensor&)>& denoise, const char* prefix) {
    for (int t : {1, 500, 999}) {
      CAPTURE(t);
      CHECK(rel_err(denoise(at::full({2}, t, at::kLong)), g(std::string(prefix) + "unet.out.t" + std::to_string(t))) < 1e-4);
    }
  };
  at::NoGradGuard no_grad;

  auto m = load_model("sd1", fixture("tiny-sd1.safetensors"));
  const auto modules = m->modules();
  auto n = attach_lora(modules, {{"dim", "4"}, {"alpha", "2"}});
  load_network_file(*n, fixture("tiny-sd1.lora.safetensors"));

  SUBCASE("runtime") {
    m->c->check(m->vt().set_network(m->self(), n->net->self(), &n->vt(), n->selected.data()), "set_network");
    CHECK(rel_err(m->encode_text(prompts).first, g("lora.te.last_hidden_state")) < 1e-4);
    run_unet([&](const at::Tensor& ts) { return m->denoise(g("unet.in.sample"), ts, g("unet.in.encoder_hidden_states")); },
             "lora.");
    // Detaching restores the plain model.
    m->c->check(m->vt().set_network(m->self(), nullptr, nullptr, nullptr), "set_network(NULL)");
    CHECK(rel_err(m->encode_text(prompts).first, g("te.last_hidden_state")) < 1e-4);
    run_unet([&](const at::Tensor& ts) { return m->denoise(g("unet.in.sample"), ts, g("unet.in.encoder_hidden_states")); },
             "");
  }

  SUBCASE("merged") {
    // The merge path is C++ API of the model; run it in-process on the same network.
    sumi::detail::g_host = sumi::host::host_api();
    sumi::sd::ModelOptions o;
    o.family = sumi::nn::ModelFamily::sd1;
    sumi::sd::SdModel merged(o);
    merged.load(fixture("tiny-sd1"));
    REQUIRE(merged.modules().size() == modules.size());
    for (size_t i = 0; i < modules.size(); ++i) REQUIRE(std::string(merged.modules()[i].name) == modules[i].name);
    merged.merge_network(n->net->self(), &n->vt(), n->selected.data());
    CHECK(rel_err(merged.encode_text(prompts).first, g("lora.te.last_hidden_state")) < 1e-4);
    run_unet([&](const at::Tensor& ts) { return merged.denoise(g("unet.in.sample"), ts, g("unet.in.encoder_hidden_states"), {}, {}); },
             "lora.");
  }
}

TEST_CASE("models: gradients reach the network's parameters through set_network, not the frozen base") {
  auto g = [](const std::string& k) { return golden("tiny-sd1", k); };
  // Returns each U-Net LoRA parameter's gradient.
  auto grads = [&]() {
    auto m = load_model("sd1", fixture("tiny-sd1.safetensors"));
    const auto modules = m->modules();
    auto n = attach_lora(modules, {{"dim", "4"}, {"alpha", "2"}});
    load_network_file(*n, fixture("tiny-sd1.lora.safetensors"));
    m->c->check(m->vt().set_network(m->self(), n->net->self(), &n->vt(), n->selected.data()), "set_network");
    at::Tensor out = m->denoise(g("unet.in.sample"), at::full({2}, 500, at::kLong), g("unet.in.encoder_hidden_states"));
    REQUIRE(out.requires_grad());
    out.square().mean().backward();
    for (const auto& info : modules) CHECK_FALSE(sumi::host::unwrap(info.weight).requires_grad());
    std::map<std::string, at::Tensor> out_grads;
    for (const auto& e : n->registry.entries())
      if (e.trainable && e.name.rfind("lora_unet_", 0) == 0)
        out_grads[e.name] = e.tensor.grad().defined() ? e.tensor.grad().clone() : at::zeros_like(e.tensor);
    return out_grads;
  };
  const auto plain = grads();
  CHECK(plain.size() == 2 * 192);
  size_t with_grad = 0;
  for (const auto& [name, grad] : plain) {
    if (grad.abs().sum().item<double>() > 0) ++with_grad;
    // The mid block's latent is 1x1 here: self-attention over one token ignores q and k.
    else CHECK(name.rfind("lora_unet_mid_block_attentions_0_transformer_blocks_0_attn1_to_", 0) == 0);
  }
  CHECK(with_grad == plain.size() - 4);
}
