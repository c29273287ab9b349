// The lycoris plugin (LyCORIS LoHa / LoKr as `lycoris.kohya` algo=loha|lokr): the keys and shapes
// of a fresh network on tiny-sd1 (kohya's LoRA module set, LyCORIS's file keys and LoKr
// factorization), dW from the parameters against an independent at:: computation of LyCORIS's
// formulas (linear, 3x3 conv flattened, Tucker), run time = base + op(x, dW), merged = run time on
// the whole model, a saved file reloads to the same outputs, training moves the parameters, and
// refusals.
#include <doctest/doctest.h>

#include "networks_test_util.h"

#include "core/host_api.h"
#include "core/tensor_handle.h"
#include "sumi/io/safetensors_torch.h"

#include <cstdio>
#include <regex>
#include <set>
#include <sstream>

using namespace sumi::test;

namespace {

using Config = std::map<std::string, std::string>;

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

at::Tensor delta(TestNetwork& n, int64_t index) {
  sumi_tensor d = nullptr;
  n.net->check(n.vt().weight_delta(n.net->self(), index, &d), "weight_delta");
  at::Tensor r = sumi::host::unwrap(d).clone();
  sumi::host::host_api()->tensor_release(d);
  return r;
}

void set_multiplier(TestNetwork& n, double m) { n.net->check(n.vt().set_multiplier(n.net->self(), m), "set_multiplier"); }

void load_tensors(TestNetwork& n, const std::map<std::string, at::Tensor>& tensors) {
  std::vector<std::string> keys;
  std::vector<const char*> ck;
  std::vector<sumi_tensor> hs;
  for (const auto& [k, t] : tensors) {
    keys.push_back(k);
    hs.push_back(sumi::host::make_handle(t));
  }
  for (auto& k : keys) ck.push_back(k.c_str());
  const sumi_status st = n.vt().load(n.net->self(), ck.data(), hs.data(), static_cast<int64_t>(hs.size()));
  for (auto h : hs) sumi::host::host_api()->tensor_release(h);
  n.net->check(st, "load");
}

// name -> tensor of the network's registry (parameters and the alpha state).
std::map<std::string, at::Tensor> registry(const TestNetwork& n) {
  std::map<std::string, at::Tensor> out;
  for (const auto& e : n.registry.entries())
    if (e.component == "network") out[e.name] = e.tensor;
  return out;
}

sumi_module_info linear_info(const char* name, int64_t in, int64_t out) {
  sumi_module_info info{};
  info.struct_size = sizeof(info);
  info.name = name;
  info.kind = SUMI_MODULE_LINEAR;
  info.role = SUMI_ROLE_UNET;
  info.in_features = in;
  info.out_features = out;
  info.kernel[0] = info.kernel[1] = 1;
  info.stride[0] = info.stride[1] = 1;
  info.in_transformer = 1;
  return info;
}

// A 3x3 conv of a ResNet block (wrapped only with conv_dim), padding 1.
sumi_module_info conv_info(int64_t in, int64_t out) {
  sumi_module_info info{};
  info.struct_size = sizeof(info);
  info.name = "lora_unet_down_blocks_0_resnets_0_conv1";
  info.kind = SUMI_MODULE_CONV2D;
  info.role = SUMI_ROLE_UNET;
  info.in_features = in;
  info.out_features = out;
  info.kernel[0] = info.kernel[1] = 3;
  info.stride[0] = info.stride[1] = 1;
  info.padding[0] = info.padding[1] = 1;
  return info;
}

// LyCORIS's factorization, written out again for the expected shapes. Its bound on m + n is the
// first split's (1 + d), which no divisor pair exceeds, so m climbs the divisors until m >= n or
// m passes the factor.
std::pair<int64_t, int64_t> split(int64_t d, int64_t f) {
  if (f > 0 && d % f == 0) return {std::min(f, d / f), std::max(f, d / f)};
  if (f < 0) f = d;
  int64_t m = 1, n = d;
  while (m < n) {
    int64_t nm = m + 1;
    while (d % nm) ++nm;
    if (nm > f) break;
    m = nm;
    n = d / nm;
  }
  return {std::min(m, n), std::max(m, n)};
}

std::string row(const std::string& key, const std::vector<int64_t>& shape) {
  std::string s = key + "\t[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]\tF32";
}

// The expected registry rows for every module of a kohya LoRA key list: LoHa / LoKr keys at
// rank `dim` (linear, 1x1) and `conv_dim` (k x k), no Tucker.
std::vector<std::string> expected_keys(const std::string& lora_list, bool lokr, int64_t dim, int64_t conv_dim) {
  std::vector<std::string> out;
  static const std::regex re(R"(^(.*)\.lora_(down|up)\.weight\t\[([0-9, ]*)\])");
  std::map<std::string, std::vector<int64_t>> down, up;
  for (const auto& line : key_list(lora_list)) {
    std::smatch m;
    if (!std::regex_search(line, m, re)) continue;
    std::vector<int64_t> shape;
    std::stringstream ss(m[3].str());
    std::string tok;
    while (std::getline(ss, tok, ',')) shape.push_back(std::stoll(tok));
    (m[2] == "down" ? down : up)[m[1].str()] = shape;
  }
  for (const auto& [mod, d] : down) {
    const int64_t out_dim = up.at(mod)[0], in = d[1];
    const int64_t kk = d.size() == 4 ? d[2] * d[3] : 1;
    const int64_t r = kk > 1 ? conv_dim : dim;
    out.push_back(row(mod + ".alpha", {}));
    if (!lokr) {
      out.push_back(row(mod + ".hada_w1_a", {out_dim, r}));
      out.push_back(row(mod + ".hada_w2_a", {out_dim, r}));
      out.push_back(row(mod + ".hada_w1_b", {r, in * kk}));
      out.push_back(row(mod + ".hada_w2_b", {r, in * kk}));
      continue;
    }
    const auto [in_m, in_n] = split(in, -1);
    const auto [out_l, out_k] = split(out_dim, -1);
    out.push_back(row(mod + ".lokr_w1", {out_l, in_m}));
    if (2 * r >= std::max(out_k, in_n)) {
      out.push_back(row(mod + ".lokr_w2", d.size() == 4 ? std::vector<int64_t>{out_k, in_n, d[2], d[3]} : std::vector<int64_t>{out_k, in_n}));
    } else {
      out.push_back(row(mod + ".lokr_w2_a", {out_k, r}));
      out.push_back(row(mod + ".lokr_w2_b", {r, in_n * kk}));
    }
  }
  std::sort(out.begin(), out.end());
  return out;
}

// The key rows of a `full` preset network without its modules outside kohya's C3Lier set (conv_in,
// conv_out, the time embedding), after checking that those four are there.
std::vector<std::string> without_extra_full_modules(const std::vector<std::string>& rows, bool sgm) {
  const std::vector<std::string> extra = sgm ? std::vector<std::string>{"input_blocks_0_0.", "out_2.", "time_embed_0.", "time_embed_2."}
                                             : std::vector<std::string>{"conv_in.", "conv_out.", "time_embedding_linear_1.", "time_embedding_linear_2."};
  std::vector<std::string> out;
  std::set<std::string> seen;
  for (const auto& r : rows) {
    bool is_extra = false;
    for (const auto& e : extra)
      if (r.rfind("lora_unet_" + e, 0) == 0) {
        is_extra = true;
        seen.insert(e);
      }
    if (!is_extra) out.push_back(r);
  }
  CHECK(seen.size() == extra.size());
  return out;
}

// LyCORIS's Tucker rebuild: W[p, q, ...] = sum_ij t[i, j, ...] wa[i, p] wb[j, q].
at::Tensor tucker(const at::Tensor& t, const at::Tensor& wa, const at::Tensor& wb) { return at::einsum("ijkl,ip,jq->pqkl", {t, wa, wb}).contiguous(); }

}  // namespace

