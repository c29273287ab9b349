// Plugin loading: discovery by name and path, null plugins of every kind, and every refusal the
// host must make while it keeps running.
#include <doctest/doctest.h>

#include "core/error.h"
#include "core/host_api.h"
#include "core/tensor_handle.h"
#include "../common/plugin_test.h"
#include "app/app.h"
#include "app/network_settings.h"
#include "core/typed_plugins.h"

#include <sumi/torch_compat.hpp>

#include <deque>
#include <map>
#include <string>
#include <vector>

using sumi::host::UserError;
using sumi::test::plugins;

TEST_CASE("null plugin of every kind loads and runs") {
  sumi::host::Registry reg;
  for (int32_t kind = SUMI_KIND_MODEL; kind <= SUMI_KIND_TAGGER; ++kind) {
    CAPTURE(kind);
    auto c = sumi::test::make(kind, "null", reg);
    CHECK(c->info().kind == kind);
    CHECK(std::string(c->info().name) == "null");
  }
  auto opt = sumi::test::make(SUMI_KIND_OPTIMIZER, "null", reg);
  double lr = 1.0;
  CHECK(opt->vtable<sumi_optimizer_vtable>().step(opt->self(), &lr, 1) == SUMI_OK);
  auto lrs = sumi::test::make(SUMI_KIND_LR_SCHEDULER, "null", reg);
  sumi_lr_query q{sizeof(sumi_lr_query), 3, 10, 0, 1e-3};
  double f = 0;
  CHECK(lrs->vtable<sumi_lr_scheduler_vtable>().factor(lrs->self(), &q, &f) == SUMI_OK);
  CHECK(f == 1.0);
  auto model = sumi::test::make(SUMI_KIND_MODEL, "null", reg);
  auto latents = sumi::host::make_handle(at::ones({1, 4, 8, 8}));
  sumi_tensor img = nullptr;
  model->check(model->vtable<sumi_model_vtable>().vae_decode(model->self(), latents, &img), "vae_decode");
  CHECK((sumi::host::unwrap(img).sizes() == at::IntArrayRef({1, 3, 64, 64})));
  sumi::host::host_api()->tensor_release(img);
  sumi::host::host_api()->tensor_release(latents);
}

TEST_CASE("plugins are found by name, by Python module name and by path") {
  auto a = plugins().find(SUMI_KIND_OPTIMIZER, "adamw");
  CHECK(std::string(a.component->name) == "adamw");
  auto b = plugins().find(SUMI_KIND_OPTIMIZER, "library.adamw");
  CHECK(b.component == a.component);
  auto c = plugins().find(SUMI_KIND_TAGGER, std::string(SUMI_PLUGIN_DIR) + "/sumi_null.so");
  CHECK(std::string(c.component->name) == "null");
  CHECK_THROWS_WITH_AS(plugins().find(SUMI_KIND_LR_SCHEDULER, std::string(SUMI_PLUGIN_DIR) + "/sumi_lr_schedulers.so"),
                       doctest::Contains("has 8 lr_scheduler components"), UserError);
}

TEST_CASE("unknown plugin name lists what is available") {
  CHECK_THROWS_WITH_AS(plugins().find(SUMI_KIND_OPTIMIZER, "adamw4bit"),
                       doctest::Contains("no optimizer plugin named 'adamw4bit'; available: adafactor, adamw, adamw8bit,"), UserError);
}

TEST_CASE("refusals: versions, native build, missing entry, failing entry") {
  sumi::host::PluginManager pm;
  CHECK_THROWS_WITH_AS(pm.load(sumi::test::test_plugin("test_newer_minor")),
                       doctest::Contains("needs sumi ABI 1.5, newer than this host's 1.4"), UserError);
  CHECK_THROWS_WITH_AS(pm.load(sumi::test::test_plugin("test_other_major")),
                       doctest::Contains("was built for sumi ABI 2.4, but this host speaks ABI 1.4"), UserError);
  CHECK_THROWS_WITH_AS(pm.load(sumi::test::test_plugin("test_native_mismatch")),
                       doctest::Contains("native plugin built for libtorch 0.0.1-not-this-torch"), UserError);
  CHECK_THROWS_WITH_AS(pm.load(sumi::test::test_plugin("test_no_entry")),
                       doctest::Contains("exports no 'sumi_plugin_entry' symbol"), UserError);
  CHECK_THROWS_WITH_AS(pm.load(sumi::test::test_plugin("test_entry_error")),
                       doctest::Contains("refusing to initialise on purpose"), UserError);
  CHECK_THROWS_WITH_AS(pm.load("/nonexistent/plugin.so"), doctest::Contains("does not exist"), UserError);
  // The host is still usable afterwards.
  CHECK(pm.load(sumi::test::test_plugin("test_oldest_header")).components.size() == 2);
}

