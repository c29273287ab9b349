// The model-training modes of `sumi train` on tiny-sd1: Textual Inversion (new token's vectors
// trained, saved as an embedding file that the model's textual_inversion_embeddings option loads
// back; kohya's caption templates; save_state / resume), DreamBooth (the UNet trained and saved as
// one file the model loader reloads, or a diffusers folder), and the refusals of settings that
// make no sense for a mode.
#include <doctest/doctest.h>

#include "train_test_util.h"

#include "../common/plugin_test.h"
#include "app/commands.h"
#include "app/train/trainer.h"
#include "core/op_bridge.h"
#include "core/tensor_handle.h"
#include "sumi/io/safetensors_torch.h"

#include <ATen/Parallel.h>

#include <filesystem>
#include <fstream>
#include <map>

namespace fs = std::filesystem;

namespace {

using sumi::test::data;

fs::path make_dataset(const std::string& name, int images) {
  return sumi::test::example_dataset("sumi_modes_" + name, images);
}

sumi::app::TrainSettings settings(sumi::app::TrainMode mode, const fs::path& dataset, const fs::path& out) {
  auto s = sumi::test::fixture_run(mode, dataset, out);
  s.optimizer_params = {{"weight_decay", "0"}};
  s.learning_rate = 5e-3;
  s.lr_scheduler_type = "constant";
  s.max_train_steps = 4;
  s.seed = 77;
  if (mode == sumi::app::TrainMode::textual_inversion) s.num_vectors_per_token = 2;
  return s;
}

using sumi::test::load_map;

// encode_text of `prompt` by tiny-sd1 with the embedding file loaded.
at::Tensor encode_with(const std::string& embedding, const char* prompt) {
  sumi::host::Registry reg;
  auto model = sumi::test::make(SUMI_KIND_MODEL, "sd1", reg, {{"textual_inversion_embeddings", embedding}}, "model");
  const auto& mvt = model->vtable<sumi_model_vtable>();
  const std::string path = data("fixtures/tiny-sd1.safetensors");
  model->check(mvt.load(model->self(), path.c_str()), "load");
  sumi_tensor cond = nullptr, pooled = nullptr;
  model->check(mvt.encode_text(model->self(), &prompt, 1, &cond, &pooled), "encode_text");
  at::Tensor out = sumi::host::unwrap(cond).clone();
  sumi::host::release_handle(cond);
  if (pooled) sumi::host::release_handle(pooled);
  return out;
}

}  // namespace

using sumi::app::TrainMode;

TEST_CASE("train modes: kohya's mode names, and combinations that make no sense are refused") {
  CHECK(sumi::app::parse_train_mode("network") == TrainMode::network);
  CHECK(sumi::app::parse_train_mode("dreambooth") == TrainMode::dreambooth);
  CHECK(sumi::app::parse_train_mode("fine_tune") == TrainMode::dreambooth);
  CHECK(sumi::app::parse_train_mode("textual_inversion") == TrainMode::textual_inversion);
  CHECK_THROWS_WITH(sumi::app::parse_train_mode("lora"), doctest::Contains("[train] mode"));
  CHECK(sumi::app::ti_object_templates().size() == 27);
  CHECK(sumi::app::ti_style_templates().size() == 19);
  for (const auto* list : {&sumi::app::ti_object_templates(), &sumi::app::ti_style_templates()})
    for (const auto& t : *list) CHECK(t.find("{}") != std::string::npos);

  const auto dataset = make_dataset("refuse", 1);
  const fs::path out = fs::temp_directory_path() / "sumi_modes_refuse_out";
  auto ti = settings(TrainMode::textual_inversion, dataset, out);
  ti.token_string.clear();
  CHECK_THROWS_WITH(sumi::app::train_network(ti, {SUMI_PLUGIN_DIR}, false), doctest::Contains("needs token_string"));
  ti = settings(TrainMode::textual_inversion, dataset, out);
  ti.train_text_encoder = true;
  CHECK_THROWS_WITH(sumi::app::train_network(ti, {SUMI_PLUGIN_DIR}, false), doctest::Contains("train_text_encoder"));
  auto db = settings(TrainMode::dreambooth, dataset, out);
  db.save_model_as = "ckpt";
  CHECK_THROWS_WITH(sumi::app::train_network(db, {SUMI_PLUGIN_DIR}, false), doctest::Contains("no pickled .ckpt"));
  db = settings(TrainMode::dreambooth, dataset, out);
  db.init_word = "circle";
  CHECK_THROWS_WITH(sumi::app::train_network(db, {SUMI_PLUGIN_DIR}, false), doctest::Contains("Textual Inversion's"));
  auto net = settings(TrainMode::network, dataset, out);
  net.network_type = "lora";
  net.token_string = "sksemb";
  CHECK_THROWS_WITH(sumi::app::train_network(net, {SUMI_PLUGIN_DIR}, false), doctest::Contains("token_string"));
  net.token_string.clear();
  net.stop_text_encoder_training = 2;
  CHECK_THROWS_WITH(sumi::app::train_network(net, {SUMI_PLUGIN_DIR}, false), doctest::Contains("stop_text_encoder_training"));
  fs::remove_all(dataset);
}