TEST_CASE("lycoris: a fresh LoHa / LoKr on tiny-sd1 has kohya's LoRA modules with LyCORIS's keys and shapes (LierLa, C3Lier)") {
  auto m = load_model("sd1", fixture("tiny-sd1.safetensors"));
  const auto mods = m->modules();
  for (const char* algo : {"loha", "lokr"}) {
    CAPTURE(algo);
    const bool lokr = std::string(algo) == "lokr";
    // preset attn-mlp is kohya's LoRA set (LierLa); full (LyCORIS's default) is C3Lier plus conv_in,
    // conv_out and the time embedding, with conv_dim defaulting to dim.
    CHECK(registry_keys(*attach_network("lycoris.kohya", mods, {{"algo", algo}, {"dim", "4"}, {"preset", "attn-mlp"}})) ==
          expected_keys(net_fixture("tiny-sd1.dylora_keys.txt"), lokr, 4, 0));
    CHECK(without_extra_full_modules(registry_keys(*attach_network("lycoris.kohya", mods, {{"algo", algo}, {"dim", "4"}, {"conv_dim", "2"}})),
                                     false) == expected_keys(net_fixture("tiny-sd1.dylora_c3lier_keys.txt"), lokr, 4, 2));
    CHECK(without_extra_full_modules(registry_keys(*attach_network("lycoris.kohya", mods, {{"algo", algo}, {"dim", "2"}})), false) ==
          expected_keys(net_fixture("tiny-sd1.dylora_c3lier_keys.txt"), lokr, 2, 2));
    // The sumi aliases are the same network.
    CHECK(registry_keys(*attach_network(algo, mods, {{"dim", "4"}, {"preset", "attn-mlp"}})) ==
          expected_keys(net_fixture("tiny-sd1.dylora_keys.txt"), lokr, 4, 0));
    // dW starts at zero, as LyCORIS initialises it.
    auto n = attach_network("lycoris.kohya", mods, {{"algo", algo}, {"dim", "4"}, {"conv_dim", "2"}});
    for (size_t i = 0; i < mods.size(); ++i)
      if (n->selected[i]) CHECK(delta(*n, static_cast<int64_t>(i)).abs().max().item<float>() == 0.0f);
    // ...with the non-zero factors drawn (not left at zero).
    const auto reg = registry(*n);
    for (const char* part : {lokr ? ".lokr_w1" : ".hada_w1_a", lokr ? ".lokr_w2_a" : ".hada_w2_b"}) {
      const std::string key = std::string("lora_te_text_model_encoder_layers_0_mlp_fc1") + part;
      if (reg.count(key)) CHECK(reg.at(key).abs().max().item<float>() > 0);
    }
  }
}

