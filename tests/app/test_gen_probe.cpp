// sumi generate --network_weights F without --network_module for oft, dylora and LyCORIS files
// (issue 12): the plugin is found by probe from the file's keys and metadata, and takes from the
// file what kohya's create_network_from_weights / LyCORIS's create_lycoris_from_weights take
// (blocks and target set, per-module ranks, algorithm and factor layout). The network so made
// gives exactly the outputs of the plugin named with the training --network_args, and kohya's
// goldens where the file is kohya's.
#include <doctest/doctest.h>

#include "../common/test_data.h"

#include "../common/plugin_test.h"
#include "app/app.h"
#include "app/commands.h"
#include "app/image_io.h"
#include "app/network_settings.h"
#include "app/network_stack.h"
#include "core/op_bridge.h"
#include "core/tensor_handle.h"
#include "sumi/io/safetensors_torch.h"

#include <ATen/Parallel.h>

#include <filesystem>
#include <map>
#include <set>

namespace {

using sumi::test::fixture;
using Args = std::map<std::string, std::string>;

std::map<std::string, at::Tensor> golden(const std::string& name) {
  std::map<std::string, at::Tensor> m;
  for (auto& [k, t] : sumi::io::load_all(fixture("networks/" + name))) m[k] = t.to(at::kFloat);
  return m;
}

double rel(const at::Tensor& got, const at::Tensor& want) { return ((got - want).norm() / want.norm()).item<double>(); }

// tiny-sd1 with one network file applied at run time: `module` named and created from `args` only
// (the user repeating the training --network_args), or with `module` "" the plugin probe chooses,
// configured from the file as sumi generate does.
struct Applied {
  sumi::host::Registry reg;
  std::unique_ptr<sumi::host::Component> model;
  std::unique_ptr<sumi::app::NetworkStack> stack;
  std::string chosen;
  int64_t wrapped = 0;
  Applied(const std::string& file, const std::string& module, const Args& args = {}) {
    at::set_num_threads(2);
    model = sumi::test::make(SUMI_KIND_MODEL, "sd1", reg, {{"dtype", "fp32"}}, "model");
    model->check(model->vtable<sumi_model_vtable>().load(model->self(), fixture("tiny-sd1.safetensors").c_str()), "load");
    const auto f = sumi::app::read_weights_file(file);
    chosen = module.empty() ? sumi::app::find_network_component(sumi::test::plugins(), f) : module;
    auto net = sumi::test::make(SUMI_KIND_NETWORK, chosen, reg, args, "network");
    if (module.empty()) REQUIRE(sumi::app::configure_network_from_file(*net, f));
    auto sel = sumi::app::prepare_network(*model, *net, file, 1.0, false);
    for (auto s : sel) wrapped += s;
    stack = std::make_unique<sumi::app::NetworkStack>(*model);
    stack->add(std::move(net), std::move(sel));
    stack->apply();
  }
  sumi::host::Component& net() { return stack->network(0); }
  at::Tensor unet(const at::Tensor& x, int t, const at::Tensor& ctx) {
    std::vector<sumi_tensor> hs = {sumi::host::make_handle(x), sumi::host::make_handle(at::full({x.size(0)}, static_cast<double>(t))),
                                   sumi::host::make_handle(ctx)};
    sumi_tensor out = nullptr;
    model->check(model->vtable<sumi_model_vtable>().denoise(model->self(), hs[0], hs[1], hs[2], nullptr, nullptr, &out), "denoise");
    at::Tensor r = sumi::host::unwrap(out).clone();
    for (auto h : hs) sumi::host::release_handle(h);
    sumi::host::release_handle(out);
    return r;
  }
  at::Tensor text() {
    const char* prompts[] = {"a photo of a cat", "a red circle"};
    sumi_tensor cond = nullptr;
    model->check(model->vtable<sumi_model_vtable>().encode_text(model->self(), prompts, 2, &cond, nullptr), "encode_text");
    at::Tensor r = sumi::host::unwrap(cond).clone();
    sumi::host::release_handle(cond);
    return r;
  }
};

// The inputs every comparison uses: a kohya golden's U-Net inputs.
struct Inputs {
  at::Tensor x, ctx;
  Inputs() {
    auto g = golden("tiny-sd1.oft.golden.safetensors");
    x = g.at("unet.in.sample");
    ctx = g.at("unet.in.encoder_hidden_states");
  }
};

// A network of `module` with `args` attached to tiny-sd1, every trained tensor drawn at random
// (so the network changes the outputs), saved as the host saves it. Returns the path.
std::string random_network_file(const std::string& module, const Args& args, const std::string& name) {
  sumi::host::Registry reg;
  auto model = sumi::test::make(SUMI_KIND_MODEL, "sd1", reg, {{"dtype", "fp32"}}, "model");
  model->check(model->vtable<sumi_model_vtable>().load(model->self(), fixture("tiny-sd1.safetensors").c_str()), "load");
  auto net = sumi::test::make(SUMI_KIND_NETWORK, module, reg, args, "network");
  sumi::app::prepare_network(*model, *net, "", 1.0, false);
  at::manual_seed(11);
  at::NoGradGuard no_grad;
  sumi::io::NamedTensors saved;
  for (const auto& e : reg.entries()) {
    if (e.component != "network") continue;
    if (e.trainable) e.tensor.copy_(at::randn(e.tensor.sizes()) * 0.2);
    saved.emplace_back(e.name, e.tensor.clone());
  }
  const std::string path = std::string(SUMI_BUILD_DIR) + "/test_gen_probe_" + name + ".safetensors";
  sumi::io::save_tensors(path, saved);
  return path;
}

}  // namespace

