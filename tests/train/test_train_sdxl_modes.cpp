// The model-training modes of `sumi train` on tiny-sdxl (two text encoders, size conditioning):
// Textual Inversion saves kohya's SDXL embedding (clip_l + clip_g) that generation's
// textual_inversion_embeddings loads back; DreamBooth with train_text_encoder trains the UNet and
// both text encoders, keeps the VAE, and saves a file / diffusers folder that reloads as SDXL;
// fine-tuning over an --in_json metadata dataset; the text-encoder output cache is refused where
// text encoders train; `sumi train` follows sdxl_train.py's text-encoder default. And
// DreamBooth's --save_state / --resume on tiny-sd1.
#include <doctest/doctest.h>

#include "train_test_util.h"

#include "../common/plugin_test.h"
#include "app/commands.h"
#include "app/model_file.h"
#include "app/train/trainer.h"
#include "core/op_bridge.h"
#include "core/plugin_manager.h"
#include "core/tensor_handle.h"
#include "sumi/io/safetensors_torch.h"

#include <ATen/Parallel.h>

#include <filesystem>
#include <fstream>
#include <map>

namespace fs = std::filesystem;

namespace {

using sumi::app::TrainMode;

// The model component whose probe accepts a saved file (the reload's family).
std::string family_of(const std::string& path) {
  sumi::host::PluginManager pm;
  pm.add_search_dir(SUMI_PLUGIN_DIR);
  return sumi::app::find_model_component(pm, path);
}

using sumi::test::data;
const std::string kSdxl = data("fixtures/tiny-sdxl.safetensors");

fs::path make_dataset(const std::string& name, int images) {
  return sumi::test::example_dataset("sumi_xlmodes_" + name, images);
}

sumi::app::TrainSettings settings(TrainMode mode, const fs::path& dataset, const fs::path& out, const std::string& family = "sdxl") {
  auto s = sumi::test::fixture_run(mode, dataset, out, family);
  s.optimizer_params = {{"weight_decay", "0"}};
  s.learning_rate = 5e-3;
  s.lr_scheduler_type = "constant";
  s.max_train_steps = 3;
  s.seed = 31;
  if (mode == TrainMode::textual_inversion) s.num_vectors_per_token = 2;
  return s;
}

using sumi::test::load_map;

bool starts(const std::string& s, const char* prefix) { return s.rfind(prefix, 0) == 0; }

// The floating-point tensors under `prefix` that differ between `got` and `base`, and how many were compared.
struct Changed {
  std::vector<std::string> keys;
  int seen = 0;
  int count() const { return static_cast<int>(keys.size()); }
  std::string names() const {
    std::string s;
    for (const auto& k : keys) s += (s.empty() ? "" : ", ") + k;
    return s;
  }
};
Changed changed(const std::map<std::string, at::Tensor>& got, const std::map<std::string, at::Tensor>& base, const char* prefix) {
  Changed c;
  for (const auto& [k, t] : got) {
    if (!starts(k, prefix) || !t.is_floating_point()) continue;
    auto it = base.find(k);
    REQUIRE_MESSAGE(it != base.end(), k);
    ++c.seen;
    if (!at::equal(t.to(at::kFloat), it->second.to(at::kFloat))) c.keys.push_back(k);
  }
  return c;
}

// The conditioning tiny-sdxl computes for `prompt`, with `embedding` loaded through the model's
// textual_inversion_embeddings option (what generation's --textual_inversion_embeddings sets).
std::pair<at::Tensor, at::Tensor> encode_with(const std::string& embedding, const char* prompt) {
  sumi::host::Registry reg;
  auto model = sumi::test::make(SUMI_KIND_MODEL, "sdxl", reg, {{"textual_inversion_embeddings", embedding}}, "model");
  const auto& mvt = model->vtable<sumi_model_vtable>();
  model->check(mvt.load(model->self(), kSdxl.c_str()), "load");
  sumi_tensor cond = nullptr, pooled = nullptr;
  model->check(mvt.encode_text(model->self(), &prompt, 1, &cond, &pooled), "encode_text");
  std::pair<at::Tensor, at::Tensor> out{sumi::host::unwrap(cond).clone(), sumi::host::unwrap(pooled).clone()};
  sumi::host::release_handle(cond);
  sumi::host::release_handle(pooled);
  return out;
}

// Loads `path` through the sdxl model plugin (throws on a refusal).
void load_as_sdxl(const std::string& path) {
  sumi::host::Registry reg;
  auto model = sumi::test::make(SUMI_KIND_MODEL, "sdxl", reg, {}, "model");
  const auto& mvt = model->vtable<sumi_model_vtable>();
  model->check(mvt.load(model->self(), path.c_str()), ("load " + path).c_str());
}

double max_diff(const at::Tensor& a, const at::Tensor& b) { return (a - b).abs().max().item<double>(); }

}  // namespace