TEST_CASE("Textual Inversion: trains the token's vectors, saves emb_params [n, width] that load back; resume is identical") {
  at::set_num_threads(2);
  const auto dataset = make_dataset("ti", 2);
  const fs::path out = fs::temp_directory_path() / "sumi_modes_ti_out";
  fs::remove_all(out);
  // No steps: the file holds the vectors as add_token initialised them (from "circle").
  auto init = settings(TrainMode::textual_inversion, dataset, out / "init");
  init.max_train_steps = 0;
  const auto r0 = sumi::app::train_network(init, {SUMI_PLUGIN_DIR}, false);
  auto s = settings(TrainMode::textual_inversion, dataset, out / "full");
  s.ti_template = "object";
  s.save_every_n_steps = 2;
  const auto r = sumi::app::train_network(s, {SUMI_PLUGIN_DIR}, false);
  REQUIRE(r.losses.size() == 4);
  CHECK(r.output_file == (out / "full" / "out.safetensors").string());
  CHECK(fs::exists(out / "full" / "out-step00000002.safetensors"));
  const auto w0 = load_map(r0.output_file), w = load_map(r.output_file);
  REQUIRE(w.size() == 1);
  REQUIRE(w.count("emb_params"));
  CHECK(w.at("emb_params").sizes().vec() == std::vector<int64_t>{2, 32});
  CHECK((w.at("emb_params").scalar_type() == at::kFloat));
  // add_token starts every vector from the init word's row; training moved them.
  CHECK(at::equal(w0.at("emb_params")[0], w0.at("emb_params")[1]));
  CHECK((w.at("emb_params") - w0.at("emb_params")).abs().max().item<double>() > 1e-4);

  // The file loads back through textual_inversion_embeddings (the token is the file stem):
  // prompts with the token see the trained vectors, others are untouched.
  const std::string trained = (out / "sksemb.safetensors").string(), initial = (out / "sksemb_init" / "sksemb.safetensors").string();
  fs::create_directories(out / "sksemb_init");
  fs::copy_file(r.output_file, trained);
  fs::copy_file(r0.output_file, initial);
  CHECK((encode_with(trained, "a photo of sksemb") - encode_with(initial, "a photo of sksemb")).abs().max().item<double>() > 1e-5);
  CHECK(at::equal(encode_with(trained, "a photo of a circle"), encode_with(initial, "a photo of a circle")));

  // save_precision converts the vectors.
  auto half = settings(TrainMode::textual_inversion, dataset, out / "half");
  half.max_train_steps = 1;
  half.save_precision = "bf16";
  const bool is_bf16 =
      load_map(sumi::app::train_network(half, {SUMI_PLUGIN_DIR}, false).output_file).at("emb_params").scalar_type() == at::kBFloat16;
  CHECK(is_bf16);

  // --save_state at step 2, --resume: the same losses and the same final vectors.
  auto first = settings(TrainMode::textual_inversion, dataset, out / "part");
  first.ti_template = "object";
  first.save_every_n_steps = 2;
  first.save_state = true;
  const auto b = sumi::app::train_network(first, {SUMI_PLUGIN_DIR}, false);
  for (size_t i = 0; i < 4; ++i) CHECK(b.losses[i] == r.losses[i]);
  auto resumed = settings(TrainMode::textual_inversion, dataset, out / "resumed");
  resumed.ti_template = "object";
  resumed.resume = (out / "part" / "out-step00000002-state").string();
  const auto c = sumi::app::train_network(resumed, {SUMI_PLUGIN_DIR}, false);
  REQUIRE(c.losses.size() == 2);
  CHECK(c.losses[0] == r.losses[2]);
  CHECK(c.losses[1] == r.losses[3]);
  CHECK(at::equal(load_map(c.output_file).at("emb_params"), w.at("emb_params")));
  // A state from another mode is refused.
  auto db = settings(TrainMode::dreambooth, dataset, out / "db");
  db.resume = resumed.resume;
  CHECK_THROWS_WITH(sumi::app::train_network(db, {SUMI_PLUGIN_DIR}, false), doctest::Contains("textual_inversion"));
  fs::remove_all(out);
  fs::remove_all(dataset);
}