TEST_CASE("oft: kohya's files are found by their keys and configured from them (blocks, enable_conv), as the named plugin") {
  const Inputs in;
  for (const auto& [file, args] : {std::pair<std::string, Args>{"tiny-sd1.oft", {{"dim", "4"}, {"alpha", "0.001"}}},
                                   std::pair<std::string, Args>{"tiny-sd1.oft_conv", {{"dim", "4"}, {"alpha", "0.001"}, {"enable_conv", "true"}}}}) {
    CAPTURE(file);
    const std::string path = fixture("networks/" + file + ".safetensors");
    Applied probed(path, ""), named(path, "oft", args);
    CHECK(probed.chosen == "oft");
    CHECK(probed.wrapped == named.wrapped);
    const at::Tensor got = probed.unet(in.x, 500, in.ctx);
    CHECK(at::equal(got, named.unet(in.x, 500, in.ctx)));
    CHECK(rel(got, golden(file + ".golden.safetensors").at("mul1.0.unet.out.t500")) < 1e-4);
  }
  // Without enable_conv the named plugin refuses the conv file; configured from it, nothing to give.
  CHECK_THROWS_WITH(Applied(fixture("networks/tiny-sd1.oft_conv.safetensors"), "oft", {{"dim", "4"}}),
                    doctest::Contains("is not wrapped by this network"));
}

TEST_CASE("dylora: its ss_network_module picks dylora, per-module ranks from the file; without it lora reads the same numbers") {
  const Inputs in;
  const std::string path = fixture("networks/tiny-sd1.dylora.safetensors");
  Applied probed(path, ""), named(path, "dylora", {{"dim", "8"}, {"alpha", "4"}, {"unit", "2"}});
  CHECK(probed.chosen == "dylora");
  CHECK(probed.wrapped == named.wrapped);
  const at::Tensor got = probed.unet(in.x, 500, in.ctx);
  CHECK(at::equal(got, named.unet(in.x, 500, in.ctx)));
  CHECK(at::equal(probed.text(), named.text()));
  CHECK(rel(got, golden("tiny-sd1.dylora.golden.safetensors").at("mul1.0.unet.out.t500")) < 1e-4);
  // The same tensors without metadata are a plain LoRA file: lora reads them, to the same outputs.
  const std::string bare = std::string(SUMI_BUILD_DIR) + "/test_gen_probe_dylora_bare.safetensors";
  sumi::io::save_tensors(bare, sumi::io::load_all(path));
  Applied as_lora(bare, "");
  CHECK(as_lora.chosen == "lora");
  CHECK(rel(as_lora.unet(in.x, 500, in.ctx), got) < 1e-6);
  // A rank that is not a multiple of the unit given is refused naming the module.
  sumi::host::Registry reg;
  auto net = sumi::test::make(SUMI_KIND_NETWORK, "dylora", reg, {{"dim", "6"}, {"unit", "3"}}, "network");
  CHECK_THROWS_WITH(sumi::app::configure_network_from_file(*net, sumi::app::read_weights_file(path)),
                    doctest::Contains("not a multiple of unit 3"));
}