TEST_CASE("SDXL Textual Inversion: kohya's clip_l + clip_g file, loaded back by generation's embeddings option") {
  at::set_num_threads(2);
  const auto dataset = make_dataset("ti", 2);
  const fs::path out = fs::temp_directory_path() / "sumi_xlmodes_ti_out";
  fs::remove_all(out);
  // No steps: the vectors as add_token initialised them (from "circle", per tokenizer).
  auto init = settings(TrainMode::textual_inversion, dataset, out / "init");
  init.max_train_steps = 0;
  const auto r0 = sumi::app::train_network(init, {SUMI_PLUGIN_DIR}, false);
  auto s = settings(TrainMode::textual_inversion, dataset, out / "full");
  s.ti_template = "object";
  const auto r = sumi::app::train_network(s, {SUMI_PLUGIN_DIR}, false);
  REQUIRE(r.losses.size() == 3);
  for (double l : r.losses) CHECK(std::isfinite(l));
  const auto w0 = load_map(r0.output_file), w = load_map(r.output_file);
  // Exactly kohya's sdxl_train_textual_inversion keys: clip_l (text encoder 1), clip_g (text encoder 2).
  REQUIRE(w.size() == 2);
  REQUIRE(w.count("clip_l"));
  REQUIRE(w.count("clip_g"));
  CHECK(w.at("clip_l").sizes().vec() == std::vector<int64_t>{2, 32});
  CHECK(w.at("clip_g").sizes().vec() == std::vector<int64_t>{2, 32});
  CHECK((w.at("clip_l").scalar_type() == at::kFloat));
  CHECK((w.at("clip_g").scalar_type() == at::kFloat));
  // Both start from the init word's row of their own encoder's token embedding...
  {
    const auto base = load_map(kSdxl);
    const at::Tensor& emb1 = base.at("conditioner.embedders.0.transformer.text_model.embeddings.token_embedding.weight");
    const at::Tensor& emb2 = base.at("conditioner.embedders.1.model.token_embedding.weight");
    const int64_t circle = 7117;  // "circle</w>" in the CLIP BPE (both SDXL tokenizers)
    for (int64_t i = 0; i < 2; ++i) {
      CHECK(at::equal(w0.at("clip_l")[i], emb1[circle].to(at::kFloat)));
      CHECK(at::equal(w0.at("clip_g")[i], emb2[circle].to(at::kFloat)));
    }
  }
  // ...and training moved both encoders' vectors.
  CHECK(max_diff(w.at("clip_l"), w0.at("clip_l")) > 1e-4);
  CHECK(max_diff(w.at("clip_g"), w0.at("clip_g")) > 1e-4);

  // The trained file loads through textual_inversion_embeddings (the token is the file stem):
  // prompts with the token see the trained vectors (cond and pooled), others are untouched.
  fs::create_directories(out / "initial");
  const std::string trained = (out / "sksemb.safetensors").string(), initial = (out / "initial" / "sksemb.safetensors").string();
  fs::copy_file(r.output_file, trained);
  fs::copy_file(r0.output_file, initial);
  const auto with_trained = encode_with(trained, "a photo of sksemb"), with_initial = encode_with(initial, "a photo of sksemb");
  CHECK(with_trained.first.sizes().vec() == std::vector<int64_t>{1, 77, 64});
  CHECK(max_diff(with_trained.first, with_initial.first) > 1e-5);
  CHECK(max_diff(with_trained.second, with_initial.second) > 1e-5);
  // The vectors sit at the token's positions: <bos> a photo of come before them and, the encoders
  // being causal, are unchanged; the token's first position differs in both encoders' halves.
  CHECK(at::equal(with_trained.first.slice(1, 0, 4), with_initial.first.slice(1, 0, 4)));
  CHECK(max_diff(with_trained.first.select(1, 4).slice(1, 0, 32), with_initial.first.select(1, 4).slice(1, 0, 32)) > 1e-5);
  CHECK(max_diff(with_trained.first.select(1, 4).slice(1, 32, 64), with_initial.first.select(1, 4).slice(1, 32, 64)) > 1e-5);
  const auto plain_trained = encode_with(trained, "a photo of a circle"), plain_initial = encode_with(initial, "a photo of a circle");
  CHECK(at::equal(plain_trained.first, plain_initial.first));
  CHECK(at::equal(plain_trained.second, plain_initial.second));

  // The text-encoder output cache cannot hold outputs that change with the trained vectors.
  auto cached = settings(TrainMode::textual_inversion, dataset, out / "cached");
  cached.dataset_args["cache_text_encoder_outputs"] = true;
  CHECK_THROWS_WITH(sumi::app::train_network(cached, {SUMI_PLUGIN_DIR}, false), doctest::Contains("Textual Inversion"));
  fs::remove_all(out);
  fs::remove_all(dataset);
}