TEST_CASE("DreamBooth: trains the UNet, saves one file the model loader reloads; text encoder kept when not trained") {
  at::set_num_threads(2);
  const auto dataset = make_dataset("db", 1);
  const fs::path out = fs::temp_directory_path() / "sumi_modes_db_out";
  fs::remove_all(out);
  auto s = settings(TrainMode::dreambooth, dataset, out);
  s.max_train_steps = 2;
  s.learning_rate = 1e-3;
  const auto r = sumi::app::train_network(s, {SUMI_PLUGIN_DIR}, false);
  REQUIRE(r.losses.size() == 2);
  CHECK(r.output_file == (out / "out.safetensors").string());
  const auto base = load_map(data("fixtures/tiny-sd1.safetensors")), got = load_map(r.output_file);
  int unet_changed = 0, te_changed = 0, te_seen = 0;
  for (const auto& [k, t] : got) {
    auto it = base.find(k);
    if (it == base.end() || !t.is_floating_point()) continue;
    const bool same = at::equal(t.to(at::kFloat), it->second.to(at::kFloat));
    if (k.rfind("model.diffusion_model.", 0) == 0) unet_changed += !same;
    if (k.rfind("cond_stage_model.", 0) == 0) {
      ++te_seen;
      te_changed += !same;
    }
  }
  CHECK(unet_changed > 0);
  CHECK(te_seen > 0);
  CHECK(te_changed == 0);
  {
    sumi::host::Registry reg;
    auto model = sumi::test::make(SUMI_KIND_MODEL, "sd1", reg, {}, "model");
    const auto& mvt = model->vtable<sumi_model_vtable>();
    model->check(mvt.load(model->self(), r.output_file.c_str()), "load the trained file");
  }

  // The text encoder too, stopped after step 1 (train_db's --stop_text_encoder_training): after
  // 2 steps its weights equal those after 1 step, while the UNet moved on.
  auto te = settings(TrainMode::dreambooth, dataset, out / "te2");
  te.max_train_steps = 2;
  te.learning_rate = 1e-3;
  te.train_text_encoder = true;
  te.stop_text_encoder_training = 1;
  auto te1 = te;
  te1.output_dir = (out / "te1").string();
  te1.max_train_steps = 1;
  const auto two = load_map(sumi::app::train_network(te, {SUMI_PLUGIN_DIR}, false).output_file);
  const auto one = load_map(sumi::app::train_network(te1, {SUMI_PLUGIN_DIR}, false).output_file);
  int te_moved = 0, te_after_stop = 0, unet_after_stop = 0;
  for (const auto& [k, t] : two) {
    if (!t.is_floating_point()) continue;
    const bool is_te = k.rfind("cond_stage_model.", 0) == 0, is_unet = k.rfind("model.diffusion_model.", 0) == 0;
    if (is_te) te_moved += !at::equal(t.to(at::kFloat), base.at(k).to(at::kFloat));
    if (is_te) te_after_stop += !at::equal(t, one.at(k));
    if (is_unet) unet_after_stop += !at::equal(t, one.at(k));
  }
  CHECK(te_moved > 0);
  CHECK(te_after_stop == 0);
  CHECK(unet_after_stop > 0);

  // save_model_as = "diffusers": a folder.
  auto df = settings(TrainMode::dreambooth, dataset, out / "diffusers");
  df.max_train_steps = 1;
  df.save_model_as = "diffusers";
  const auto rd = sumi::app::train_network(df, {SUMI_PLUGIN_DIR}, false);
  CHECK(rd.output_file == (out / "diffusers" / "out").string());
  CHECK(fs::is_directory(fs::path(rd.output_file) / "unet"));
  CHECK(fs::is_directory(fs::path(rd.output_file) / "text_encoder"));
  fs::remove_all(out);
  fs::remove_all(dataset);
}