TEST_CASE("a plugin built against the frozen ABI 1.0 header still works") {
  sumi::host::Registry reg;
  auto ref = plugins().find(SUMI_KIND_LR_SCHEDULER, sumi::test::test_plugin("test_oldest_header"));
  sumi::host::Component c(ref, "lr", reg, {});
  sumi_lr_query q{sizeof(sumi_lr_query), 0, 10, 0, 1e-3};
  double f = 0;
  CHECK(c.vtable<sumi_lr_scheduler_vtable>().factor(c.self(), &q, &f) == SUMI_OK);
  CHECK(f == 0.5);
}

TEST_CASE("a model built against ABI 1.0 loads; the 1.1 training slots are absent and reported by name") {
  sumi::host::Registry reg;
  auto ref = plugins().find(SUMI_KIND_MODEL, sumi::test::test_plugin("test_oldest_header"));
  CHECK(ref.library->descriptor->abi_minor == 0);
  sumi::host::Component c(ref, "model", reg, {});
  const auto& vt = c.vtable<sumi_model_vtable>();
  CHECK(c.vtable_size() == SUMI_MODEL_VTABLE_SIZE_1_0);
  CHECK(SUMI_HAS_FIELD(&vt, sumi_model_vtable, set_network));
  CHECK_FALSE(SUMI_HAS_FIELD(&vt, sumi_model_vtable, train_part));
  CHECK_FALSE(SUMI_HAS_FIELD(&vt, sumi_model_vtable, save));
  CHECK_THROWS_WITH_AS(c.require_slot(SUMI_HAS_FIELD(&vt, sumi_model_vtable, save), "save", "1.1"),
                       doctest::Contains("has no 'save' (added in ABI 1.1; the plugin was built for ABI 1.0)"),
                       UserError);
  // Its 1.0 slots still run (and report through the host's last error).
  CHECK(vt.load(c.self(), "x") == SUMI_ERR_UNSUPPORTED);
  CHECK(sumi::host::last_error() == "oldest_model computes nothing");
}

TEST_CASE("a model built against ABI 1.1 loads; the 1.2 describe slot is absent and reported by name") {
  sumi::host::Registry reg;
  auto ref = plugins().find(SUMI_KIND_MODEL, sumi::test::test_plugin("test_abi_1_1_header"));
  CHECK(ref.library->descriptor->abi_minor == 1);
  sumi::host::Component c(ref, "model", reg, {});
  const auto& vt = c.vtable<sumi_model_vtable>();
  CHECK(c.vtable_size() == SUMI_MODEL_VTABLE_SIZE_1_1);
  CHECK(SUMI_HAS_FIELD(&vt, sumi_model_vtable, save));
  CHECK_FALSE(SUMI_HAS_FIELD(&vt, sumi_model_vtable, describe));
  CHECK_FALSE(SUMI_HAS_FIELD(&vt, sumi_model_vtable, encode_tokens));
  CHECK_THROWS_WITH_AS(c.require_slot(SUMI_HAS_FIELD(&vt, sumi_model_vtable, describe), "describe", "1.2"),
                       doctest::Contains("has no 'describe' (added in ABI 1.2; the plugin was built for ABI 1.1)"),
                       UserError);
  // Its 1.1 slots run.
  CHECK(vt.save(c.self(), "x.safetensors", nullptr, 0) == SUMI_ERR_UNSUPPORTED);
  CHECK(sumi::host::last_error() == "abi11_model computes nothing");
}