TEST_CASE("lycoris: on tiny-sdxl the modules are kohya's LoRA set with both text encoders (lora_te1_, lora_te2_)") {
  auto m = load_model("sdxl", fixture("tiny-sdxl.safetensors"));
  const auto mods = m->modules();
  CHECK(registry_keys(*attach_network("loha", mods, {{"dim", "4"}, {"preset", "attn-mlp"}})) ==
        expected_keys(fixture("tiny-sdxl.lora_keys.lierla.txt"), false, 4, 0));
  CHECK(without_extra_full_modules(registry_keys(*attach_network("lokr", mods, {{"dim", "4"}, {"conv_dim", "2"}})), true) ==
        expected_keys(fixture("tiny-sdxl.lora_keys.c3lier.txt"), true, 4, 2));
}

TEST_CASE("lycoris: LoKr splits dimensions by LyCORIS's factorization and chooses full or low-rank factors as it does") {
  // Splits as LyCORIS's code computes them. Its docstring's table says 360 -> (8, 45) at -1 and
  // (12, 30) at 16, but the code gives (18, 20) and (15, 24); files follow the code.
  struct Row {
    int64_t dim, factor, m, n;
  };
  const Row table[] = {{128, -1, 8, 16}, {250, -1, 10, 25}, {360, -1, 18, 20}, {1024, -1, 32, 32}, {127, 4, 1, 127}, {128, 4, 4, 32},
                       {250, 8, 5, 50},  {360, 16, 15, 24}, {512, 8, 8, 64},  {1024, 16, 16, 64}};
  for (const Row& r : table) {
    CAPTURE(r.dim);
    CAPTURE(r.factor);
    // out = in = dim; rank 1 keeps w2 low-rank unless n <= 2, so w2_a's rows are the larger half.
    auto n = attach_network("lokr", {linear_info("lora_unet_x_proj_in", r.dim, r.dim)},
                            {{"dim", "1"}, {"factor", std::to_string(r.factor)}});
    const auto reg = registry(*n);
    REQUIRE(reg.count("lora_unet_x_proj_in.lokr_w1"));
    CHECK(reg.at("lora_unet_x_proj_in.lokr_w1").sizes().vec() == std::vector<int64_t>{r.m, r.m});
    REQUIRE(reg.count("lora_unet_x_proj_in.lokr_w2_a"));
    CHECK(reg.at("lora_unet_x_proj_in.lokr_w2_a").size(0) == r.n);
  }
  // w2 is full once dim >= max(out_k, in_n) / 2; decompose_both makes w1 low-rank when
  // dim < max(out_l, in_m) / 2. 360 x 128: (18, 20) x (8, 16).
  auto keys = [](const Config& c) {
    std::vector<std::string> out;
    for (const auto& [k, t] : registry(*attach_network("lokr", {linear_info("lora_unet_x_proj_in", 128, 360)}, c))) {
      std::string s = k.substr(k.find('.') + 1);
      for (auto v : t.sizes()) s += ":" + std::to_string(v);
      out.push_back(s);
    }
    return out;
  };
  CHECK(keys({{"dim", "9"}}) == std::vector<std::string>{"alpha", "lokr_w1:18:8", "lokr_w2_a:20:9", "lokr_w2_b:9:16"});
  CHECK(keys({{"dim", "10"}}) == std::vector<std::string>{"alpha", "lokr_w1:18:8", "lokr_w2:20:16"});
  CHECK(keys({{"dim", "3"}, {"decompose_both", "true"}}) ==
        std::vector<std::string>{"alpha", "lokr_w1_a:18:3", "lokr_w1_b:3:8", "lokr_w2_a:20:3", "lokr_w2_b:3:16"});
  CHECK(keys({{"dim", "9"}, {"decompose_both", "true"}}) == std::vector<std::string>{"alpha", "lokr_w1:18:8", "lokr_w2_a:20:9", "lokr_w2_b:9:16"});
  CHECK(keys({{"dim", "4"}, {"factor", "4"}}) == std::vector<std::string>{"alpha", "lokr_w1:4:4", "lokr_w2_a:90:4", "lokr_w2_b:4:32"});
  // Both factors full: LyCORIS stores alpha = dim (scale 1) whatever alpha was asked.
  auto n = attach_network("lokr", {linear_info("lora_unet_x_proj_in", 128, 360)}, {{"dim", "10"}, {"alpha", "2"}});
  CHECK(registry(*n).at("lora_unet_x_proj_in.alpha").item<float>() == 10.0f);
}

