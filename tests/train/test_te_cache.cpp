// kohya's --cache_text_encoder_outputs on tiny-sdxl: the cached conditioning is exactly a fresh
// encode_text of the caption; the disk files (<stem>_te_outputs.npz, kohya's keys) are reused
// until the caption changes; SD1, trained text encoders and per-step captions are refused;
// training runs from both caches.
#include <doctest/doctest.h>

#include "../common/plugin_test.h"
#include "app/train/latent_cache.h"
#include "app/train/trainer.h"
#include "core/op_bridge.h"
#include "core/tensor_handle.h"

#include <sumi/datasets/npz.h>

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <filesystem>
#include <fstream>

namespace fs = std::filesystem;
namespace ds = sumi::datasets;

namespace {

fs::path captioned(const std::string& name) {
  const fs::path root = fs::temp_directory_path() / ("sumi_tecache_" + name);
  fs::remove_all(root);
  fs::create_directories(root / "1_circle");
  const fs::path src = fs::path(SUMI_SOURCE_DIR) / "examples" / "dataset" / "10_sks circle";
  for (int i = 0; i < 3; ++i) {
    const std::string n = "circle_0" + std::to_string(i);
    fs::copy_file(src / (n + ".png"), root / "1_circle" / (n + ".png"));
  }
  std::ofstream(root / "1_circle" / "circle_00.txt") << "a red circle";
  std::ofstream(root / "1_circle" / "circle_01.txt") << "a blue circle";
  std::ofstream(root / "1_circle" / "circle_02.txt") << "a red circle";  // a repeated caption
  return root;
}

ds::CliOptions options(const fs::path& root) {
  return {{"train_data_dir", root.string()}, {"resolution", std::string("64")}, {"caption_extension", std::string(".txt")}};
}

std::vector<ds::Dataset> build(const ds::CliOptions& cli) {
  std::vector<ds::Dataset> out;
  for (const auto& d : ds::config_from_arguments(cli).datasets) out.push_back(ds::Dataset::build(d));
  return out;
}

struct Sdxl {
  sumi::host::Registry reg;
  std::unique_ptr<sumi::host::Component> model = sumi::test::make(SUMI_KIND_MODEL, "sdxl", reg, {}, "model");
  Sdxl() {
    const std::string path = std::string(SUMI_TEST_DATA) + "/fixtures/tiny-sdxl.safetensors";
    model->check(model->vtable<sumi_model_vtable>().load(model->self(), path.c_str()), "load");
  }
  std::pair<at::Tensor, at::Tensor> encode(const std::string& caption) {
    at::NoGradGuard ng;
    const char* p = caption.c_str();
    sumi_tensor c = nullptr, pl = nullptr;
    model->check(model->vtable<sumi_model_vtable>().encode_text(model->self(), &p, 1, &c, &pl), "encode_text");
    std::pair<at::Tensor, at::Tensor> out{sumi::host::unwrap(c)[0].clone(), sumi::host::unwrap(pl)[0].clone()};
    sumi::host::release_handle(c);
    sumi::host::release_handle(pl);
    return out;
  }
};

std::pair<at::Tensor, at::Tensor> lookup(const sumi::app::TextEncoderCache& c, std::size_t item, const std::string& caption) {
  const auto [cond, pooled] = c.lookup(0, {item}, {caption});
  return {cond[0].clone(), pooled[0].clone()};
}

}  // namespace