TEST_CASE("this host speaks ABI 1.4 and a current model exposes the training, describe and token slots") {
  CHECK(sumi::host::host_api()->abi_minor == 4);
  sumi::host::Registry reg;
  {
    // host->device (1.4): the registry's device, CPU unless the run set one.
    sumi_context ctx;
    ctx.component = "model";
    ctx.registry = &reg;
    sumi_device d{-1, -1};
    REQUIRE(sumi::host::host_api()->device(&ctx, &d) == SUMI_OK);
    CHECK(d.device_type == SUMI_DEVICE_CPU);
    CHECK(d.device_id == 0);
    sumi::host::Registry cuda_reg;
    cuda_reg.set_device(c10::Device(c10::kCUDA, 1));
    ctx.registry = &cuda_reg;
    REQUIRE(sumi::host::host_api()->device(&ctx, &d) == SUMI_OK);
    CHECK(d.device_type == SUMI_DEVICE_CUDA);
    CHECK(d.device_id == 1);
    CHECK(sumi::host::host_api()->device(nullptr, &d) != SUMI_OK);
  }
  auto ref = plugins().find(SUMI_KIND_MODEL, "null");
  sumi::host::Component c(ref, "model", reg, {});
  const auto& vt = c.vtable<sumi_model_vtable>();
  REQUIRE(SUMI_HAS_FIELD(&vt, sumi_model_vtable, save));
  c.require_slot(SUMI_HAS_FIELD(&vt, sumi_model_vtable, save), "save", "1.1");
  // A model that does not train refuses through the skin's defaults.
  CHECK(vt.train_part(c.self(), "unet") == SUMI_ERR_UNSUPPORTED);
  CHECK(sumi::host::last_error().find("cannot train its weights") != std::string::npos);
  CHECK(vt.save(c.self(), "x.safetensors", nullptr, 0) == SUMI_ERR_UNSUPPORTED);
  // A model that says nothing about itself describes an empty object (the skin's default).
  REQUIRE(SUMI_HAS_FIELD(&vt, sumi_model_vtable, describe));
  const char* json = nullptr;
  CHECK(vt.describe(c.self(), &json) == SUMI_OK);
  CHECK(std::string(json) == "{}");
  // ABI 1.3's token-level text encoding (lora_interrogator): present, refused by the skin's
  // defaults for a model without a tokenizer.
  REQUIRE(SUMI_HAS_FIELD(&vt, sumi_model_vtable, token_text));
  const char* text = nullptr;
  CHECK(vt.token_text(c.self(), 5, &text) == SUMI_ERR_UNSUPPORTED);
  CHECK(sumi::host::last_error().find("has no token texts") != std::string::npos);
  sumi_tensor cond = nullptr;
  CHECK(vt.encode_tokens(c.self(), nullptr, &cond) == SUMI_ERR_UNSUPPORTED);
  CHECK(cond == nullptr);
}

TEST_CASE("a plugin that returns an error or throws is reported, and the host goes on") {
  sumi::host::Registry reg;
  const auto path = sumi::test::test_plugin("test_misbehaving");
  auto failing = plugins().load(path).components.at(0);
  CHECK_THROWS_WITH_AS(sumi::host::Component(failing, "o", reg, sumi::host::make_config(*failing.component, {{"fail", "create"}})),
                       doctest::Contains("create failed: failing: asked to fail in create"), UserError);

  sumi::host::Component step_err(failing, "o1", reg, sumi::host::make_config(*failing.component, {}));
  double lr = 0.1;
  sumi_status s = step_err.vtable<sumi_optimizer_vtable>().step(step_err.self(), &lr, 1);
  CHECK(s == SUMI_ERR_RUNTIME);
  CHECK_THROWS_WITH_AS(step_err.check(s, "step"), doctest::Contains("step failed: failing: step returns an error"), UserError);

  sumi::host::Component thrower(failing, "o2", reg, sumi::host::make_config(*failing.component, {{"fail", "throw"}}));
  s = thrower.vtable<sumi_optimizer_vtable>().step(thrower.self(), &lr, 1);
  CHECK(s == SUMI_ERR_EXCEPTION);
  CHECK(sumi::host::last_error().find("std::runtime_error thrown inside step") != std::string::npos);

  auto raw = plugins().load(path).components.at(1);
  sumi::host::Component raw_c(raw, "o3", reg, {});
  s = sumi::host::call_plugin([&] { return raw_c.vtable<sumi_optimizer_vtable>().step(raw_c.self(), &lr, 1); });
  CHECK(s == SUMI_ERR_EXCEPTION);
  CHECK(sumi::host::last_error().find("raw plugin threw through the C ABI") != std::string::npos);

  // Still running: a healthy plugin works after all of that.
  auto ok = sumi::test::make(SUMI_KIND_OPTIMIZER, "sgd", reg, {}, "after");
  CHECK(ok->self() != nullptr);
}

