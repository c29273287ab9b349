// Text-to-image against the diffusers goldens: for every fixture, 10 steps of ddim, euler and
// DPM++ 2M Karras at the golden PNG's size (64x64; tiny-sd2v 96x96), CFG 7.5, seed 31 — the 8-bit
// image within 2/255 of the golden PNG at every pixel, from both the single-file and the
// diffusers form of the model; the two forms sample alike with every sampler.
#include <doctest/doctest.h>

#include "../common/test_data.h"

#include "../common/plugin_test.h"
#include "app/generation.h"
#include "app/model_description.h"
#include "app/image_io.h"
#include "sumi/io/safetensors_torch.h"

#include <ATen/Parallel.h>

#include <algorithm>

#include <nlohmann/json.hpp>

namespace {

using sumi::test::fixture;

at::Tensor golden(const std::string& model, const std::string& key) {
  static std::map<std::string, std::map<std::string, at::Tensor>> cache;
  auto& m = cache[model];
  if (m.empty())
    for (auto& [k, t] : sumi::io::load_all(fixture(model + ".golden.safetensors"))) m[k] = t;
  REQUIRE_MESSAGE(m.count(key), key);
  return m.at(key);
}

// Every fixture, every golden sampler, both forms of the model: the sampler is set up from the
// model's own scheduler config (describe: a folder's file, the family's standard config for a
// single file), as `sumi generate` does, and the 8-bit image must be within 2/255 of the golden
// PNG at every pixel (the fixtures' README bound; the refreshed goldens are all checked there to
// be well conditioned: a 1e-5 change of the UNet output moves none of them by more than 1/255).
void check_model(const std::string& model, const std::string& family, const std::string& path) {
  at::set_num_threads(2);
  sumi::host::Registry reg;
  auto m = sumi::test::make(SUMI_KIND_MODEL, family, reg, {{"dtype", "fp32"}}, "model");
  m->check(m->vtable<sumi_model_vtable>().load(m->self(), path.c_str()), "load");
  struct Case {
    const char* golden;
    const char* sampler;
    bool karras;
  };
  for (const Case c : {Case{"ddim", "ddim", false}, Case{"euler", "euler", false}, Case{"dpmpp2m_karras", "dpmsolver++", true}}) {
    CAPTURE(model);
    CAPTURE(path);
    const std::string which = c.golden;
    CAPTURE(which);
    auto ref = sumi::test::plugins().find(SUMI_KIND_NOISE_SCHEDULER, c.sampler);
    auto cfg = sumi::app::scheduler_config_of(*m, *ref.component);
    if (c.karras) cfg["use_karras_sigmas"] = "true";
    sumi::host::Component sched(ref, std::string("sched_") + c.golden, reg, sumi::host::make_config(*ref.component, cfg));
    sumi::app::Generator gen(*m, sched);
    const at::Tensor want8 = sumi::app::read_image(fixture(model + ".gen." + c.golden + ".png")).to(at::kInt);
    sumi::app::ImageRequest r;
    r.prompt = "a photo of a cat";
    r.height = want8.size(0);
    r.width = want8.size(1);
    r.steps = 10;
    r.scale = 7.5;
    r.seed = 31;
    r.zero_empty_negative = family == "sdxl";
    const auto out = gen.run(r, false);
    const at::Tensor got8 = sumi::app::to_uint8_hwc(out.image).to(at::kInt);
    REQUIRE(got8.sizes() == want8.sizes());
    const int64_t max_diff = (got8 - want8).abs().max().item<int64_t>();
    CHECK(max_diff <= 2);
    // The PNG is the golden's float image rounded: the golden tensors agree with it.
    const at::Tensor want = golden(model, std::string("gen.") + c.golden + ".image");  // [1,3,H,W] in [0,1]
    CHECK((want[0].mul(255).round().permute({1, 2, 0}).to(at::kInt) - want8).abs().max().item<int64_t>() <= 1);
    const at::Tensor want_lat = golden(model, std::string("gen.") + c.golden + ".final_latents");
    const double rel = ((out.latents - want_lat).norm() / want_lat.norm()).item<double>();
    // The multistep solver amplifies float rounding of the early x0 predictions; its latents
    // agree to ~0.6%, which still gives the same 8-bit image.
    CHECK(rel < (c.karras ? 1e-2 : 1e-3));
  }
}

}  // namespace