TEST_CASE("SDXL DreamBooth with train_text_encoder: UNet and both text encoders train, the VAE not; reloads as SDXL") {
  at::set_num_threads(2);
  const auto dataset = make_dataset("db", 1);
  const fs::path out = fs::temp_directory_path() / "sumi_xlmodes_db_out";
  fs::remove_all(out);
  auto s = settings(TrainMode::dreambooth, dataset, out);
  s.max_train_steps = 2;
  s.learning_rate = 1e-3;
  s.train_text_encoder = true;
  const auto r = sumi::app::train_network(s, {SUMI_PLUGIN_DIR}, false);
  REQUIRE(r.losses.size() == 2);
  CHECK(r.output_file == (out / "out.safetensors").string());
  const auto base = load_map(kSdxl), got = load_map(r.output_file);
  const auto unet = changed(got, base, "model.diffusion_model.");
  const auto te1 = changed(got, base, "conditioner.embedders.0.");
  const auto te2 = changed(got, base, "conditioner.embedders.1.");
  const auto vae = changed(got, base, "first_stage_model.");
  CHECK(unet.count() > 0);
  CHECK(te1.count() > 0);
  CHECK(te2.count() > 0);
  CHECK(vae.seen > 0);
  CHECK_MESSAGE(vae.count() == 0, vae.names());
  // The single file is an SDXL checkpoint again: detected by its names, loaded by the sdxl plugin.
  CHECK(family_of(r.output_file) == "sdxl");
  load_as_sdxl(r.output_file);

  // save_model_as = "diffusers": a folder with both text encoders.
  auto df = s;
  df.output_dir = (out / "diffusers").string();
  df.max_train_steps = 1;
  df.save_model_as = "diffusers";
  const auto rd = sumi::app::train_network(df, {SUMI_PLUGIN_DIR}, false);
  CHECK(rd.output_file == (out / "diffusers" / "out").string());
  for (const char* part : {"unet", "vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2"}) {
    CAPTURE(part);
    CHECK(fs::is_directory(fs::path(rd.output_file) / part));
  }
  CHECK(family_of(rd.output_file) == "sdxl");
  load_as_sdxl(rd.output_file);

  // kohya's sdxl_train: cache_text_encoder_outputs is refused with train_text_encoder...
  auto cached = s;
  cached.output_dir = (out / "cached").string();
  cached.dataset_args["cache_text_encoder_outputs"] = true;
  CHECK_THROWS_WITH(sumi::app::train_network(cached, {SUMI_PLUGIN_DIR}, false), doctest::Contains("train_text_encoder"));
  // ...and used without it: the UNet trains on the cached conditioning, the text encoders stay.
  cached.train_text_encoder = false;
  const auto rc = sumi::app::train_network(cached, {SUMI_PLUGIN_DIR}, false);
  REQUIRE(rc.losses.size() == 2);
  const auto gc = load_map(rc.output_file);
  CHECK(changed(gc, base, "model.diffusion_model.").count() > 0);
  const auto cached_te = changed(gc, base, "conditioner.embedders."), cached_vae = changed(gc, base, "first_stage_model.");
  CHECK_MESSAGE(cached_te.count() == 0, cached_te.names());
  CHECK_MESSAGE(cached_vae.count() == 0, cached_vae.names());
  // The same run without the cache computes the same conditioning each step: the same losses.
  auto uncached = cached;
  uncached.output_dir = (out / "uncached").string();
  uncached.dataset_args.erase("cache_text_encoder_outputs");
  const auto ru = sumi::app::train_network(uncached, {SUMI_PLUGIN_DIR}, false);
  REQUIRE(ru.losses.size() == 2);
  for (size_t i = 0; i < 2; ++i) CHECK(ru.losses[i] == doctest::Approx(rc.losses[i]).epsilon(1e-5));
  fs::remove_all(out);
  fs::remove_all(dataset);
}

