// Several networks on one model (gen_img's --network_module lists) on tiny-sd1 with the kohya
// LoRA fixture: merging into the weights gives sd-scripts' merged UNet outputs (the `lora.*`
// goldens) and the image of runtime application; two networks at once are the sum of their
// deltas (the fixture twice at 0.5 + 0.5 equals it once at 1, merged or not), also from the CLI;
// without --network_module the plugin is chosen by the file's keys and takes its ranks and
// coverage from the file (per module).
#include <doctest/doctest.h>

#include "../common/test_data.h"

#include "../common/plugin_test.h"
#include "app/app.h"
#include "app/commands.h"
#include "app/image_io.h"
#include "app/generation.h"
#include "app/network_settings.h"
#include "app/network_stack.h"
#include "core/op_bridge.h"
#include "core/tensor_handle.h"
#include "sumi/io/safetensors_torch.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <sstream>
#include <set>

namespace {

using sumi::test::fixture;

// A model with `muls.size()` copies of the fixture LoRA, merged or applied at runtime.
struct Rig {
  sumi::host::Registry reg;
  std::unique_ptr<sumi::host::Component> model;
  std::unique_ptr<sumi::app::NetworkStack> stack;
  Rig(const std::vector<double>& muls, bool merge) {
    at::set_num_threads(2);
    model = sumi::test::make(SUMI_KIND_MODEL, "sd1", reg, {{"dtype", "fp32"}}, "model");
    model->check(model->vtable<sumi_model_vtable>().load(model->self(), fixture("tiny-sd1.safetensors").c_str()), "load");
    stack = std::make_unique<sumi::app::NetworkStack>(*model);
    for (size_t i = 0; i < muls.size(); ++i) {
      auto net = sumi::test::make(SUMI_KIND_NETWORK, "lora", reg, {{"dim", "4"}}, "network" + std::to_string(i));
      auto sel = sumi::app::prepare_network(*model, *net, fixture("tiny-sd1.lora.safetensors"), muls[i], false);
      stack->add(std::move(net), std::move(sel));
    }
    if (merge) stack->merge();
    else stack->apply();
  }
  at::Tensor unet(const at::Tensor& x, double t, const at::Tensor& ctx) {
    std::vector<sumi_tensor> hs = {sumi::host::make_handle(x), sumi::host::make_handle(at::full({x.size(0)}, t)),
                                   sumi::host::make_handle(ctx)};
    sumi_tensor out = nullptr;
    model->check(model->vtable<sumi_model_vtable>().denoise(model->self(), hs[0], hs[1], hs[2], nullptr, nullptr, &out),
                 "denoise");
    at::Tensor r = sumi::host::unwrap(out).clone();
    for (auto h : hs) sumi::host::release_handle(h);
    sumi::host::release_handle(out);
    return r;
  }
  sumi::app::ImageResult image() {
    auto ref = sumi::test::plugins().find(SUMI_KIND_NOISE_SCHEDULER, "euler");
    sumi::host::Component sched(ref, "sched", reg,
                                sumi::host::make_config(*ref.component, sumi::app::scheduler_config_of(*model, *ref.component)));
    sumi::app::Generator gen(*model, sched);
    sumi::app::ImageRequest r;
    r.prompt = "a photo of a cat";
    r.width = r.height = 64;
    r.steps = 6;
    r.seed = 3;
    return gen.run(r, false);
  }
};

std::map<std::string, at::Tensor> goldens() {
  std::map<std::string, at::Tensor> m;
  for (auto& [k, t] : sumi::io::load_all(fixture("tiny-sd1.golden.safetensors"))) m[k] = t.to(at::kFloat);
  return m;
}

double rel(const at::Tensor& got, const at::Tensor& want) { return ((got - want).norm() / want.norm()).item<double>(); }
double max_diff(const at::Tensor& a, const at::Tensor& b) { return (a - b).abs().max().item<double>(); }

}  // namespace