TEST_CASE("component configuration is validated against the schema") {
  auto ref = plugins().find(SUMI_KIND_OPTIMIZER, "adamw");
  CHECK_THROWS_WITH_AS(sumi::host::make_config(*ref.component, {{"weight_decy", "0.1"}}),
                       doctest::Contains("has no parameter 'weight_decy'"), UserError);
  CHECK_THROWS_WITH_AS(sumi::host::make_config(*ref.component, {{"eps", "tiny"}}),
                       doctest::Contains("expected a float, found 'tiny'"), UserError);
  auto cfg = sumi::host::make_config(*ref.component, {{"betas", "0.8, 0.99"}});
  CHECK(cfg.at("betas").doubles == std::vector<double>{0.8, 0.99});
  CHECK(cfg.at("weight_decay").d == doctest::Approx(0.01));
}

TEST_CASE("registry: one namespace per component, duplicates refused") {
  sumi::host::Registry reg;
  reg.add("network", "a.weight", at::zeros({2}), "unet", true);
  reg.add("network", "b.weight", at::zeros({3}), "text_encoder", true);
  reg.add("optimizer", "a.step", at::zeros({}), "", false);
  CHECK_THROWS_WITH_AS(reg.add("network", "a.weight", at::zeros({2}), "", true), doctest::Contains("already exists"), UserError);
  auto groups = reg.param_groups("network");
  REQUIRE(groups.size() == 2);
  CHECK(groups[0].first == "unet");
  CHECK(groups[0].second[0].requires_grad());
  CHECK_FALSE(reg.find("optimizer", "a.step")->tensor.requires_grad());
}

TEST_CASE("the run's device: registered tensors are placed there; plugins from before ABI 1.4 are refused off the CPU") {
  // The CPU is the default and keeps tensors where they are (a copy, as before).
  sumi::host::Registry cpu;
  const at::Tensor init = at::ones({2});
  const at::Tensor t = cpu.add("network", "w", init, "", true);
  CHECK(t.device().is_cpu());
  CHECK_FALSE(t.is_same(init));
  // Another device: what a component registers lives there (the meta device stands in for a GPU
  // on a machine without one; placement is the same call).
  sumi::host::Registry meta;
  meta.set_device(c10::Device(c10::kMeta));
  CHECK(meta.add("optimizer", "exp_avg", at::zeros({3}), "", false).device().is_meta());
  CHECK(meta.add("network", "lora_up", at::zeros({3}), "unet", true).requires_grad());
  // A network built for ABI 1.2 cannot ask for the device: refused by name, with the way out.
  sumi::host::Registry cuda;
  cuda.set_device(c10::Device(c10::kCUDA, 0));
  auto old = plugins().find(SUMI_KIND_NETWORK, sumi::test::test_plugin("test_abi_1_2_header"));
  CHECK_THROWS_WITH_AS(sumi::host::Component(old, "network", cuda, {}),
                       doctest::Contains("before plugins were told the device (1.4)"), UserError);
  CHECK_THROWS_WITH_AS(sumi::host::Component(old, "network", cuda, {}), doctest::Contains("--device cpu"), UserError);
  // ...while on the CPU it loads as before, and schedulers (no tensors of their own) load anywhere.
  CHECK_NOTHROW(sumi::host::Component(old, "network", cpu, {}));
  auto lr = plugins().find(SUMI_KIND_LR_SCHEDULER, sumi::test::test_plugin("test_oldest_header"));
  CHECK_NOTHROW(sumi::host::Component(lr, "lr", cuda, {}));
}