TEST_CASE("SDXL fine-tuning over --in_json metadata: trains the UNet and saves an SDXL file") {
  at::set_num_threads(2);
  const auto dataset = make_dataset("ft", 2);
  const fs::path out = fs::temp_directory_path() / "sumi_xlmodes_ft_out";
  fs::remove_all(out);
  fs::create_directories(out);
  const fs::path meta = out / "meta.json";
  std::ofstream(meta) << R"({"circle_00": {"caption": "a sks circle"}, "circle_01": {"caption": "a red sks circle", "tags": "red"}})";
  auto s = settings(TrainMode::dreambooth, dataset / "5_sks circle", out / "run");
  s.dataset_args = {{"train_data_dir", (dataset / "5_sks circle").string()}, {"in_json", meta.string()},
                    {"resolution", std::string("64")}, {"train_batch_size", 2LL}};
  s.max_train_steps = 2;
  s.learning_rate = 1e-3;
  const auto r = sumi::app::train_network(s, {SUMI_PLUGIN_DIR}, false);
  REQUIRE(r.losses.size() == 2);
  for (double l : r.losses) CHECK(std::isfinite(l));
  const auto base = load_map(kSdxl), got = load_map(r.output_file);
  CHECK(changed(got, base, "model.diffusion_model.").count() > 0);
  const auto te = changed(got, base, "conditioner.embedders."), vae = changed(got, base, "first_stage_model.");
  CHECK_MESSAGE(te.count() == 0, te.names());
  CHECK_MESSAGE(vae.count() == 0, vae.names());
  CHECK(family_of(r.output_file) == "sdxl");
  load_as_sdxl(r.output_file);
  // The same with fine_tune.py's --train_text_encoder: both text encoders move too.
  auto with_te = s;
  with_te.output_dir = (out / "te").string();
  with_te.train_text_encoder = true;
  const auto gt = load_map(sumi::app::train_network(with_te, {SUMI_PLUGIN_DIR}, false).output_file);
  CHECK(changed(gt, base, "conditioner.embedders.0.").count() > 0);
  CHECK(changed(gt, base, "conditioner.embedders.1.").count() > 0);
  fs::remove_all(out);
  fs::remove_all(dataset);
}