TEST_CASE("--network_merge equals sd-scripts' merged model and runtime application") {
  const auto g = goldens();
  Rig merged({1.0}, true), runtime({1.0}, false), plain({}, false);
  for (const char* t : {"1", "500", "999"}) {
    CAPTURE(t);
    const at::Tensor want = g.at(std::string("lora.unet.out.t") + t);
    const at::Tensor x = g.at("unet.in.sample"), ctx = g.at("unet.in.encoder_hidden_states");
    const double ts = std::stod(t);
    CHECK(rel(merged.unet(x, ts, ctx), want) < 1e-4);
    CHECK(rel(runtime.unet(x, ts, ctx), want) < 1e-4);
    CHECK(rel(plain.unet(x, ts, ctx), want) > 1e-3);  // the LoRA does change the output
  }
  const auto a = merged.image(), b = runtime.image();
  // Latents to float rounding (the sum W + delta rounds once instead of at every forward, and
  // the random tiny UNet amplifies the last bits over the steps); the decoded image within 1e-4.
  CHECK(rel(a.latents, b.latents) < 1e-4);
  CHECK(max_diff(a.image, b.image) < 1e-4);
  CHECK(max_diff(a.latents, plain.image().latents) > 1e-3);
}

TEST_CASE("two networks at once are the sum of their deltas, merged or at runtime") {
  const auto one = Rig({1.0}, false).image();
  const auto two_runtime = Rig({0.5, 0.5}, false).image();
  const auto two_merged = Rig({0.5, 0.5}, true).image();
  CHECK(rel(two_runtime.latents, one.latents) < 1e-4);
  CHECK(max_diff(two_runtime.image, one.image) < 1e-4);
  CHECK(rel(two_merged.latents, one.latents) < 1e-4);
  CHECK(max_diff(two_merged.image, one.image) < 1e-4);
  // Different multipliers per network: 1 + (-1) cancels out to the plain model.
  const auto cancel = Rig({1.0, -1.0}, false).image(), plain = Rig({}, false).image();
  CHECK(rel(cancel.latents, plain.latents) < 1e-4);
  CHECK(max_diff(cancel.image, plain.image) < 1e-4);
}

TEST_CASE("set_multipliers changes runtime networks between batches") {
  Rig rig({1.0, 1.0}, false);
  rig.stack->set_multipliers({0.5, 0.5});
  const auto half_half = rig.image();
  CHECK(rel(half_half.latents, Rig({1.0}, false).image().latents) < 1e-4);
  Rig merged({1.0}, true);
  CHECK_THROWS_AS(merged.stack->set_multipliers({0.5}), sumi::host::UserError);
}

namespace {

// A model plus the network chosen for `file` by probe and configured from it, as sumi generate
// does without --network_module.
struct Probed {
  sumi::host::Registry reg;
  std::unique_ptr<sumi::host::Component> model, net;
  std::string chosen;
  std::vector<int32_t> selected;
  explicit Probed(const std::string& file) {
    at::set_num_threads(2);
    model = sumi::test::make(SUMI_KIND_MODEL, "sd1", reg, {{"dtype", "fp32"}}, "model");
    model->check(model->vtable<sumi_model_vtable>().load(model->self(), fixture("tiny-sd1.safetensors").c_str()), "load");
    const auto f = sumi::app::read_weights_file(file);
    chosen = sumi::app::find_network_component(sumi::test::plugins(), f);
    net = sumi::test::make(SUMI_KIND_NETWORK, chosen, reg, {}, "network");
    REQUIRE(sumi::app::configure_network_from_file(*net, f));
    selected = sumi::app::prepare_network(*model, *net, file, 1.0, false);
  }
  int64_t count() const {
    int64_t n = 0;
    for (auto s : selected) n += s;
    return n;
  }
};

}  // namespace