TEST_CASE("--device: cpu, cuda, cuda:N; anything else and CUDA without a GPU are refused by name") {
  CHECK(sumi::app::run_device("cpu").is_cpu());
  const int64_t gpus = sumi::torch_compat::cuda_device_count();
  CHECK(sumi::app::run_device("").is_cuda() == (gpus > 0));
  for (const char* bad : {"gpu", "CPU", "cuda:", "cuda:x", "cuda:0:1", "mps"})
    CHECK_THROWS_WITH_AS(sumi::app::run_device(bad), doctest::Contains("expected cpu, cuda or cuda:N"), UserError);
  if (gpus == 0) {
    CHECK_THROWS_WITH_AS(sumi::app::run_device("cuda"), doctest::Contains("--device cpu"), UserError);
    CHECK_THROWS_WITH_AS(sumi::app::run_device("cuda:1"), doctest::Contains("--device cpu"), UserError);
  } else {
    CHECK(sumi::app::run_device("cuda").index() == 0);
  }
  CHECK_THROWS_WITH_AS(sumi::app::run_device("cuda:" + std::to_string(gpus)), doctest::Contains("cuda:"), UserError);
}

namespace {

// Three modules in this host's (ABI 1.3) layout, names "mod0".. ("mod" is what abi12_network checks).
std::vector<sumi_module_info> three_modules() {
  static std::deque<std::string> names{"mod0", "mod1", "mod2"};
  std::vector<sumi_module_info> out(3);
  for (size_t i = 0; i < 3; ++i) {
    out[i] = sumi_module_info{};
    out[i].struct_size = sizeof(sumi_module_info);
    out[i].name = names[i].c_str();
    out[i].kind = i == 1 ? SUMI_MODULE_CONV2D : SUMI_MODULE_LINEAR;
    out[i].in_features = out[i].out_features = 4;
    out[i].kernel[0] = out[i].kernel[1] = 1;
  }
  return out;
}

}  // namespace

TEST_CASE("a network built against ABI 1.2 loads, gets 1.2-sized module records and no 1.3 slot is called") {
  sumi::host::Registry reg;
  auto ref = plugins().find(SUMI_KIND_NETWORK, sumi::test::test_plugin("test_abi_1_2_header"));
  CHECK(ref.library->descriptor->abi_minor == 2);
  sumi::host::Component c(ref, "network", reg, {});
  const auto& vt = c.vtable<sumi_network_vtable>();
  CHECK(c.vtable_size() == SUMI_NETWORK_VTABLE_SIZE_1_2);
  CHECK(SUMI_HAS_FIELD(&vt, sumi_network_vtable, set_training));
  CHECK_FALSE(SUMI_HAS_FIELD(&vt, sumi_network_vtable, probe));
  CHECK_FALSE(SUMI_HAS_FIELD(&vt, sumi_network_vtable, bias_delta));
  // The host repacks this host's 112-byte records into ABI 1.2's 104-byte ones.
  const auto mods = three_modules();
  std::vector<int32_t> selected;
  sumi::app::attach_modules(c, mods, selected);
  CHECK(selected == std::vector<int32_t>{1, 0, 1});
  // Handed the current layout directly, the old network sees the wrong records and says so.
  std::vector<int32_t> sel(3, 0);
  CHECK(vt.attach(c.self(), mods.data(), 3, sel.data()) == SUMI_ERR_ABI);
  // No probe, configure_from_weights or metadata: the host asks nothing and writes nothing.
  sumi::app::WeightsFile f;
  f.path = "x.safetensors";
  f.names = {"a.lora_down.weight"};
  f.shapes = {{4, 4}};
  f.metadata_json = "{}";
  CHECK_FALSE(sumi::app::probe_network(c, f).has_value());
  CHECK_FALSE(sumi::app::configure_network_from_file(c, f));
  CHECK(sumi::app::network_metadata_of(c).empty());
}