TEST_CASE("lycoris: LoHa / LoKr files are found by their factors and configured from them, as the named plugin") {
  const Inputs in;
  const std::vector<std::pair<std::string, Args>> cases = {
      {"loha", {{"algo", "loha"}, {"dim", "4"}, {"alpha", "2"}, {"conv_dim", "2"}, {"conv_alpha", "1"}}},
      {"loha_tucker", {{"algo", "loha"}, {"dim", "4"}, {"alpha", "2"}, {"conv_dim", "2"}, {"use_tucker", "true"}}},
      {"lokr", {{"algo", "lokr"}, {"dim", "4"}, {"alpha", "2"}, {"conv_dim", "2"}, {"factor", "4"}, {"decompose_both", "true"}}},
      {"lokr_tucker", {{"algo", "lokr"}, {"dim", "2"}, {"alpha", "1"}, {"conv_dim", "2"}, {"use_tucker", "true"}, {"train_unet_only", "true"}}},
  };
  for (const auto& [name, args] : cases) {
    CAPTURE(name);
    const std::string path = random_network_file("lycoris.kohya", args, name);
    Applied probed(path, ""), named(path, "lycoris.kohya", args);
    CHECK(probed.chosen == (name.rfind("loha", 0) == 0 ? "loha" : "lokr"));  // several read it: the first by name
    CHECK(probed.wrapped == named.wrapped);
    CHECK(at::equal(probed.unet(in.x, 500, in.ctx), named.unet(in.x, 500, in.ctx)));
    CHECK(at::equal(probed.text(), named.text()));
    // lycoris.kohya named without any network_args reads it too (the algorithm from the keys).
    sumi::host::Registry reg;
    auto bare = sumi::test::make(SUMI_KIND_NETWORK, "lycoris.kohya", reg, {}, "network");
    CHECK(sumi::app::configure_network_from_file(*bare, sumi::app::read_weights_file(path)));
  }
}

TEST_CASE("lycoris: per-module ranks (modules of different dims in one file) are taken per module") {
  const std::string path = random_network_file("lycoris.kohya", {{"algo", "loha"}, {"dim", "4"}, {"alpha", "2"}}, "loha_ranks");
  // Cut every second module to rank 2 (as a resize would), alpha kept.
  std::map<std::string, at::Tensor> w;
  for (auto& [k, t] : sumi::io::load_all(path)) w[k] = t;
  std::set<std::string> cut;
  int i = 0;
  for (auto& [k, t] : w) {
    const std::string mod = k.substr(0, k.rfind('.'));
    if (k.size() > 9 && k.compare(k.size() - 9, 9, "hada_w1_a") == 0 && (i++ % 2 == 0)) cut.insert(mod);
  }
  sumi::io::NamedTensors out;
  for (auto& [k, t] : w) {
    const std::string mod = k.substr(0, k.rfind('.')), part = k.substr(k.rfind('.') + 1);
    at::Tensor v = t;
    if (cut.count(mod) && (part == "hada_w1_a" || part == "hada_w2_a")) v = t.narrow(1, 0, 2).contiguous();
    if (cut.count(mod) && (part == "hada_w1_b" || part == "hada_w2_b")) v = t.narrow(0, 0, 2).contiguous();
    out.emplace_back(k, v);
    w[k] = v;
  }
  const std::string mixed = std::string(SUMI_BUILD_DIR) + "/test_gen_probe_loha_mixed.safetensors";
  sumi::io::save_tensors(mixed, out);
  Applied p(mixed, "");
  CHECK(p.chosen == "loha");
  const auto mods = sumi::app::model_modules(*p.model);
  at::NoGradGuard no_grad;
  std::set<int64_t> ranks;
  int64_t checked = 0;
  for (size_t m = 0; m < mods.size(); ++m) {
    const std::string name = mods[m].name;
    if (!w.count(name + ".hada_w1_a")) continue;
    const at::Tensor a1 = w.at(name + ".hada_w1_a"), b1 = w.at(name + ".hada_w1_b");
    const at::Tensor a2 = w.at(name + ".hada_w2_a"), b2 = w.at(name + ".hada_w2_b");
    const int64_t r = a1.size(1);
    ranks.insert(r);
    const at::Tensor want = (a1.matmul(b1) * a2.matmul(b2) * (w.at(name + ".alpha").item<double>() / static_cast<double>(r)));
    sumi_tensor d = nullptr;
    auto& net = p.net();
    net.check(net.vtable<sumi_network_vtable>().weight_delta(net.self(), static_cast<int64_t>(m), &d), "weight_delta");
    CAPTURE(name);
    CHECK(rel(sumi::host::unwrap(d).reshape(want.sizes()), want) < 1e-5);
    sumi::host::release_handle(d);
    ++checked;
  }
  CHECK(ranks == std::set<int64_t>{2, 4});
  CHECK(checked == p.wrapped);
}