TEST_CASE("without --network_module the file's keys choose the plugin, which takes ranks and coverage from it") {
  SUBCASE("the kohya LoRA: lora, rank 4, LierLa's 210 modules") {
    Probed p(fixture("tiny-sd1.lora.safetensors"));
    CHECK(p.chosen == "lora");
    CHECK(p.count() == 210);
  }
  SUBCASE("a LoRA-FA file (lora and lora_fa both read it; its ss_network_module picks lora_fa) gives kohya's outputs") {
    Probed p(fixture("networks/tiny-sd1.lora_fa_c3lier.safetensors"));
    CHECK(p.chosen == "lora_fa");
    CHECK(p.count() == 295);  // C3Lier: 18 text + 277 U-Net, conv_dim from the file's 3x3 tensors
    sumi::app::NetworkStack stack(*p.model);
    stack.add(std::move(p.net), std::move(p.selected));
    stack.apply();
    std::map<std::string, at::Tensor> g;
    for (auto& [k, t] : sumi::io::load_all(fixture("networks/tiny-sd1.lora_fa_c3lier.golden.safetensors"))) g[k] = t.to(at::kFloat);
    for (int t : {1, 500, 999}) {
      std::vector<sumi_tensor> hs = {sumi::host::make_handle(g.at("unet.in.sample")),
                                     sumi::host::make_handle(at::full({2}, static_cast<double>(t))),
                                     sumi::host::make_handle(g.at("unet.in.encoder_hidden_states"))};
      sumi_tensor out = nullptr;
      p.model->check(p.model->vtable<sumi_model_vtable>().denoise(p.model->self(), hs[0], hs[1], hs[2], nullptr, nullptr, &out),
                     "denoise");
      CHECK(rel(sumi::host::unwrap(out), g.at("mul1.0.unet.out.t" + std::to_string(t))) < 1e-4);
      for (auto h : hs) sumi::host::release_handle(h);
      sumi::host::release_handle(out);
    }
  }
  SUBCASE("resize_lora --dynamic_method output: per-module ranks 2, 3 and 4, each merged as kohya (alpha / its rank)") {
    const std::string file = fixture("tools/tiny-sd1.lora2.resize-sv_ratio2.safetensors");
    Probed p(file);
    CHECK(p.chosen == "lora");
    CHECK(p.count() == 295);
    std::map<std::string, at::Tensor> w;
    for (auto& [k, t] : sumi::io::load_all(file)) w[k] = t.to(at::kFloat);
    const auto mods = sumi::app::model_modules(*p.model);
    std::set<int64_t> ranks;
    at::NoGradGuard no_grad;
    for (size_t i = 0; i < mods.size(); ++i) {
      if (!p.selected[i]) continue;
      const std::string m = mods[i].name;
      const at::Tensor down = w.at(m + ".lora_down.weight"), up = w.at(m + ".lora_up.weight");
      const int64_t r = down.size(0);
      ranks.insert(r);
      const double scale = w.at(m + ".alpha").item<double>() / static_cast<double>(r);
      at::Tensor want = down.dim() == 2 ? up.matmul(down)
                        : down.size(2) == 1 ? up.flatten(1).matmul(down.flatten(1)).view({up.size(0), down.size(1), 1, 1})
                                            : at::conv2d(down.permute({1, 0, 2, 3}), up).permute({1, 0, 2, 3});
      sumi_tensor d = nullptr;
      p.net->check(p.net->vtable<sumi_network_vtable>().weight_delta(p.net->self(), static_cast<int64_t>(i), &d), "weight_delta");
      CAPTURE(m);
      CHECK(rel(sumi::host::unwrap(d), want * scale) < 1e-5);
      sumi::host::release_handle(d);
    }
    CHECK(ranks == std::set<int64_t>{2, 3, 4});
  }
  SUBCASE("a file covering only the U-Net, cut to rank 2: U-Net modules only") {
    sumi::io::NamedTensors cut;
    for (auto& [k, t] : sumi::io::load_all(fixture("tiny-sd1.lora.safetensors"))) {
      if (k.rfind("lora_unet_", 0) != 0) continue;
      const bool down = k.find(".lora_down.") != std::string::npos, up = k.find(".lora_up.") != std::string::npos;
      cut.emplace_back(k, down ? t.narrow(0, 0, 2).contiguous() : up ? t.narrow(1, 0, 2).contiguous() : t);
    }
    const std::string path = std::string(SUMI_BUILD_DIR) + "/test_gen_networks_rank2.safetensors";
    sumi::io::save_tensors(path, cut);
    Probed p(path);
    CHECK(p.count() == 192);  // the fixture's U-Net modules
  }
}

