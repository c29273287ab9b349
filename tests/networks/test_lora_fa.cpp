// The lora_fa network plugin (kohya's networks/lora_fa.py) against sd-scripts: the tensors a
// fresh network creates equal kohya's key lists (names, shapes, dtypes), the kohya-made LoRA-FA
// files applied to the real sd1 / sdxl models give the fixtures' goldens at multipliers 1.0 and
// 0.5 (run time and merged), and only lora_up is trained: lora_down is saved state without
// gradients and outside the optimizer's parameter groups.
#include <doctest/doctest.h>

#include <sumi/tensor.hpp>

#include <algorithm>
#include <cmath>
#include <fstream>
#include <functional>

#include "core/host_api.h"
#include "core/tensor_handle.h"
#include "sumi/io/safetensors_torch.h"
#include "../models/models_test_util.h"
#include "sd_model.h"

using namespace sumi::test;

namespace {

std::string shape_text(const at::Tensor& t) {
  std::string s = "[";
  for (int64_t i = 0; i < t.dim(); ++i) s += (i ? ", " : "") + std::to_string(t.size(i));
  return s + "]";
}

std::vector<std::string> registry_keys(const TestNetwork& n) {
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

std::map<std::string, at::Tensor> network_golden(const std::string& name) {
  std::map<std::string, at::Tensor> m;
  for (auto& [k, t] : sumi::io::load_all(fixture("networks/" + name + ".golden.safetensors"), at::kFloat)) m.emplace(k, t);
  return m;
}

bool ends_with(const std::string& s, const std::string& x) {
  return s.size() >= x.size() && s.compare(s.size() - x.size(), x.size(), x) == 0;
}

const std::map<std::string, std::string> kSd1C3lier = {{"dim", "4"}, {"alpha", "2"}, {"conv_dim", "4"}, {"conv_alpha", "1"}};
const std::map<std::string, std::string> kXl = {{"dim", "4"}, {"alpha", "2"}};

void set_multiplier(TestNetwork& n, double m) { n.net->check(n.vt().set_multiplier(n.net->self(), m), "set_multiplier"); }

}  // namespace

TEST_CASE("lora_fa: a fresh network has kohya's tensors for tiny-sd1, tiny-sd2v and tiny-sdxl") {
  for (const std::string model : {"tiny-sd1", "tiny-sd2v", "tiny-sdxl"}) {
    CAPTURE(model);
    auto m = load_model(family_of(model), fixture(model + ".safetensors"));
    const auto modules = m->modules();
    auto lierla = attach_network("lora_fa", modules, {{"dim", "4"}, {"alpha", "2"}});
    const auto got = registry_keys(*lierla);
    if (model != "tiny-sd2v") {
      // The key lists made by networks/lora_fa.py (tiny-sd2v's are in the shared fixtures only;
      // they equal lora's, checked below through the sd1 and sdxl lists).
      if (model == "tiny-sd1") CHECK(got == key_list(fixture("networks/tiny-sd1.lora_fa_keys.txt")));
      else CHECK(got == key_list(fixture("networks/tiny-sdxl.lora_fa_keys.txt")));
    }
    // Same rows as lora's LierLa list (kohya: a LoRA-FA file is a plain LoRA file).
    CHECK(got == key_list(fixture(model + ".lora_keys.lierla.txt")));
    auto c3lier = attach_network("lora_fa", modules, kSd1C3lier);
    if (model == "tiny-sd1") CHECK(registry_keys(*c3lier) == key_list(fixture("networks/tiny-sd1.lora_fa_c3lier_keys.txt")));
    CHECK(registry_keys(*c3lier) == key_list(fixture(model + ".lora_keys.c3lier.txt")));
  }
}

TEST_CASE("lora_fa: lora_down is frozen state at kohya's normal init, lora_up the only trainable parameter") {
  auto m = load_model("sd1", fixture("tiny-sd1.safetensors"));
  const auto modules = m->modules();
  auto n = attach_network("lora_fa", modules, kSd1C3lier);
  size_t downs = 0, ups = 0;
  double z2 = 0;  // sum of (w / std)^2 over every lora_down element
  int64_t count = 0;
  std::map<std::string, const sumi_module_info*> by_name;
  for (const auto& info : modules) by_name[info.name] = &info;
  for (const auto& e : n->registry.entries()) {
    const std::string mod = e.name.substr(0, e.name.find('.'));
    if (ends_with(e.name, ".lora_down.weight")) {
      ++downs;
      CHECK_FALSE(e.trainable);
      CHECK_FALSE(e.tensor.requires_grad());
      const auto* info = by_name.at(mod);
      const int64_t r = e.tensor.size(0);
      const double sd = std::sqrt(2.0 / static_cast<double>(info->in_features + r));  // in_channels, not x 9
      z2 += (e.tensor / sd).square().sum().item<double>();
      count += e.tensor.numel();
    } else if (ends_with(e.name, ".lora_up.weight")) {
      ++ups;
      CHECK(e.trainable);
      CHECK(e.tensor.requires_grad());
      CHECK(e.tensor.abs().max().item<double>() == 0.0);  // zeros: a fresh network is the identity
    } else {
      CHECK(ends_with(e.name, ".alpha"));
      CHECK_FALSE(e.trainable);
    }
  }
  CHECK(downs == 295);
  CHECK(ups == 295);
  // E[(w / std)^2] = 1 for normal(0, std); over ~10^5 draws within a few percent. kaiming_uniform
  // (lora's init) would give 1 / (3 std^2 fan_in), far from 1 for these widths.
  REQUIRE(count > 50000);
  CHECK(std::abs(z2 / static_cast<double>(count) - 1.0) < 0.05);

  // The optimizer's parameter set: the U-Net and text-encoder groups hold exactly the lora_ups.
  size_t in_groups = 0;
  for (const auto& [group, tensors] : n->registry.param_groups("network")) {
    CHECK((group == "unet" || group == "text_encoder"));
    in_groups += tensors.size();
    for (const auto& t : tensors) {
      bool is_up = false;
      for (const auto& e : n->registry.entries())
        if (e.tensor.is_same(t)) is_up = ends_with(e.name, ".lora_up.weight");
      CHECK(is_up);
    }
  }
  CHECK(in_groups == 295);

  // A training step's backward reaches lora_up only (weights from kohya's file, so both sides
  // are non-zero and a gradient to lora_down would exist if it were trainable).
  load_network_file(*n, fixture("networks/tiny-sd1.lora_fa_c3lier.safetensors"));
  n->net->check(n->vt().set_training(n->net->self(), 1), "set_training");
  m->c->check(m->vt().set_network(m->self(), n->net->self(), &n->vt(), n->selected.data()), "set_network");
  const auto g = network_golden("tiny-sd1.lora_fa_c3lier");
  at::Tensor out = m->denoise(g.at("unet.in.sample"), at::full({2}, 500, at::kLong), g.at("unet.in.encoder_hidden_states"));
  REQUIRE(out.requires_grad());
  out.square().mean().backward();
  size_t up_grads = 0;
  for (const auto& e : n->registry.entries()) {
    if (e.name.rfind("lora_unet_", 0) != 0) continue;
    if (ends_with(e.name, ".lora_down.weight")) CHECK_FALSE(e.tensor.grad().defined());
    if (!ends_with(e.name, ".lora_up.weight")) continue;
    if (e.tensor.grad().defined() && e.tensor.grad().abs().sum().item<double>() > 0) ++up_grads;
    // The mid block's latent is 1x1 here: self-attention over one token ignores q and k.
    else CHECK(e.name.rfind("lora_unet_mid_block_attentions_0_transformer_blocks_0_attn1_to_", 0) == 0);
  }
  CHECK(up_grads == 277 - 2);
}

TEST_CASE("lora_fa: kohya's tiny-sd1 C3Lier LoRA-FA file gives sd-scripts' goldens, run time and merged") {
  const auto g = network_golden("tiny-sd1.lora_fa_c3lier");
  const auto prompts = golden_prompts();
  at::NoGradGuard no_grad;
  auto m = load_model("sd1", fixture("tiny-sd1.safetensors"));
  const auto modules = m->modules();
  auto n = attach_network("lora_fa", modules, kSd1C3lier);
  load_network_file(*n, fixture("networks/tiny-sd1.lora_fa_c3lier.safetensors"));
  auto unet = [&](sumi::test::ModelUnderTest& model, int t) {
    return model.denoise(g.at("unet.in.sample"), at::full({2}, t, at::kLong), g.at("unet.in.encoder_hidden_states"));
  };
  m->c->check(m->vt().set_network(m->self(), n->net->self(), &n->vt(), n->selected.data()), "set_network");
  for (const char* mul : {"mul1.0.", "mul0.5."}) {
    CAPTURE(mul);
    set_multiplier(*n, std::string(mul) == "mul1.0." ? 1.0 : 0.5);
    CHECK(rel_err(m->encode_text(prompts).first, g.at(std::string(mul) + "te.last_hidden_state")) < 1e-4);
    for (int t : {1, 500, 999}) {
      CAPTURE(t);
      const std::string ts = std::to_string(t);
      CHECK(rel_err(unet(*m, t), g.at(std::string(mul) + "unet.out.t" + ts)) < 1e-4);
      CHECK(rel_err(g.at("base.unet.out.t" + ts), g.at(std::string(mul) + "unet.out.t" + ts)) > 1e-2);  // the network matters
    }
  }

  // Merged into the weights (the model's in-process merge path, as sumi generate --network_merge).
  set_multiplier(*n, 1.0);
  sumi::detail::g_host = sumi::host::host_api();
  sumi::sd::ModelOptions o;
  o.family = sumi::nn::ModelFamily::sd1;
  sumi::sd::SdModel merged(o);
  merged.load(fixture("tiny-sd1.safetensors"));
  REQUIRE(merged.modules().size() == modules.size());
  merged.merge_network(n->net->self(), &n->vt(), n->selected.data());
  CHECK(rel_err(merged.encode_text(prompts).first, g.at("mul1.0.te.last_hidden_state")) < 1e-4);
  for (int t : {1, 500, 999})
    CHECK(rel_err(merged.denoise(g.at("unet.in.sample"), at::full({2}, t, at::kLong), g.at("unet.in.encoder_hidden_states"), {}, {}),
                  g.at("mul1.0.unet.out.t" + std::to_string(t))) < 1e-4);
}

TEST_CASE("lora_fa: kohya's tiny-sdxl LoRA-FA file gives sd-scripts' goldens (both text encoders and the U-Net)") {
  const auto g = network_golden("tiny-sdxl.lora_fa");
  const auto prompts = golden_prompts();
  at::NoGradGuard no_grad;
  auto m = load_model("sdxl", fixture("tiny-sdxl.safetensors"));
  auto n = attach_network("lora_fa", m->modules(), kXl);
  load_network_file(*n, fixture("networks/tiny-sdxl.lora_fa.safetensors"));
  m->c->check(m->vt().set_network(m->self(), n->net->self(), &n->vt(), n->selected.data()), "set_network");
  for (const char* mul : {"mul1.0.", "mul0.5."}) {
    CAPTURE(mul);
    const std::string p = mul;
    set_multiplier(*n, p == "mul1.0." ? 1.0 : 0.5);
    auto [cond, pooled] = m->encode_text(prompts);
    CHECK(rel_err(cond, at::cat({g.at(p + "te1.penultimate"), g.at(p + "te2.penultimate")}, -1)) < 1e-4);
    REQUIRE(pooled.defined());
    CHECK(rel_err(pooled, g.at(p + "te2.text_embeds")) < 1e-4);
    for (int t : {1, 500, 999}) {
      CAPTURE(t);
      at::Tensor out = m->denoise(g.at("unet.in.sample"), at::full({2}, t, at::kLong), g.at("unet.in.encoder_hidden_states"),
                                  g.at("unet.in.text_embeds"), g.at("unet.in.time_ids"));
      CHECK(rel_err(out, g.at(p + "unet.out.t" + std::to_string(t))) < 1e-4);
    }
  }
}

TEST_CASE("lora_fa: a file with another rank or a foreign key is refused naming the key") {
  auto m = load_model("sd1", fixture("tiny-sd1.safetensors"));
  auto n = attach_network("lora_fa", m->modules(), {{"dim", "8"}, {"alpha", "2"}, {"conv_dim", "4"}});
  try {
    load_network_file(*n, fixture("networks/tiny-sd1.lora_fa_c3lier.safetensors"));
    FAIL("a rank-4 file loaded into a rank-8 network");
  } catch (const std::exception& e) {
    const std::string msg = e.what();
    CHECK(msg.find("lora_fa:") != std::string::npos);
    CHECK(msg.find("lora_down.weight' has shape [4") != std::string::npos);
  }
  // kohya's lora_fa has no network_args beyond lora's: an unknown one fails validation.
  sumi::host::Registry reg;
  CHECK_THROWS(make(SUMI_KIND_NETWORK, "lora_fa", reg, {{"down_lr_weight", "1"}}, "network"));
}