TEST_CASE("text-encoder cache: cached conditioning equals a fresh encode_text; disk files reused until the caption changes") {
  at::set_num_threads(2);
  const auto root = captioned("mem");
  Sdxl m;
  auto cli = options(root);
  CHECK(sumi::app::TextEncoderCache::create(build(cli), cli, true, false, *m.model, false) == nullptr);  // not asked for
  cli["cache_text_encoder_outputs"] = true;
  const auto data = build(cli);
  const auto c = sumi::app::TextEncoderCache::create(data, cli, true, false, *m.model, false);
  REQUIRE(c);
  CHECK(c->summary().find("2 encoded") != std::string::npos);  // one per distinct caption
  for (const char* caption : {"a red circle", "a blue circle"}) {
    CAPTURE(caption);
    const auto [cond, pooled] = lookup(*c, 0, caption);
    const auto [want_c, want_p] = m.encode(caption);
    CHECK(at::equal(cond, want_c.to(at::kFloat)));
    CHECK(at::equal(pooled, want_p.to(at::kFloat)));
  }

  auto disk = options(root);
  disk["cache_text_encoder_outputs_to_disk"] = true;
  const auto ddata = build(disk);
  auto d1 = sumi::app::TextEncoderCache::create(ddata, disk, true, false, *m.model, false);
  CHECK(d1->summary().find("3 encoded") != std::string::npos);
  const fs::path f0 = root / "1_circle" / "circle_00_te_outputs.npz";
  CHECK(sumi::app::TextEncoderCache::npz_path(root / "1_circle" / "circle_00.png") == f0);
  REQUIRE(fs::exists(f0));
  const auto members = ds::read_npz(f0);
  REQUIRE(ds::find_member(members, "hidden_state1"));
  REQUIRE(ds::find_member(members, "hidden_state2"));
  REQUIRE(ds::find_member(members, "pool2"));
  const auto [want_c, want_p] = m.encode("a red circle");
  {
    const auto [cond, pooled] = lookup(*d1, 0, "a red circle");
    CHECK(at::equal(cond, want_c.to(at::kFloat)));
    CHECK(at::equal(pooled, want_p.to(at::kFloat)));
    CHECK(ds::find_member(members, "pool2")->shape == std::vector<int64_t>{want_p.size(0)});
    CHECK(ds::find_member(members, "hidden_state2")->shape == std::vector<int64_t>{want_c.size(0), want_p.size(0)});
  }
  auto d2 = sumi::app::TextEncoderCache::create(ddata, disk, true, false, *m.model, false);
  CHECK(d2->summary().find("0 encoded, 3 reused") != std::string::npos);
  // A changed caption rebuilds its file.
  std::ofstream(root / "1_circle" / "circle_01.txt") << "a green circle";
  const auto changed = build(disk);
  auto d3 = sumi::app::TextEncoderCache::create(changed, disk, true, false, *m.model, false);
  CHECK(d3->summary().find("1 encoded, 2 reused") != std::string::npos);
  CHECK(at::equal(lookup(*d3, 1, "a green circle").first, m.encode("a green circle").first.to(at::kFloat)));
  fs::remove_all(root);
}

TEST_CASE("text-encoder cache: kohya's refusals") {
  const auto root = captioned("refuse");
  auto cli = options(root);
  cli["cache_text_encoder_outputs"] = true;
  Sdxl m;
  const auto data = build(cli);
  CHECK_THROWS_WITH(sumi::app::TextEncoderCache::create(data, cli, false, false, *m.model, false), doctest::Contains("does not offer the cache"));
  CHECK_THROWS_WITH(sumi::app::TextEncoderCache::create(data, cli, true, true, *m.model, false),
                    doctest::Contains("network_train_unet_only"));
  for (const char* opt : {"shuffle_caption", "enable_wildcard"}) {
    auto bad = cli;
    bad[opt] = true;
    CHECK_THROWS_WITH_AS(ds::config_from_arguments(bad), doctest::Contains(opt), ds::ConfigError);
  }
  for (const char* opt : {"caption_dropout_rate", "caption_tag_dropout_rate", "token_warmup_step"}) {
    auto bad = cli;
    bad[opt] = 0.5;
    CHECK_THROWS_WITH_AS(ds::config_from_arguments(bad), doctest::Contains(opt), ds::ConfigError);
  }
  auto bad = cli;
  bad["caption_dropout_every_n_epochs"] = 2LL;
  CHECK_THROWS_WITH_AS(ds::config_from_arguments(bad), doctest::Contains("caption_dropout_every_n_epochs"), ds::ConfigError);
  fs::remove_all(root);
}

TEST_CASE("SDXL LoRA training from cached latents and text-encoder outputs") {
  at::set_num_threads(2);
  const auto root = captioned("train");
  const fs::path out = fs::temp_directory_path() / "sumi_tecache_train_out";
  fs::remove_all(out);
  sumi::app::TrainSettings s;
  s.model_path = std::string(SUMI_TEST_DATA) + "/fixtures/tiny-sdxl.safetensors";
  s.family = "sdxl";
  s.network_type = "lora";
  s.network_params = {{"dim", "4"}, {"alpha", "2"}, {"train_unet_only", "true"}};
  s.optimizer_type = "adamw";
  s.learning_rate = 1e-3;
  s.max_train_steps = 3;
  s.seed = 9;
  s.dataset_args = options(root);
  s.dataset_args["cache_text_encoder_outputs_to_disk"] = true;
  s.dataset_args["cache_latents"] = true;
  s.output_dir = out.string();
  const auto r = sumi::app::train_network(s, {SUMI_PLUGIN_DIR}, false);
  REQUIRE(r.losses.size() == 3);
  for (double l : r.losses) CHECK(std::isfinite(l));
  CHECK(fs::exists(root / "1_circle" / "circle_02_te_outputs.npz"));
  // Without train_unet_only the LoRA trains text-encoder modules: refused.
  auto te = s;
  te.network_params.erase("train_unet_only");
  CHECK_THROWS_WITH(sumi::app::train_network(te, {SUMI_PLUGIN_DIR}, false), doctest::Contains("network_train_unet_only"));
  fs::remove_all(out);
  fs::remove_all(root);
}