TEST_CASE("lycoris: dW, run time and merge follow LyCORIS's formulas (LoHa, LoKr; linear, 3x3 conv, Tucker)") {
  at::manual_seed(11);
  const double mult = 0.75;
  struct Case {
    std::string what;
    sumi_module_info info;
    Config cfg;
  };
  const Case cases[] = {
      {"loha linear", linear_info("lora_unet_x_proj_in", 12, 10), {{"algo", "loha"}, {"dim", "3"}, {"alpha", "2"}}},
      {"loha conv", conv_info(6, 8), {{"algo", "loha"}, {"conv_dim", "3"}, {"conv_alpha", "1.5"}}},
      {"loha tucker", conv_info(6, 8), {{"algo", "loha"}, {"conv_dim", "3"}, {"conv_alpha", "1.5"}, {"use_tucker", "true"}}},
      {"lokr linear", linear_info("lora_unet_x_proj_in", 64, 90), {{"algo", "lokr"}, {"dim", "2"}, {"alpha", "3"}}},
      {"lokr linear both", linear_info("lora_unet_x_proj_in", 64, 90), {{"algo", "lokr"}, {"dim", "2"}, {"alpha", "3"}, {"decompose_both", "true"}, {"factor", "9"}}},
      {"lokr conv", conv_info(32, 64), {{"algo", "lokr"}, {"conv_dim", "2"}, {"conv_alpha", "1"}}},
      {"lokr conv tucker", conv_info(32, 64), {{"algo", "lokr"}, {"conv_dim", "2"}, {"conv_alpha", "1"}, {"use_tucker", "true"}}},
      {"lokr full w2 conv", conv_info(6, 8), {{"algo", "lokr"}, {"conv_dim", "4"}, {"conv_alpha", "1"}}},
  };
  for (const Case& c : cases) {
    CAPTURE(c.what);
    auto n = attach_network("lycoris.kohya", {c.info}, c.cfg);
    REQUIRE(n->selected[0]);
    // Random factors of the network's shapes, loaded as a file would be.
    std::map<std::string, at::Tensor> file, p;
    double alpha = 0;
    for (const auto& [k, t] : registry(*n)) {
      const std::string part = k.substr(k.find('.') + 1);
      if (part == "alpha") {
        alpha = t.item<double>();
        file[k] = t.clone();
      } else {
        file[k] = at::randn(t.sizes()) * 0.5;
      }
      p[part] = file[k];
    }
    load_tensors(*n, file);
    set_multiplier(*n, mult);
    const bool conv = c.info.kind == SUMI_MODULE_CONV2D;
    const int64_t out = c.info.out_features, in = c.info.in_features;
    const int64_t dim = std::stoll(c.cfg.count("conv_dim") ? c.cfg.at("conv_dim") : c.cfg.at("dim"));
    const std::vector<int64_t> shape = conv ? std::vector<int64_t>{out, in, 3, 3} : std::vector<int64_t>{out, in};
    at::Tensor want;
    if (p.count("hada_t1")) {
      want = tucker(p["hada_t1"], p["hada_w1_a"], p["hada_w1_b"]) * tucker(p["hada_t2"], p["hada_w2_a"], p["hada_w2_b"]);
    } else if (p.count("hada_w1_a")) {
      want = (at::matmul(p["hada_w1_a"], p["hada_w1_b"]) * at::matmul(p["hada_w2_a"], p["hada_w2_b"])).view(shape);
    } else {
      at::Tensor w1 = p.count("lokr_w1") ? p["lokr_w1"] : at::matmul(p["lokr_w1_a"], p["lokr_w1_b"]);
      if (p.count("lokr_t2")) {
        want = at::kron(w1.unsqueeze(2).unsqueeze(2), tucker(p["lokr_t2"], p["lokr_w2_a"], p["lokr_w2_b"]));
      } else if (p.count("lokr_w2")) {
        want = at::kron(conv ? w1.unsqueeze(2).unsqueeze(2) : w1, p["lokr_w2"]);
      } else {
        want = at::kron(w1, at::matmul(p["lokr_w2_a"], p["lokr_w2_b"])).view(shape);
      }
    }
    const bool both_full = p.count("lokr_w1") && p.count("lokr_w2");
    if (both_full) CHECK(alpha == static_cast<double>(dim));
    want = want * (alpha / static_cast<double>(dim)) * mult;
    const at::Tensor got = delta(*n, 0);
    REQUIRE(got.sizes() == want.sizes());
    CHECK(at::allclose(got, want, 1e-4, 1e-5));
    // Run time: base + op(x, dW).
    const at::Tensor x = conv ? at::randn({2, in, 5, 5}) : at::randn({3, in});
    const at::Tensor base = conv ? at::randn({2, out, 5, 5}) : at::randn({3, out});
    const at::Tensor y = forward(*n, 0, x, base);
    const at::Tensor y_want = base + (conv ? at::conv2d(x, want, {}, 1, 1) : at::linear(x, want));
    CHECK(at::allclose(y, y_want, 1e-4, 1e-5));
  }
}