TEST_CASE("sumi train: the mode follows kohya's flags; --token_string trains an embedding; bad combinations are refused") {
  at::set_num_threads(2);
  const auto dataset = make_dataset("cli", 1);
  const fs::path out = fs::temp_directory_path() / "sumi_modes_cli_out";
  fs::remove_all(out);
  const std::vector<std::string> base{"--plugin-dir", SUMI_PLUGIN_DIR, "--pretrained_model_name_or_path",
                                      data("fixtures/tiny-sd1.safetensors"), "--train_data_dir", dataset.string(),
                                      "--caption_extension", ".txt", "--resolution", "64", "--output_dir", out.string(),
                                      "--seed", "5", "--max_train_steps", "1", "--optimizer_type", "AdamW"};
  auto with = [&](std::vector<std::string> extra) {
    auto a = base;
    a.insert(a.end(), extra.begin(), extra.end());
    return a;
  };
  CHECK(sumi::app::cmd_train(with({"--token_string", "sksemb", "--init_word", "circle", "--num_vectors_per_token", "3",
                                   "--use_style_template", "--output_name", "emb", "--learning_rate", "1e-3"})) == 0);
  const auto w = load_map((out / "emb.safetensors").string());
  REQUIRE(w.count("emb_params"));
  CHECK(w.at("emb_params").sizes().vec() == std::vector<int64_t>{3, 32});

  CHECK_THROWS_WITH(sumi::app::cmd_train(with({"--network_module", "networks.lora", "--token_string", "sksemb"})),
                    doctest::Contains("token_string"));
  CHECK_THROWS_WITH(sumi::app::cmd_train(with({"--set", "train.mode=\"network\""})), doctest::Contains("needs a [network]"));
  CHECK_THROWS_WITH(sumi::app::cmd_train(with({"--set", "train.mode=\"dreambooth\"", "--network_module", "networks.lora"})),
                    doctest::Contains("makes no sense in dreambooth"));
  CHECK_THROWS_WITH(sumi::app::cmd_train(with({"--save_model_as", "ckpt"})), doctest::Contains("no pickled .ckpt"));
  CHECK_THROWS_WITH(sumi::app::cmd_train(with({"--token_string", "sksemb", "--save_model_as", "diffusers"})),
                    doctest::Contains("embeddings are saved as safetensors"));
  CHECK_THROWS_WITH(sumi::app::cmd_train(with({"--token_string", "sksemb", "--use_object_template", "--use_style_template"})),
                    doctest::Contains("choose one"));
  CHECK_THROWS_WITH(sumi::app::cmd_train(with({"--set", "train.mode=\"fine_tune\"", "--stop_text_encoder_training", "3"})),
                    doctest::Contains("DreamBooth's"));

  // --in_json: fine_tune.py, whose text encoder trains only with --train_text_encoder.
  const fs::path meta = out / "meta.json";
  {
    std::ofstream f(meta);
    f << "{\"circle_00\": {\"caption\": \"a sks circle\"}}";
  }
  const std::string img_dir = (dataset / "5_sks circle").string();
  auto te_changed = [&](const std::string& file) {
    const auto base = load_map(data("fixtures/tiny-sd1.safetensors"));
    int n = 0;
    for (const auto& [k, t] : load_map(file))
      if (k.rfind("cond_stage_model.", 0) == 0 && t.is_floating_point())
        n += !at::equal(t.to(at::kFloat), base.at(k).to(at::kFloat));
    return n;
  };
  std::vector<std::string> ft = base;
  ft[5] = img_dir;  // --train_data_dir
  ft.insert(ft.end(), {"--in_json", meta.string(), "--output_name", "ft", "--learning_rate", "1e-3"});
  CHECK(sumi::app::cmd_train(ft) == 0);
  CHECK(te_changed((out / "ft.safetensors").string()) == 0);
  ft.push_back("--train_text_encoder");
  CHECK(sumi::app::cmd_train(ft) == 0);
  CHECK(te_changed((out / "ft.safetensors").string()) > 0);
  // Without --in_json: train_db.py, text encoder trained unless stop_text_encoder_training < 0.
  CHECK(sumi::app::cmd_train(with({"--output_name", "db", "--learning_rate", "1e-3"})) == 0);
  CHECK(te_changed((out / "db.safetensors").string()) > 0);
  CHECK(sumi::app::cmd_train(with({"--output_name", "db", "--learning_rate", "1e-3", "--stop_text_encoder_training", "-1"})) == 0);
  CHECK(te_changed((out / "db.safetensors").string()) == 0);
  fs::remove_all(out);
  fs::remove_all(dataset);
}