TEST_CASE("a file no network plugin reads is refused naming the tensors not understood") {
  sumi::io::NamedTensors t;
  t.emplace_back("lora_unet_x.lora_down.weight", at::zeros({2, 4}));
  t.emplace_back("lora_unet_x.lora_up.weight", at::zeros({4, 2}));
  t.emplace_back("lora_unet_x.hada_w1_a", at::zeros({4, 2}));
  const std::string path = std::string(SUMI_BUILD_DIR) + "/test_gen_networks_loha.safetensors";
  sumi::io::save_tensors(path, t);
  const auto f = sumi::app::read_weights_file(path);
  CHECK_THROWS_WITH_AS(sumi::app::find_network_component(sumi::test::plugins(), f),
                       doctest::Contains("1 of its 3 tensors are understood by none"), sumi::host::UserError);
  CHECK_THROWS_WITH_AS(sumi::app::find_network_component(sumi::test::plugins(), f), doctest::Contains("lora_unet_x.hada_w1_a"),
                       sumi::host::UserError);
  CHECK_THROWS_WITH_AS(sumi::app::read_weights_file(fixture("tiny-sd1.yaml")), doctest::Contains("only .safetensors"),
                       sumi::host::UserError);
}

TEST_CASE("sumi generate: two LoRAs at 0.5 merged from the command line == one at 1 at runtime") {
  namespace fs = std::filesystem;
  const fs::path out = fs::path(SUMI_BUILD_DIR) / "test_gen_networks_cli";
  fs::remove_all(out);
  const std::string lora = fixture("tiny-sd1.lora.safetensors");
  // The ranks come from the file (no --network_args), as gen_img reads them.
  // The diffusers folder: its scheduler config is the one Rig::image samples with.
  CHECK(sumi::app::cmd_generate({"--ckpt", fixture("tiny-sd1"), "--plugin-dir", SUMI_PLUGIN_DIR, "--outdir",
                                 out.string(), "--W", "64", "--H", "64", "--steps", "6", "--sampler", "euler", "--seed", "3",
                                 "--threads", "2", "--prompt", "a photo of a cat", "--network_module", "lora", "lora",
                                 "--network_weights", lora, lora, "--network_mul", "0.5", "0.5", "--network_merge"}) == 0);
  std::vector<fs::path> files;
  for (const auto& e : fs::directory_iterator(out)) files.push_back(e.path());
  REQUIRE(files.size() == 1);
  std::map<std::string, std::string> text;
  const at::Tensor got = sumi::app::read_image(files[0].string(), &text).to(at::kInt);
  CHECK(text["parameters"].find("Networks: \"tiny-sd1.lora (lora), tiny-sd1.lora (lora)\"") != std::string::npos);
  const at::Tensor want = sumi::app::to_uint8_hwc(Rig({1.0}, false).image().image).to(at::kInt);
  CHECK((got - want).abs().max().item<int64_t>() <= 1);
}

TEST_CASE("sumi generate --network_weights F without --network_module: the file's keys pick lora, the image is the same") {
  namespace fs = std::filesystem;
  const fs::path out = fs::path(SUMI_BUILD_DIR) / "test_gen_networks_probe_cli";
  fs::remove_all(out);
  CHECK(sumi::app::cmd_generate({"--ckpt", fixture("tiny-sd1"), "--plugin-dir", SUMI_PLUGIN_DIR, "--outdir", out.string(), "--W",
                                 "64", "--H", "64", "--steps", "6", "--sampler", "euler", "--seed", "3", "--threads", "2",
                                 "--prompt", "a photo of a cat", "--network_weights", fixture("tiny-sd1.lora.safetensors")}) == 0);
  std::vector<fs::path> files;
  for (const auto& e : fs::directory_iterator(out)) files.push_back(e.path());
  REQUIRE(files.size() == 1);
  const at::Tensor got = sumi::app::read_image(files[0].string()).to(at::kInt);
  const at::Tensor want = sumi::app::to_uint8_hwc(Rig({1.0}, false).image().image).to(at::kInt);
  CHECK((got - want).abs().max().item<int64_t>() <= 1);
  // --network_module counts must match the files when given at all.
  CHECK_THROWS_WITH_AS(sumi::app::cmd_generate({"--ckpt", fixture("tiny-sd1"), "--plugin-dir", SUMI_PLUGIN_DIR, "--outdir",
                                                out.string(), "--prompt", "x", "--network_module", "lora", "--network_weights",
                                                fixture("tiny-sd1.lora.safetensors"), fixture("tiny-sd1.lora.safetensors")}),
                       doctest::Contains("leave --network_module out"), sumi::host::UserError);
}