TEST_CASE("lycoris: on tiny-sd1, merged equals run time and a saved file reloads to the same outputs") {
  const auto prompts = golden_prompts();
  const std::string kase = "tiny-sd1.dylora";  // only its inputs are used
  at::NoGradGuard no_grad;
  for (const char* algo : {"loha", "lokr"}) {
    CAPTURE(algo);
    const Config cfg = {{"algo", algo}, {"dim", "4"}, {"alpha", "2"}, {"conv_dim", "2"}};
    auto m = load_model("sd1", fixture("tiny-sd1.safetensors"));
    auto n = attach_network("lycoris.kohya", m->modules(), cfg);
    // Give every factor a value so dW is not zero, then save the network as the host would.
    at::manual_seed(3);
    sumi::io::NamedTensors saved;
    for (const auto& [k, t] : registry(*n)) {
      if (k.find(".alpha") == std::string::npos) t.copy_(at::randn(t.sizes()) * 0.3);
      saved.emplace_back(k, t.clone());
    }
    const std::string path = scratch("lycoris_" + std::string(algo) + "_roundtrip.safetensors");
    sumi::io::save_tensors(path, saved);
    const at::Tensor base_te = m->encode_text(prompts).first;
    const at::Tensor base_unet = unet_out(*m, kase, 500);
    apply(*m, n.get());
    set_multiplier(*n, 0.8);
    const at::Tensor te = m->encode_text(prompts).first, unet = unet_out(*m, kase, 500);
    CHECK(rel_err(te, base_te) > 1e-3);
    CHECK(rel_err(unet, base_unet) > 1e-3);

    // Merged: W += weight_delta, no network at run time.
    auto mm = load_model("sd1", fixture("tiny-sd1.safetensors"));
    auto nm = attach_network("lycoris.kohya", mm->modules(), cfg);
    load_network_file(*nm, path);
    set_multiplier(*nm, 0.8);
    merge(*mm, *nm);
    CHECK(rel_err(mm->encode_text(prompts).first, te) < 1e-4);
    CHECK(rel_err(unet_out(*mm, kase, 500), unet) < 1e-4);

    // Reloaded at run time.
    auto ml = load_model("sd1", fixture("tiny-sd1.safetensors"));
    auto nl = attach_network("lycoris.kohya", ml->modules(), cfg);
    load_network_file(*nl, path);
    set_multiplier(*nl, 0.8);
    apply(*ml, nl.get());
    CHECK(at::equal(ml->encode_text(prompts).first, te));
    CHECK(at::equal(unet_out(*ml, kase, 500), unet));
    // Not training, grad off: dW is cached per multiplier and dropped when it changes.
    nl->net->check(nl->vt().set_training(nl->net->self(), 0), "set_training");
    for (int rep = 0; rep < 2; ++rep) CHECK(at::equal(unet_out(*ml, kase, 500), unet));
    set_multiplier(*nl, 0.0);
    CHECK(rel_err(unet_out(*ml, kase, 500), base_unet) < 1e-6);
    set_multiplier(*nl, 0.8);
    CHECK(at::equal(unet_out(*ml, kase, 500), unet));
    std::remove(path.c_str());
  }
}