TEST_CASE("generation equals the golden images: tiny-sd1") {
  check_model("tiny-sd1", "sd1", fixture("tiny-sd1.safetensors"));
  check_model("tiny-sd1", "sd1", fixture("tiny-sd1"));
}

TEST_CASE("generation equals the golden images: tiny-sd2v (v-prediction)") {
  check_model("tiny-sd2v", "sd2", fixture("tiny-sd2v"));
  check_model("tiny-sd2v", "sd2", fixture("tiny-sd2v.safetensors"));
}

TEST_CASE("generation equals the golden images: tiny-sdxl") {
  check_model("tiny-sdxl", "sdxl", fixture("tiny-sdxl"));
  check_model("tiny-sdxl", "sdxl", fixture("tiny-sdxl.safetensors"));
}

namespace {

struct Loaded {
  sumi::host::Registry reg;
  std::unique_ptr<sumi::host::Component> c;
  Loaded(const std::string& family, const std::string& path) {
    c = sumi::test::make(SUMI_KIND_MODEL, family, reg, {{"dtype", "fp32"}}, "model");
    c->check(c->vtable<sumi_model_vtable>().load(c->self(), path.c_str()), "load");
  }
  std::unique_ptr<sumi::host::Component> sampler(const std::string& name, sumi::app::SchedulerSource src) {
    auto ref = sumi::test::plugins().find(SUMI_KIND_NOISE_SCHEDULER, name);
    auto cfg = sumi::app::scheduler_config_of(*c, *ref.component, src);
    return std::make_unique<sumi::host::Component>(ref, "sched_" + name, reg, sumi::host::make_config(*ref.component, cfg));
  }
};

}  // namespace

TEST_CASE("the same model as a single file and as a folder samples alike with every sampler") {
  at::set_num_threads(2);
  for (const auto& [model, family] : std::vector<std::pair<std::string, std::string>>{
           {"tiny-sd1", "sd1"}, {"tiny-sd2v", "sd2"}, {"tiny-sdxl", "sdxl"}}) {
    CAPTURE(model);
    Loaded folder(family, fixture(model)), single(family, fixture(model + ".safetensors"));
    for (const char* name : {"euler", "euler_a", "ddim", "pndm", "lms", "heun", "dpmsolver++", "dpm_2_a"}) {
      CAPTURE(name);
      auto sf = folder.sampler(name, sumi::app::SchedulerSource::model);
      auto ss = single.sampler(name, sumi::app::SchedulerSource::model);
      sumi::app::ImageRequest r;
      r.prompt = "a red house";
      r.width = r.height = 64;
      r.steps = 6;
      r.seed = 5;
      r.zero_empty_negative = family == "sdxl";
      const auto a = sumi::app::Generator(*folder.c, *sf).run(r, false);
      const auto b = sumi::app::Generator(*single.c, *ss).run(r, false);
      // The same weights and the same sampler settings: the same computation.
      CHECK(((a.latents - b.latents).norm() / b.latents.norm()).item<double>() < 1e-6);
    }
  }
}

TEST_CASE("a single file samples with its family's standard scheduler config; gen_img's construction on request") {
  auto ref = sumi::test::plugins().find(SUMI_KIND_NOISE_SCHEDULER, "euler");
  for (const auto& [model, family] : std::vector<std::pair<std::string, std::string>>{
           {"tiny-sd1", "sd1"}, {"tiny-sd2v", "sd2"}, {"tiny-sdxl", "sdxl"}}) {
    CAPTURE(model);
    Loaded single(family, fixture(model + ".safetensors"));
    const auto cfg = sumi::app::scheduler_config_of(*single.c, *ref.component);
    CHECK(cfg.at("timestep_spacing") == "leading");
    CHECK(cfg.at("steps_offset") == "1");
    CHECK(cfg.at("beta_schedule") == "scaled_linear");
    CHECK(cfg.at("prediction_type") == (family == "sd2" ? "v_prediction" : "epsilon"));
    // gen_img: the class defaults (Euler's linspace spacing); only the prediction type is the model's.
    const auto g = sumi::app::scheduler_config_of(*single.c, *ref.component, sumi::app::SchedulerSource::gen_img);
    CHECK(g.size() == 1);
    CHECK(g.at("prediction_type") == cfg.at("prediction_type"));
  }
  CHECK(sumi::app::scheduler_source_from_string("gen_img") == sumi::app::SchedulerSource::gen_img);
  CHECK_THROWS_WITH_AS(sumi::app::scheduler_source_from_string("diffusers"), doctest::Contains("model"),
                       sumi::host::UserError);
}

