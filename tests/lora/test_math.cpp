// The lora network's numbers: a kohya-made file loaded through load(), merge deltas, the
// runtime forward of Linear / 1x1 / 3x3 / strided layers, the multiplier, kohya's three
// dropouts, gradients, and the errors load() gives for files that do not fit.
#include <doctest/doctest.h>

#include "lora_test_util.h"

#include "core/error.h"
#include "core/host_api.h"
#include "core/tensor_handle.h"
#include "sumi/io/safetensors_torch.h"

#include <algorithm>

using sumi::test::Attached;
using sumi::test::attach_lora;
using sumi::test::fixture;

namespace {

const sumi_host_api& host() { return *sumi::host::host_api(); }

at::Tensor take(sumi_tensor h) {
  at::Tensor t = sumi::host::unwrap(h);
  host().tensor_release(h);
  return t;
}

at::Tensor forward(const Attached& a, size_t idx, const at::Tensor& x, const at::Tensor& base) {
  sumi_tensor hx = sumi::host::make_handle(x), hb = sumi::host::make_handle(base), out = nullptr;
  sumi_status st = a.vt().forward(a.net->self(), static_cast<int64_t>(idx), hx, hb, &out);
  host().tensor_release(hx);
  host().tensor_release(hb);
  a.net->check(st, "forward");
  return take(out);
}

at::Tensor delta(const Attached& a, size_t idx) {
  sumi_tensor out = nullptr;
  a.net->check(a.vt().weight_delta(a.net->self(), static_cast<int64_t>(idx), &out), "weight_delta");
  return take(out);
}

void set_multiplier(const Attached& a, double m) { a.net->check(a.vt().set_multiplier(a.net->self(), m), "set_multiplier"); }
void set_training(const Attached& a, bool t) { a.net->check(a.vt().set_training(a.net->self(), t ? 1 : 0), "set_training"); }

// Calls load; returns "" on success, else the plugin's message.
std::string load(const Attached& a, const sumi::io::NamedTensors& file) {
  std::vector<const char*> names;
  std::vector<sumi_tensor> hs;
  for (const auto& [k, t] : file) {
    names.push_back(k.c_str());
    hs.push_back(sumi::host::make_handle(t));
  }
  sumi_status st = a.vt().load(a.net->self(), names.data(), hs.data(), static_cast<int64_t>(hs.size()));
  for (auto h : hs) host().tensor_release(h);
  return st == SUMI_OK ? std::string() : sumi::host::last_error();
}

const sumi::io::NamedTensors& kohya_file() {
  static const auto f = sumi::io::load_all(fixture("tiny-sd1.lora.safetensors"));
  return f;
}

at::Tensor file_tensor(const std::string& key) {
  for (const auto& [k, t] : kohya_file())
    if (k == key) return t.to(at::kFloat);
  FAIL("no " << key << " in the kohya file");
  return {};
}

// (alpha / rank) * up @ down, written directly over the flattened kernels (no conv tricks).
at::Tensor reference_delta(const at::Tensor& up, const at::Tensor& down, double alpha, at::IntArrayRef base_shape) {
  const int64_t r = down.size(0);
  return (up.reshape({up.size(0), r}).matmul(down.reshape({r, -1})) * (alpha / static_cast<double>(r))).reshape(base_shape);
}

bool close(const at::Tensor& got, const at::Tensor& want, double tol = 1e-5) {
  if (got.sizes() != want.sizes()) return false;
  const double err = (got - want).abs().max().item<double>();
  const double mag = want.abs().max().item<double>();
  return err <= tol * (1.0 + mag);
}

at::Tensor apply(const at::Tensor& x, const at::Tensor& w, const sumi_module_info& m) {
  if (m.kind == SUMI_MODULE_LINEAR) return at::linear(x, w);
  return at::conv2d(x, w, {}, {m.stride[0], m.stride[1]}, {m.padding[0], m.padding[1]});
}

at::Tensor input_for(const sumi_module_info& m) {
  if (m.kind == SUMI_MODULE_LINEAR) return at::randn({2, 7, m.in_features});
  return at::randn({2, m.in_features, 8, 8});
}

std::unique_ptr<Attached> loaded_sd1(std::map<std::string, std::string> cfg = {}) {
  cfg.emplace("dim", "4");
  cfg.emplace("alpha", "2");
  auto a = attach_lora(sumi::test::tiny_sd("tiny-sd1"), cfg);
  REQUIRE(load(*a, kohya_file()) == "");
  return a;
}

const char* const kModules[] = {
    "lora_te_text_model_encoder_layers_0_self_attn_q_proj",                         // Linear
    "lora_te_text_model_encoder_layers_2_mlp_fc2",                                  // Linear 128 -> 32
    "lora_unet_down_blocks_0_attentions_0_proj_in",                                 // Conv 1x1 (SD1)
    "lora_unet_up_blocks_3_attentions_2_transformer_blocks_0_attn2_to_k",           // Linear on the context
    "lora_unet_mid_block_attentions_0_transformer_blocks_0_ff_net_0_proj",          // GEGLU projection
};

}  // namespace