TEST_CASE("lycoris: a training step moves the parameters (gradients reach the zero-initialised factor)") {
  for (const char* algo : {"loha", "lokr"}) {
    CAPTURE(algo);
    // 64 x 90: LoKr (8, 8) x (9, 10), rank 2 keeps w2 low-rank.
    auto n = attach_network("lycoris.kohya", {linear_info("lora_unet_x_proj_in", 64, 90)}, {{"algo", algo}, {"dim", "2"}});
    n->net->check(n->vt().set_training(n->net->self(), 1), "set_training");
    at::manual_seed(5);
    const at::Tensor x = at::randn({4, 64}), base = at::randn({4, 90}), target = at::randn({4, 90});
    const at::Tensor out = forward(*n, 0, x, base);
    (out - target).pow(2).mean().backward();
    const std::string zero_part = std::string(algo) == "loha" ? "hada_w2_a" : "lokr_w2_b";
    bool zero_moved = false;
    {
      at::NoGradGuard g;
      for (const auto& [k, t] : registry(*n)) {
        if (!t.requires_grad()) continue;
        REQUIRE(t.grad().defined());
        if (k.find(zero_part) != std::string::npos) zero_moved = t.grad().abs().max().item<float>() > 0;
        t.sub_(t.grad() * 0.1);
      }
    }
    CHECK(zero_moved);
    CHECK(delta(*n, 0).abs().max().item<float>() > 0);
  }
}