TEST_CASE("DreamBooth --save_state / --resume: the identical losses and final weights") {
  at::set_num_threads(2);
  const auto dataset = make_dataset("resume", 2);
  const fs::path out = fs::temp_directory_path() / "sumi_xlmodes_resume_out";
  fs::remove_all(out);
  auto s = settings(TrainMode::dreambooth, dataset, out, "sd1");
  s.max_train_steps = 4;
  s.learning_rate = 1e-3;
  s.train_text_encoder = true;
  s.stop_text_encoder_training = 3;     // the stop must hold across the resume
  s.dataset_args["flip_aug"] = true;    // data randomness must resume too

  auto full = s;
  full.output_dir = (out / "full").string();
  const auto a = sumi::app::train_network(full, {SUMI_PLUGIN_DIR}, false);
  REQUIRE(a.losses.size() == 4);

  auto first = s;
  first.output_dir = (out / "part").string();
  first.save_every_n_steps = 2;
  first.save_state = true;
  const auto b = sumi::app::train_network(first, {SUMI_PLUGIN_DIR}, false);
  REQUIRE(b.losses.size() == 4);
  for (size_t i = 0; i < 4; ++i) CHECK(b.losses[i] == a.losses[i]);
  const fs::path state = out / "part" / "out-step00000002-state";
  REQUIRE(fs::exists(state / "train_state.json"));

  auto resumed = s;
  resumed.output_dir = (out / "resumed").string();
  resumed.resume = state.string();
  const auto c = sumi::app::train_network(resumed, {SUMI_PLUGIN_DIR}, false);
  REQUIRE(c.losses.size() == 2);
  CHECK(c.losses[0] == a.losses[2]);
  CHECK(c.losses[1] == a.losses[3]);
  const auto fa = load_map(a.output_file), fc = load_map(c.output_file);
  REQUIRE(fa.size() == fc.size());
  int differ = 0;
  for (const auto& [k, t] : fa) {
    auto it = fc.find(k);
    REQUIRE_MESSAGE(it != fc.end(), k);
    differ += !at::equal(t, it->second);
  }
  CHECK(differ == 0);
  // A network run cannot resume a DreamBooth state.
  auto net = settings(TrainMode::network, dataset, out / "net", "sd1");
  net.network_type = "lora";
  net.resume = state.string();
  CHECK_THROWS_WITH(sumi::app::train_network(net, {SUMI_PLUGIN_DIR}, false), doctest::Contains("dreambooth"));
  fs::remove_all(out);
  fs::remove_all(dataset);
}

TEST_CASE("sumi train on SDXL: sdxl_train.py trains the text encoders only with --train_text_encoder; TI saves clip_l + clip_g") {
  at::set_num_threads(2);
  const auto dataset = make_dataset("cli", 1);
  const fs::path out = fs::temp_directory_path() / "sumi_xlmodes_cli_out";
  fs::remove_all(out);
  const std::vector<std::string> base{"--plugin-dir", SUMI_PLUGIN_DIR, "--pretrained_model_name_or_path", kSdxl,
                                      "--train_data_dir", dataset.string(), "--caption_extension", ".txt",
                                      "--resolution", "64", "--output_dir", out.string(), "--seed", "5",
                                      "--max_train_steps", "1", "--optimizer_type", "AdamW", "--learning_rate", "1e-3"};
  auto with = [&](std::vector<std::string> extra) {
    auto a = base;
    a.insert(a.end(), extra.begin(), extra.end());
    return a;
  };
  const auto weights = load_map(kSdxl);
  // DreamBooth folders without --train_text_encoder: the UNet only (unlike train_db.py for SD 1.x/2.x),
  // so the text-encoder output cache applies.
  CHECK(sumi::app::cmd_train(with({"--output_name", "db"})) == 0);
  const auto db = load_map((out / "db.safetensors").string());
  CHECK(changed(db, weights, "model.diffusion_model.").count() > 0);
  const auto db_te = changed(db, weights, "conditioner.embedders.");
  CHECK_MESSAGE(db_te.count() == 0, db_te.names());
  CHECK(sumi::app::cmd_train(with({"--output_name", "cached", "--cache_text_encoder_outputs"})) == 0);
  CHECK(changed(load_map((out / "cached.safetensors").string()), weights, "conditioner.embedders.").count() == 0);
  // --train_text_encoder: both encoders; then the cache is refused.
  CHECK(sumi::app::cmd_train(with({"--output_name", "te", "--train_text_encoder"})) == 0);
  const auto te = load_map((out / "te.safetensors").string());
  CHECK(changed(te, weights, "conditioner.embedders.0.").count() > 0);
  CHECK(changed(te, weights, "conditioner.embedders.1.").count() > 0);
  CHECK_THROWS_WITH(sumi::app::cmd_train(with({"--train_text_encoder", "--cache_text_encoder_outputs"})),
                    doctest::Contains("train_text_encoder"));
  // --token_string: kohya's SDXL embedding.
  CHECK(sumi::app::cmd_train(with({"--token_string", "sksemb", "--init_word", "circle", "--output_name", "emb"})) == 0);
  const auto emb = load_map((out / "emb.safetensors").string());
  REQUIRE(emb.size() == 2);
  CHECK(emb.at("clip_l").sizes().vec() == std::vector<int64_t>{1, 32});
  CHECK(emb.at("clip_g").sizes().vec() == std::vector<int64_t>{1, 32});
  fs::remove_all(out);
  fs::remove_all(dataset);
}