TEST_CASE("lora: a kohya-made file loads; weight_delta is (alpha / rank) up @ down") {
  at::manual_seed(0);
  auto& mods = sumi::test::tiny_sd("tiny-sd1");
  auto a = loaded_sd1();
  for (const std::string name : kModules) {
    CAPTURE(name);
    const size_t i = mods.index(name);
    REQUIRE(a->selected[i]);
    const at::Tensor up = file_tensor(name + ".lora_up.weight"), down = file_tensor(name + ".lora_down.weight");
    const double alpha = file_tensor(name + ".alpha").item<double>();
    CHECK(alpha == 2.0);
    CHECK(at::equal(a->registry.find("network", name + ".lora_down.weight")->tensor.detach(), down));
    CHECK(at::equal(a->registry.find("network", name + ".lora_up.weight")->tensor.detach(), up));
    const at::Tensor want = reference_delta(up, down, alpha, mods.weight(i).sizes());
    CHECK(up.abs().max().item<double>() > 0);
    CHECK(close(delta(*a, i), want));
  }
}

TEST_CASE("lora: forward is base + x applied to the delta, for Linear and 1x1 conv") {
  at::manual_seed(1);
  auto& mods = sumi::test::tiny_sd("tiny-sd1");
  auto a = loaded_sd1();
  for (const std::string name : kModules) {
    CAPTURE(name);
    const size_t i = mods.index(name);
    const auto& info = mods.infos()[i];
    const at::Tensor x = input_for(info), w = mods.weight(i);
    const at::Tensor base = apply(x, w, info);
    const at::Tensor out = forward(*a, i, x, base);
    const at::Tensor d = delta(*a, i);
    CHECK((out - base).abs().max().item<double>() > 0);
    CHECK(close(out, base + apply(x, d, info)));
    CHECK(close(out, apply(x, w + d, info)));  // what a merge gives

    // The multiplier scales both the runtime contribution and the merge delta.
    set_multiplier(*a, -0.5);
    CHECK(close(delta(*a, i), -0.5 * d));
    CHECK(close(forward(*a, i, x, base) - base, -0.5 * (out - base)));
    set_multiplier(*a, 1.0);
  }
}

TEST_CASE("lora: C3Lier 3x3 and strided convolutions") {
  at::manual_seed(2);
  auto& mods = sumi::test::tiny_sd("tiny-sd1");
  auto a = attach_lora(mods, {{"dim", "4"}, {"alpha", "2"}, {"conv_dim", "4"}, {"conv_alpha", "1"}});
  for (const std::string name : {"lora_unet_down_blocks_0_resnets_0_conv1", "lora_unet_down_blocks_0_downsamplers_0_conv",
                                 "lora_unet_up_blocks_1_upsamplers_0_conv", "lora_unet_up_blocks_1_resnets_0_conv_shortcut"}) {
    CAPTURE(name);
    const size_t i = mods.index(name);
    REQUIRE(a->selected[i]);
    const auto& info = mods.infos()[i];
    // lora_up starts at zero; give it values so the delta is not trivially zero.
    const at::Tensor up = a->registry.find("network", name + ".lora_up.weight")->tensor;
    const at::Tensor down = a->registry.find("network", name + ".lora_down.weight")->tensor;
    {
      at::NoGradGuard ng;
      up.copy_(at::randn(up.sizes()));
    }
    const double alpha = a->registry.find("network", name + ".alpha")->tensor.item<double>();
    CHECK(alpha == (info.kernel[0] == 3 ? 1.0 : 2.0));
    const at::Tensor want = reference_delta(up.detach(), down.detach(), alpha, mods.weight(i).sizes());
    const at::Tensor d = delta(*a, i);
    CHECK(close(d, want));
    const at::Tensor x = input_for(info), w = mods.weight(i);
    const at::Tensor base = apply(x, w, info);
    const at::Tensor out = forward(*a, i, x, base);
    CHECK(out.sizes() == base.sizes());
    CHECK(close(out, apply(x, w + d, info)));
  }
}