TEST_CASE("lycoris: module_dropout and rank_dropout act only while training") {
  auto n = attach_network("loha", {linear_info("lora_unet_x_proj_in", 8, 6)}, {{"dim", "2"}, {"module_dropout", "0.5"}, {"rank_dropout", "0.5"}});
  at::manual_seed(1);
  std::map<std::string, at::Tensor> file;
  for (const auto& [k, t] : registry(*n)) file[k] = k.find(".alpha") != std::string::npos ? t.clone() : at::randn(t.sizes());
  load_tensors(*n, file);
  at::NoGradGuard g;
  const at::Tensor x = at::randn({3, 8}), base = at::zeros({3, 6});
  const at::Tensor full = forward(*n, 0, x, base);
  CHECK(at::equal(forward(*n, 0, x, base), full));
  n->net->check(n->vt().set_training(n->net->self(), 1), "set_training");
  int skipped = 0, partial = 0;
  for (int i = 0; i < 40; ++i) {
    const at::Tensor y = forward(*n, 0, x, base);
    if (y.abs().max().item<float>() == 0) ++skipped;
    else {
      // Each output column (a row of dW) is either kept unscaled or zero.
      const at::Tensor kept = (y - full).abs().amax(0) < 1e-5, zero = y.abs().amax(0) == 0;
      CHECK((kept | zero).all().item<bool>());
      if (zero.any().item<bool>()) ++partial;
    }
  }
  CHECK(skipped > 5);
  CHECK(skipped < 35);
  CHECK(partial > 3);
}

TEST_CASE("lycoris: refuses other algorithms, ignored options and files of another layout, naming them") {
  const auto one = std::vector<sumi_module_info>{linear_info("lora_unet_x_proj_in", 16, 12)};
  auto err = [&](const std::string& net, const Config& c) { return error_of([&] { attach_network(net, one, c); }); };
  CHECK(err("lycoris.kohya", {}).find("no algo given") != std::string::npos);
  for (const char* a : {"locon", "lora", "ia3", "dora", "full", "glora", "diag-oft"}) {
    CAPTURE(a);
    const std::string e = err("lycoris.kohya", {{"algo", a}});
    CHECK(e.find(std::string("algo '") + a + "' is not supported") != std::string::npos);
    CHECK(e.find("algo=loha and algo=lokr") != std::string::npos);
  }
  CHECK(err("lycoris.kohya", {{"algo", "LoHa"}}).empty());  // LyCORIS lower-cases algo
  CHECK(err("loha", {{"algo", "lokr"}}).find("given to the 'loha' network") != std::string::npos);
  CHECK(err("lycoris.kohya", {{"algo", "loha"}, {"dropout", "0.1"}}).find("do not implement it") != std::string::npos);
  CHECK(err("lycoris.kohya", {{"algo", "loha"}, {"factor", "4"}}).find("factor is a LoKr setting") != std::string::npos);
  CHECK(err("lokr", {{"factor", "0"}}).find("factor is 0") != std::string::npos);
  CHECK(err("lokr", {{"use_tucker", "true"}, {"preset", "attn-mlp"}}).find("which preset attn-mlp does not wrap") != std::string::npos);
  for (const char* p : {"ia3", "my_preset.toml", "Full"}) {
    CAPTURE(p);
    const std::string e = err("lokr", {{"preset", p}});
    CHECK(e.find(std::string("preset '") + p + "' is not supported") != std::string::npos);
    CHECK(e.find("full, full-lin, attn-mlp, attn-only, unet-only, unet-transformer-only, unet-convblock-only") != std::string::npos);
  }
  CHECK(err("lokr", {{"rank_dropout", "1"}}).find("rank_dropout is 1") != std::string::npos);
  CHECK(err("lokr", {{"rank_dropout_scale", "true"}}).find("without rank_dropout") != std::string::npos);
  CHECK(err("lokr", {{"weight_decompose", "true"}}).find("has no parameter 'weight_decompose'") != std::string::npos);
  CHECK(err("lokr", {{"train_unet_only", "true"}, {"train_text_encoder_only", "true"}}).find("train nothing") != std::string::npos);

  // Files: a LoKr file into LoHa, a LoRA file, another rank.
  auto loha = attach_network("loha", one, {{"dim", "2"}});
  auto lokr = attach_network("lokr", one, {{"dim", "2"}});
  const auto lokr_file = registry(*lokr);
  std::map<std::string, at::Tensor> copy;
  for (const auto& [k, t] : lokr_file) copy[k] = t.detach().clone();
  CHECK(error_of([&] { load_tensors(*loha, copy); }).find("use algo=lokr") != std::string::npos);
  CHECK(error_of([&] { load_tensors(*loha, {{"lora_unet_x_proj_in.lora_down.weight", at::zeros({2, 16})}}); })
            .find("not a LyCORIS LoHa key") != std::string::npos);
  auto loha4 = attach_network("loha", one, {{"dim", "4"}});
  std::map<std::string, at::Tensor> loha2;
  for (const auto& [k, t] : registry(*loha)) loha2[k] = t.detach().clone();
  const std::string e = error_of([&] { load_tensors(*loha4, loha2); });
  CHECK(e.find("has shape [12, 2] but this network's is [12, 4]") != std::string::npos);
  CHECK(e.find("set dim") != std::string::npos);
  loha2.erase("lora_unet_x_proj_in.hada_w2_b");
  CHECK(error_of([&] { load_tensors(*loha, loha2); }).find("no 'lora_unet_x_proj_in.hada_w2_b'") != std::string::npos);
  CHECK(error_of([&] { load_tensors(*loha, {{"lora_unet_other.hada_w1_a", at::zeros({12, 2})}}); }).find("is not wrapped") != std::string::npos);
}