TEST_CASE("describe: what the host needs to know of a loaded model") {
  struct Want {
    const char* model;
    const char* family;
    const char* prediction;
    double scaling;
    int64_t resolution;
    size_t encoders;
    const char* arch;
    const char* base_version;  // kohya's ss_base_model_version
    bool sgm_lora;             // modelspec.implementation of its LoRA files: generative-models
  };
  for (const Want& w : {Want{"tiny-sd1", "sd1", "epsilon", 0.18215, 512, 1, "stable-diffusion-v1", "sd_v1", false},
                       Want{"tiny-sd2v", "sd2", "v_prediction", 0.18215, 768, 1, "stable-diffusion-v2-768-v", "sd_v2_v", false},
                       Want{"tiny-sdxl", "sdxl", "epsilon", 0.13025, 1024, 2, "stable-diffusion-xl-v1-base", "sdxl_base_v1-0", true}}) {
    CAPTURE(w.model);
    for (const std::string& path : {fixture(w.model), fixture(std::string(w.model) + ".safetensors")}) {
      Loaded m(w.family, path);
      const auto d = nlohmann::json::parse(sumi::app::describe_model(*m.c));
      CHECK(d.at("family") == w.family);
      CHECK(d.at("prediction_type") == w.prediction);
      CHECK(d.at("latent_channels") == 4);
      CHECK(d.at("vae_scale_factor") == 8);
      CHECK(d.at("scaling_factor").get<double>() == doctest::Approx(w.scaling));
      CHECK(d.at("default_resolution") == nlohmann::json{w.resolution, w.resolution});
      CHECK(d.at("text_encoders").size() == w.encoders);
      CHECK(d.at("modelspec_architecture") == w.arch);
      CHECK(d.at("scheduler").at("steps_offset") == 1);
      // What the trainer and the metadata writer ask instead of knowing the family.
      const auto md = sumi::app::describe(*m.c);
      CHECK(md.kohya_base_model_version == w.base_version);
      CHECK(md.kohya_v2 == (std::string(w.family) == "sd2"));
      CHECK(md.modelspec_lora_implementation == (w.sgm_lora ? "https://github.com/Stability-AI/generative-models" : "diffusers"));
      CHECK(md.text_encoder_output_cache == w.sgm_lora);
      CHECK(md.kohya_trains_text_encoder == !w.sgm_lora);
      CHECK(md.added_conditioning.size() == (w.sgm_lora ? 6u : 0u));
      CHECK(static_cast<bool>(md.block_lr) == w.sgm_lora);
      CHECK(md.latent_channels == 4);
      CHECK(md.vae_scale_factor == 8);
      CHECK(md.default_width == w.resolution);
    }
  }
}

TEST_CASE("describe before load: what the component knows without a file, v-prediction from its option") {
  struct Want {
    const char* family;
    bool v;
    const char* arch;
    const char* base_version;
    int64_t resolution;
    std::vector<std::string> kohya_flags;
  };
  for (const Want& w : {Want{"sd1", false, "stable-diffusion-v1", "sd_v1", 512, {}},
                        Want{"sd2", false, "stable-diffusion-v2-512", "sd_v2", 512, {"v2"}},
                        Want{"sd2", true, "stable-diffusion-v2-768-v", "sd_v2_v", 768, {"v2"}},
                        Want{"sdxl", false, "stable-diffusion-xl-v1-base", "sdxl_base_v1-0", 1024, {"sdxl"}}}) {
    CAPTURE(w.family);
    CAPTURE(w.v);
    sumi::host::Registry reg;
    auto c = sumi::test::make(SUMI_KIND_MODEL, w.family, reg, {{"v_parameterization", w.v ? "true" : "false"}}, "model");
    const auto d = nlohmann::json::parse(sumi::app::describe_model(*c));
    CHECK(d.at("family") == w.family);
    CHECK(d.at("prediction_type") == (w.v ? "v_prediction" : "epsilon"));
    CHECK_FALSE(d.contains("latent_channels"));  // the files' facts come with load
    CHECK_FALSE(d.contains("scheduler"));
    const auto md = sumi::app::describe(*c);
    CHECK(md.modelspec_architecture == w.arch);
    CHECK(md.kohya_base_model_version == w.base_version);
    CHECK(md.default_width == w.resolution);
    CHECK(md.kohya_flags == w.kohya_flags);
    CHECK(md.text_encoders.size() == (std::string(w.family) == "sdxl" ? 2u : 1u));
  }
}