TEST_CASE("lora: dropouts are identity unless training") {
  at::manual_seed(3);
  auto& mods = sumi::test::tiny_sd("tiny-sd1");
  auto plain = loaded_sd1();
  auto noisy = loaded_sd1({{"dropout", "0.5"}, {"rank_dropout", "0.5"}, {"module_dropout", "0.5"}});
  const size_t i = mods.index(kModules[0]);
  const auto& info = mods.infos()[i];
  const at::Tensor x = input_for(info), base = apply(x, mods.weight(i), info);
  const at::Tensor want = forward(*plain, i, x, base);
  for (int k = 0; k < 5; ++k) CHECK(at::equal(forward(*noisy, i, x, base), want));
  set_training(*plain, true);
  CHECK(at::equal(forward(*plain, i, x, base), want));  // no dropout configured: training changes nothing
  set_training(*noisy, true);
  int differs = 0;
  for (int k = 0; k < 10; ++k) differs += !close(forward(*noisy, i, x, base), want, 1e-6);
  CHECK(differs > 0);
  set_training(*noisy, false);
  CHECK(at::equal(forward(*noisy, i, x, base), want));
}

TEST_CASE("lora: module dropout skips the whole module; neuron dropout rescales survivors") {
  at::manual_seed(4);
  auto& mods = sumi::test::tiny_sd("tiny-sd1");
  const size_t i = mods.index(kModules[0]);
  const auto& info = mods.infos()[i];
  const at::Tensor x = input_for(info), base = apply(x, mods.weight(i), info);

  auto skip = loaded_sd1({{"module_dropout", "1"}});
  set_training(*skip, true);
  CHECK(at::equal(forward(*skip, i, x, base), base));

  // Neuron dropout acts on the rank-space activations: each (token, rank) either vanishes or
  // is doubled (p = 0.5), so the contribution is up @ (2 * keep * (down @ x)) * scale.
  auto drop = loaded_sd1({{"dropout", "0.5"}});
  set_training(*drop, true);
  const at::Tensor got = forward(*drop, i, x, base) - base;
  const at::Tensor up = file_tensor(std::string(kModules[0]) + ".lora_up.weight");
  const at::Tensor down = file_tensor(std::string(kModules[0]) + ".lora_down.weight");
  const at::Tensor lx = at::linear(x, down);  // [2, 7, 4]
  // Solve for the per-(token, rank) factors: got = (lx * f) @ up^T * 0.5; up has full column rank.
  const at::Tensor f = std::get<0>(at::linalg_lstsq(up, (got / 0.5).reshape({-1, up.size(0)}).t())).t().reshape(lx.sizes()) / lx;
  const at::Tensor is0 = f.abs() < 1e-3, is2 = (f - 2).abs() < 1e-3;
  const at::Tensor measurable = lx.abs() > 1e-2;  // f is a ratio; skip activations near zero
  CHECK((is0 | is2 | ~measurable).all().item<bool>());
  CHECK(is0.any().item<bool>());
  CHECK(is2.any().item<bool>());
}

TEST_CASE("lora: rank dropout drops whole ranks per sample and rescales by 1 / (1 - p)") {
  at::manual_seed(5);
  auto& mods = sumi::test::tiny_sd("tiny-sd1");
  auto a = loaded_sd1({{"rank_dropout", "0.25"}});
  set_training(*a, true);
  for (const char* name : {kModules[0], kModules[2]}) {  // 3-D tokens and 4-D feature maps
    CAPTURE(name);
    const size_t i = mods.index(name);
    const auto& info = mods.infos()[i];
    const at::Tensor x = info.kind == SUMI_MODULE_LINEAR ? at::randn({24, 3, info.in_features})
                                                         : at::randn({24, info.in_features, 4, 4});
    const at::Tensor base = apply(x, mods.weight(i), info);
    const at::Tensor got = forward(*a, i, x, base) - base;
    const at::Tensor up = file_tensor(std::string(name) + ".lora_up.weight");
    const at::Tensor down = file_tensor(std::string(name) + ".lora_down.weight");
    const int64_t r = down.size(0);
    int kept_all = 0, dropped_some = 0;
    for (int64_t b = 0; b < x.size(0); ++b) {
      double best = 1e9;
      int best_mask = -1;
      for (int mask = 0; mask < (1 << r); ++mask) {
        std::vector<float> keep(static_cast<size_t>(r));
        for (int64_t k = 0; k < r; ++k) keep[static_cast<size_t>(k)] = (mask >> k) & 1;
        at::Tensor kv = at::tensor(keep);
        at::Tensor dm = down * (info.kind == SUMI_MODULE_LINEAR ? kv.view({r, 1}) : kv.view({r, 1, 1, 1}));
        at::Tensor xb = x.narrow(0, b, 1);
        at::Tensor lx = apply(xb, dm, info);
        at::Tensor want = (info.kind == SUMI_MODULE_LINEAR ? at::linear(lx, up) : at::conv2d(lx, up)) * (0.5 / 0.75);
        best = std::min(best, (got.narrow(0, b, 1) - want).abs().max().item<double>());
        if (best < 1e-5 && best_mask < 0) best_mask = mask;
      }
      CHECK(best < 1e-5);
      kept_all += best_mask == (1 << r) - 1;
      dropped_some += best_mask >= 0 && best_mask != (1 << r) - 1;
    }
    CHECK(kept_all > 0);
    CHECK(dropped_some > 0);
  }
}

