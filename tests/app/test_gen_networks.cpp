// Several networks on one model (gen_img's --network_module lists) on tiny-sd1 with the kohya
// LoRA fixture: merging into the weights gives sd-scripts' merged UNet outputs (the `lora.*`
// goldens) and the image of runtime application; two networks at once are the sum of their
// deltas (the fixture twice at 0.5 + 0.5 equals it once at 1, merged or not), also from the CLI;
// a LoRA file's rank and coverage become the plugin's settings.
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

#include <filesystem>

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

TEST_CASE("a LoRA file's rank and coverage set the lora plugin as gen_img reads them") {
  CHECK(sumi::app::lora_settings_from_file(fixture("tiny-sd1.lora.safetensors")) ==
        std::map<std::string, std::string>{{"dim", "4"}});
  // The fixture cut to rank 2 and to its U-Net part: dim 2, U-Net only, and it loads.
  sumi::io::NamedTensors cut;
  for (auto& [k, t] : sumi::io::load_all(fixture("tiny-sd1.lora.safetensors"))) {
    if (k.rfind("lora_unet_", 0) != 0) continue;
    const bool down = k.find(".lora_down.") != std::string::npos, up = k.find(".lora_up.") != std::string::npos;
    cut.emplace_back(k, down ? t.narrow(0, 0, 2).contiguous() : up ? t.narrow(1, 0, 2).contiguous() : t);
  }
  const std::string path = std::string(SUMI_BUILD_DIR) + "/test_gen_networks_rank2.safetensors";
  sumi::io::save_tensors(path, cut);
  const auto settings = sumi::app::lora_settings_from_file(path);
  CHECK(settings == std::map<std::string, std::string>{{"dim", "2"}, {"train_unet_only", "true"}});
  sumi::host::Registry reg;
  auto model = sumi::test::make(SUMI_KIND_MODEL, "sd1", reg, {{"dtype", "fp32"}}, "model");
  model->check(model->vtable<sumi_model_vtable>().load(model->self(), fixture("tiny-sd1.safetensors").c_str()), "load");
  auto net = sumi::test::make(SUMI_KIND_NETWORK, "lora", reg, settings, "network");
  const auto selected = sumi::app::prepare_network(*model, *net, path, 1.0, false);
  int64_t n = 0;
  for (auto s : selected) n += s;
  CHECK(n == 192);  // the fixture's U-Net modules
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
  CHECK(text["parameters"].find("Lora: tiny-sd1.lora, tiny-sd1.lora") != std::string::npos);
  const at::Tensor want = sumi::app::to_uint8_hwc(Rig({1.0}, false).image().image).to(at::kInt);
  CHECK((got - want).abs().max().item<int64_t>() <= 1);
}