TEST_CASE("files nobody reads, and files another plugin's configuration cannot take, are refused naming keys") {
  // LoHa and LoKr modules in one file: the LoKr tensors are named as not understood.
  sumi::io::NamedTensors t;
  t.emplace_back("lora_unet_a.hada_w1_a", at::zeros({4, 2}));
  t.emplace_back("lora_unet_a.hada_w1_b", at::zeros({2, 4}));
  t.emplace_back("lora_unet_a.hada_w2_a", at::zeros({4, 2}));
  t.emplace_back("lora_unet_a.hada_w2_b", at::zeros({2, 4}));
  t.emplace_back("lora_unet_b.lokr_w1", at::zeros({2, 2}));
  const std::string path = std::string(SUMI_BUILD_DIR) + "/test_gen_probe_mixed_algos.safetensors";
  sumi::io::save_tensors(path, t);
  const auto f = sumi::app::read_weights_file(path);
  CHECK_THROWS_WITH_AS(sumi::app::find_network_component(sumi::test::plugins(), f), doctest::Contains("lora_unet_b.lokr_w1"),
                       sumi::host::UserError);
  // Named anyway, lycoris says why.
  sumi::host::Registry reg;
  auto net = sumi::test::make(SUMI_KIND_NETWORK, "lycoris.kohya", reg, {}, "network");
  CHECK_THROWS_WITH(sumi::app::configure_network_from_file(*net, f), doctest::Contains("mixes LoHa ('lora_unet_a.hada_w1_a') and LoKr"));
  // A LoKr file given to loha.
  auto loha = sumi::test::make(SUMI_KIND_NETWORK, "loha", reg, {}, "network2");
  sumi::io::NamedTensors k;
  k.emplace_back("lora_unet_b.lokr_w1", at::zeros({2, 2}));
  k.emplace_back("lora_unet_b.lokr_w2", at::zeros({2, 2}));
  const std::string kpath = std::string(SUMI_BUILD_DIR) + "/test_gen_probe_lokr_only.safetensors";
  sumi::io::save_tensors(kpath, k);
  CHECK_THROWS_WITH(sumi::app::configure_network_from_file(*loha, sumi::app::read_weights_file(kpath)),
                    doctest::Contains("the file is LoKr ('lora_unet_b.lokr_w1') but this network is LoHa"));
  // An OFT key of the wrong shape is refused by name.
  sumi::io::NamedTensors o;
  o.emplace_back("oft_unet_x.oft_blocks", at::zeros({4, 2, 3}));
  const std::string opath = std::string(SUMI_BUILD_DIR) + "/test_gen_probe_bad_oft.safetensors";
  sumi::io::save_tensors(opath, o);
  auto oft = sumi::test::make(SUMI_KIND_NETWORK, "oft", reg, {}, "network3");
  CHECK_THROWS_WITH(sumi::app::configure_network_from_file(*oft, sumi::app::read_weights_file(opath)),
                    doctest::Contains("'oft_unet_x.oft_blocks' has shape [4, 2, 3]"));
  CHECK_THROWS_WITH_AS(sumi::app::find_network_component(sumi::test::plugins(), sumi::app::read_weights_file(opath)),
                       doctest::Contains("oft_unet_x.oft_blocks"), sumi::host::UserError);
}

TEST_CASE("sumi generate with an OFT file and no --network_module: the image of the named plugin; the PNG names oft") {
  namespace fs = std::filesystem;
  const fs::path out = fs::path(SUMI_BUILD_DIR) / "test_gen_probe_cli";
  std::vector<at::Tensor> images;
  std::vector<std::string> params;
  for (bool named : {false, true}) {
    fs::remove_all(out);
    std::vector<std::string> args{"--ckpt", fixture("tiny-sd1"), "--plugin-dir", SUMI_PLUGIN_DIR, "--outdir", out.string(), "--W", "64",
                                  "--H", "64", "--steps", "4", "--sampler", "euler", "--seed", "3", "--threads", "2", "--prompt",
                                  "a photo of a cat", "--network_weights", fixture("networks/tiny-sd1.oft_conv.safetensors")};
    if (named) args.insert(args.end(), {"--network_module", "networks.oft", "--network_args", "dim=4;alpha=0.001;enable_conv=true"});
    REQUIRE(sumi::app::cmd_generate(args) == 0);
    std::vector<fs::path> files;
    for (const auto& e : fs::directory_iterator(out)) files.push_back(e.path());
    REQUIRE(files.size() == 1);
    std::map<std::string, std::string> text;
    images.push_back(sumi::app::read_image(files[0].string(), &text).to(at::kInt));
    params.push_back(text["parameters"]);
  }
  CHECK(at::equal(images[0], images[1]));
  CHECK(params[0].find("Networks: \"tiny-sd1.oft_conv (oft)\"") != std::string::npos);
  fs::remove_all(out);
}