TEST_CASE("lycoris: LyCORIS's presets choose their module sets (attn-only, unet-transformer-only, unet-convblock-only, full-lin)") {
  auto m = load_model("sd1", fixture("tiny-sd1.safetensors"));
  const auto mods = m->modules();
  auto wrapped = [&](const std::string& preset) {
    auto n = attach_network("loha", mods, {{"dim", "2"}, {"preset", preset}});
    std::vector<const sumi_module_info*> out;
    for (size_t i = 0; i < mods.size(); ++i)
      if (n->selected[i]) out.push_back(&mods[i]);
    return out;
  };
  auto ends = [](const std::string& s, const std::string& e) { return s.size() >= e.size() && s.compare(s.size() - e.size(), e.size(), e) == 0; };
  const auto attn = wrapped("attn-only");
  CHECK(!attn.empty());
  for (const auto* i : attn) {
    const std::string n = i->name;
    CAPTURE(n);
    CHECK((n.find("_self_attn_") != std::string::npos || ends(n, "_to_q") || ends(n, "_to_k") || ends(n, "_to_v") || ends(n, "_to_out_0")));
  }
  for (const auto* i : wrapped("unet-transformer-only")) CHECK((i->role == SUMI_ROLE_UNET && i->in_transformer));
  const auto conv = wrapped("unet-convblock-only");
  std::set<std::string> names;
  for (const auto* i : conv) {
    CHECK((i->role == SUMI_ROLE_UNET && !i->in_transformer));
    names.insert(i->name);
  }
  CHECK(names.count("lora_unet_conv_in"));
  CHECK(names.count("lora_unet_conv_out"));
  CHECK(names.count("lora_unet_down_blocks_0_resnets_0_conv1"));
  CHECK(!names.count("lora_unet_time_embedding_linear_1"));
  // full-lin: no k x k convolution, but the ResNets' time_emb_proj and the time embedding.
  bool temb = false, proj = false;
  for (const auto* i : wrapped("full-lin")) {
    CHECK(!(i->kind == SUMI_MODULE_CONV2D && i->kernel[0] > 1));
    temb |= std::string(i->name) == "lora_unet_time_embedding_linear_1";
    proj |= ends(i->name, "_time_emb_proj");
  }
  CHECK(temb);
  CHECK(proj);
}