TEST_CASE("a current network (lora) has the 1.3 slots: probe, configure_from_weights, metadata, bias_delta") {
  sumi::host::Registry reg;
  auto ref = plugins().find(SUMI_KIND_NETWORK, "lora");
  sumi::host::Component c(ref, "network", reg, sumi::host::make_config(*ref.component, {{"dim", "8"}, {"alpha", "4"}}));
  const auto& vt = c.vtable<sumi_network_vtable>();
  CHECK(c.vtable_size() == sizeof(sumi_network_vtable));
  REQUIRE(SUMI_HAS_FIELD(&vt, sumi_network_vtable, bias_delta));
  sumi::app::WeightsFile f;
  f.path = "x.safetensors";
  f.names = {"mod0.lora_down.weight", "mod0.lora_up.weight", "mod0.alpha", "mod0.hada_w1_a", "mod2.lora_up.weight"};
  f.shapes = {{2, 4}, {4, 2}, {}, {4, 2}, {4, 2, 3, 3}};
  f.metadata_json = "{}";
  const auto u = sumi::app::probe_network(c, f);
  REQUIRE(u.has_value());
  CHECK(*u == std::vector<int32_t>{1, 1, 1, 0, 0});  // LoHa key and a 3x3 lora_up are not LoRA tensors
  // kohya's metadata of the configured network: alpha as Python's str of a float.
  CHECK(sumi::app::network_metadata_of(c) ==
        std::map<std::string, std::string>{{"ss_network_dim", "8"}, {"ss_network_alpha", "4.0"}});
  // A file with a foreign tensor is refused by configure_from_weights, naming it.
  CHECK_THROWS_WITH_AS(sumi::app::configure_network_from_file(c, f), doctest::Contains("'mod0.hada_w1_a'"), UserError);
}

TEST_CASE("noise scheduler describe (1.4): sumi's samplers give their A1111 label and gen_img's noises per step; a 1.3 "
          "scheduler gets the defaults") {
  sumi::host::Registry reg;
  auto describe = [&](const std::string& name, const std::map<std::string, std::string>& cfg = {}) {
    auto c = sumi::test::make(SUMI_KIND_NOISE_SCHEDULER, name, reg, cfg, "noise_scheduler");
    return sumi::host::NoiseSchedulerPlugin(*c).describe();
  };
  const std::vector<std::pair<std::string, std::string>> labels = {
      {"ddim", "DDIM"},        {"pndm", "PLMS"},          {"lms", "LMS"},           {"k_lms", "LMS"},
      {"euler", "Euler"},      {"euler_a", "Euler a"},    {"k_euler_a", "Euler a"}, {"heun", "Heun"},
      {"dpm_2", "DPM2"},       {"dpm_2_a", "DPM2 a"},     {"dpmsolver", "DPM++ 2M"}, {"dpmsolver++", "DPM++ 2M"},
      {"dpmsingle", "DPM++ SDE"}};
  for (const auto& [name, label] : labels) {
    CAPTURE(name);
    const auto d = describe(name);
    CHECK(d.a1111_name == label);
    // gen_img draws two noises per step for KDPM2AncestralDiscreteScheduler only.
    CHECK(d.noises_per_step == (name == "dpm_2_a" ? 2 : 1));
  }
  CHECK(describe("k_dpm_2_a").noises_per_step == 2);
  CHECK(describe("dpmsolver++", {{"use_karras_sigmas", "true"}}).a1111_name == "DPM++ 2M Karras");
  CHECK(describe("euler_a", {{"use_karras_sigmas", "true"}}).a1111_name == "Euler a Karras");
  // Built for 1.3: the vtable ends before describe; the host reads nothing past it.
  auto old = plugins().find(SUMI_KIND_NOISE_SCHEDULER, sumi::test::test_plugin("test_abi_1_3_header"));
  sumi::host::Component c(old, "noise_scheduler", reg, {});
  CHECK(c.vtable<sumi_noise_scheduler_vtable>().struct_size == SUMI_NOISE_SCHEDULER_VTABLE_SIZE_1_3);
  const auto d = sumi::host::NoiseSchedulerPlugin(c).describe();
  CHECK(d.a1111_name == "abi13_sampler");
  CHECK(d.noises_per_step == 1);
}