namespace {

// The images of one `sumi generate` run on tiny-sd1 with the fixture LoRA, in file-name order.
std::vector<at::Tensor> generate_images(const std::string& dir, std::vector<std::string> extra) {
  namespace fs = std::filesystem;
  const fs::path out = fs::path(SUMI_BUILD_DIR) / dir;
  fs::remove_all(out);
  std::vector<std::string> args{"--ckpt", fixture("tiny-sd1"), "--plugin-dir", SUMI_PLUGIN_DIR, "--outdir", out.string(), "--W",
                                "64", "--H", "64", "--steps", "6", "--sampler", "euler", "--seed", "3", "--threads", "2",
                                "--network_weights", fixture("tiny-sd1.lora.safetensors")};
  args.insert(args.end(), extra.begin(), extra.end());
  REQUIRE(sumi::app::cmd_generate(args) == 0);
  std::vector<fs::path> files;
  for (const auto& e : fs::directory_iterator(out)) files.push_back(e.path());
  std::sort(files.begin(), files.end());
  std::vector<at::Tensor> images;
  for (const auto& f : files) images.push_back(sumi::app::read_image(f.string()).to(at::kInt));
  return images;
}

}  // namespace

TEST_CASE("sumi generate --network_pre_calc: merged per batch at its multipliers, restored when --am changes them") {
  namespace fs = std::filesystem;
  // Two prompts: the first at --am 0.5, the second at --network_mul's 1; pre_calc restores the
  // base weights and merges again between them.
  const fs::path prompts = fs::path(SUMI_BUILD_DIR) / "test_gen_pre_calc_prompts.txt";
  {
    std::ofstream f(prompts);
    f << "a photo of a cat --am 0.5\na photo of a cat\n";
  }
  const auto runtime = generate_images("test_gen_pre_calc_runtime", {"--from_file", prompts.string()});
  const auto pre = generate_images("test_gen_pre_calc", {"--from_file", prompts.string(), "--network_pre_calc"});
  REQUIRE(runtime.size() == 2);
  REQUIRE(pre.size() == 2);
  for (size_t i = 0; i < 2; ++i) CHECK((runtime[i] - pre[i]).abs().max().item<int64_t>() <= 1);
  // The single-prompt image at multiplier 1 equals the runtime reference.
  const auto one = generate_images("test_gen_pre_calc_one", {"--prompt", "a photo of a cat", "--network_pre_calc"});
  REQUIRE(one.size() == 1);
  const at::Tensor want = sumi::app::to_uint8_hwc(Rig({1.0}, false).image().image).to(at::kInt);
  CHECK((one[0] - want).abs().max().item<int64_t>() <= 1);

  const std::vector<std::string> base{"--ckpt", fixture("tiny-sd1"), "--plugin-dir", SUMI_PLUGIN_DIR, "--prompt", "x"};
  auto with = [&](std::vector<std::string> extra) {
    auto a = base;
    a.insert(a.end(), extra.begin(), extra.end());
    return a;
  };
  CHECK_THROWS_WITH_AS(sumi::app::cmd_generate(with({"--network_pre_calc"})), doctest::Contains("--network_pre_calc needs --network_weights"),
                       sumi::host::UserError);
  CHECK_THROWS_WITH_AS(sumi::app::cmd_generate(with({"--network_weights", fixture("tiny-sd1.lora.safetensors"), "--network_pre_calc",
                                                     "--network_merge"})),
                       doctest::Contains("--network_pre_calc and --network_merge"), sumi::host::UserError);
}

TEST_CASE("sumi generate --network_show_meta prints the file's metadata as gen_img does") {
  CHECK_THROWS_WITH_AS(sumi::app::cmd_generate({"--ckpt", fixture("tiny-sd1"), "--prompt", "x", "--network_show_meta"}),
                       doctest::Contains("--network_show_meta needs --network_weights"), sumi::host::UserError);
  std::ostringstream captured;
  auto* old = std::cout.rdbuf(captured.rdbuf());
  try {
    generate_images("test_gen_show_meta", {"--prompt", "a photo of a cat", "--network_show_meta"});
  } catch (...) {
    std::cout.rdbuf(old);
    throw;
  }
  std::cout.rdbuf(old);
  const std::string text = captured.str();
  CHECK(text.find("metadata for: " + fixture("tiny-sd1.lora.safetensors") + ":") != std::string::npos);
  CHECK(text.find("  ss_network_module = networks.lora\n") != std::string::npos);
  CHECK(text.find("  ss_network_alpha = 2.0\n") != std::string::npos);
}