TEST_CASE("lora: gradients reach lora_down and lora_up") {
  at::manual_seed(6);
  auto& mods = sumi::test::tiny_sd("tiny-sd1");
  auto a = loaded_sd1();
  set_training(*a, true);
  const size_t i = mods.index(kModules[2]);
  const auto& info = mods.infos()[i];
  const at::Tensor x = input_for(info), base = apply(x, mods.weight(i), info);
  forward(*a, i, x, base).square().sum().backward();
  const std::string name = kModules[2];
  const at::Tensor gd = a->registry.find("network", name + ".lora_down.weight")->tensor.grad();
  const at::Tensor gu = a->registry.find("network", name + ".lora_up.weight")->tensor.grad();
  REQUIRE(gd.defined());
  REQUIRE(gu.defined());
  CHECK(gd.abs().max().item<double>() > 0);
  CHECK(gu.abs().max().item<double>() > 0);
}

TEST_CASE("lora: alpha in the file sets the scale; a missing alpha means alpha = rank") {
  auto& mods = sumi::test::tiny_sd("tiny-sd1");
  const std::string q = kModules[0];
  auto file = kohya_file();
  for (auto& [k, t] : file)
    if (k == q + ".alpha") t = at::scalar_tensor(1.0, at::kFloat);
  auto a = attach_lora(mods, {{"dim", "4"}, {"alpha", "2"}});
  REQUIRE(load(*a, file) == "");
  const size_t i = mods.index(q);
  const at::Tensor up = file_tensor(q + ".lora_up.weight"), down = file_tensor(q + ".lora_down.weight");
  CHECK(close(delta(*a, i), up.matmul(down) * 0.25));
  CHECK(a->registry.find("network", q + ".alpha")->tensor.item<double>() == 1.0);

  file.erase(std::remove_if(file.begin(), file.end(), [&](auto& kv) { return kv.first == q + ".alpha"; }), file.end());
  REQUIRE(load(*a, file) == "");
  CHECK(close(delta(*a, i), up.matmul(down)));
  CHECK(a->registry.find("network", q + ".alpha")->tensor.item<double>() == 4.0);
}

TEST_CASE("lora: load rejects files that do not fit, naming the key") {
  auto& mods = sumi::test::tiny_sd("tiny-sd1");
  auto a = attach_lora(mods, {{"dim", "4"}, {"alpha", "2"}});

  auto extra = kohya_file();
  extra.emplace_back("lora_unet_no_such_module.lora_down.weight", at::zeros({4, 32}));
  auto msg = load(*a, extra);
  CHECK(msg.find("'lora_unet_no_such_module.lora_down.weight'") != std::string::npos);
  CHECK(msg.find("does not wrap") != std::string::npos);

  auto other = kohya_file();
  other.emplace_back("lora_unet_down_blocks_0_attentions_0_proj_in.hada_w1_a", at::zeros({4, 32}));
  CHECK(load(*a, other).find("not a kohya LoRA key") != std::string::npos);

  auto no_up = kohya_file();
  no_up.erase(std::remove_if(no_up.begin(), no_up.end(),
                             [](auto& kv) { return kv.first == std::string(kModules[1]) + ".lora_up.weight"; }),
              no_up.end());
  msg = load(*a, no_up);
  CHECK(msg.find("no lora_up") != std::string::npos);
  CHECK(msg.find(kModules[1]) != std::string::npos);

  auto unet_only = kohya_file();
  unet_only.erase(std::remove_if(unet_only.begin(), unet_only.end(), [](auto& kv) { return kv.first.rfind("lora_te_", 0) == 0; }),
                  unet_only.end());
  msg = load(*a, unet_only);
  CHECK(msg.find("no weights for 18 of the 210") != std::string::npos);
  CHECK(msg.find("train_unet_only") != std::string::npos);
  auto u = attach_lora(mods, {{"dim", "4"}, {"alpha", "2"}, {"train_unet_only", "true"}});
  CHECK(load(*u, unet_only) == "");

  auto wide = attach_lora(mods, {{"dim", "8"}});
  msg = load(*wide, kohya_file());
  CHECK(msg.find("has shape [4, ") != std::string::npos);
  CHECK(msg.find("this network's is [8, ") != std::string::npos);
  CHECK(msg.find("lora_down.weight") != std::string::npos);

  // A module the network did not wrap has no runtime path.
  sumi_tensor out = nullptr;
  const size_t conv_in = mods.index("lora_unet_conv_in");
  CHECK(a->vt().weight_delta(a->net->self(), static_cast<int64_t>(conv_in), &out) == SUMI_ERR_NOT_FOUND);
  CHECK(sumi::host::last_error().find("not wrapped") != std::string::npos);
}
