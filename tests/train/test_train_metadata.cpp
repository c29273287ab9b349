// The metadata of trained files, as kohya writes it: modelspec.* for LoRA / Textual Inversion /
// checkpoints (architecture, implementation, resolution, prediction type and the optional keys
// of library/sai_model_spec.py), ss_* with --training_comment and --no_metadata's minimum set,
// and the whole chain on tiny-sd1: a LoRA, an embedding and a DreamBooth checkpoint read back with
// their metadata, the kohya flags through `sumi train`, and flags a mode has no place for refused.
#include <doctest/doctest.h>

#include "train_test_util.h"
#include "../common/plugin_test.h"

#include "app/commands.h"
#include "app/tools/plugin_model.h"
#include "app/train/network_file.h"
#include "app/train/train_metadata.h"
#include "app/train/trainer.h"
#include "sumi/io/safetensors_torch.h"

#include <ATen/Parallel.h>

#include <stdlib.h>

#include <filesystem>
#include <regex>
#include <set>

namespace fs = std::filesystem;
using sumi::app::ModelSpec;
using sumi::app::ModelSpecKind;
using sumi::app::TrainMode;

namespace {

const char* const kSai = "https://github.com/Stability-AI/generative-models";

using sumi::test::data;

sumi::app::TrainSettings settings(TrainMode mode, const fs::path& dataset, const fs::path& out) {
  auto s = sumi::test::fixture_run(mode, dataset, out);
  s.learning_rate = 1e-3;
  s.max_train_steps = 1;
  s.seed = 3;
  if (mode == TrainMode::network) {
    s.network_type = "lora";
    s.network_params = {{"dim", "4"}, {"alpha", "2"}};
  }
  return s;
}

std::map<std::string, std::string> metadata_of(const std::string& file) {
  return sumi::io::SafetensorsFile::open(file)->metadata();
}

std::set<std::string> keys_of(const std::map<std::string, std::string>& m) {
  std::set<std::string> k;
  for (const auto& [key, v] : m) k.insert(key);
  return k;
}

}  // namespace

TEST_CASE("modelspec: kohya's architecture, implementation, resolution and prediction type per kind and family") {
  struct Row {
    ModelSpecKind kind;
    const char* family;
    bool v;
    const char* arch;
    const char* impl;
    const char* reso;  // with the family's default resolution
  };
  const Row rows[] = {
      {ModelSpecKind::lora, "sd1", false, "stable-diffusion-v1/lora", "diffusers", "512x512"},
      {ModelSpecKind::lora, "sd2", false, "stable-diffusion-v2-512/lora", "diffusers", "512x512"},
      {ModelSpecKind::lora, "sd2", true, "stable-diffusion-v2-768-v/lora", "diffusers", "768x768"},
      {ModelSpecKind::lora, "sdxl", false, "stable-diffusion-xl-v1-base/lora", kSai, "1024x1024"},
      {ModelSpecKind::textual_inversion, "sd1", false, "stable-diffusion-v1/textual-inversion", kSai, "512x512"},
      {ModelSpecKind::textual_inversion, "sd2", true, "stable-diffusion-v2-768-v/textual-inversion", kSai, "768x768"},
      {ModelSpecKind::textual_inversion, "sdxl", false, "stable-diffusion-xl-v1-base/textual-inversion", kSai, "1024x1024"},
      {ModelSpecKind::checkpoint, "sd1", false, "stable-diffusion-v1", kSai, "512x512"},
      {ModelSpecKind::checkpoint, "sd2", false, "stable-diffusion-v2-512", kSai, "512x512"},
      {ModelSpecKind::checkpoint, "sd2", true, "stable-diffusion-v2-768-v", kSai, "768x768"},
      {ModelSpecKind::checkpoint, "sdxl", false, "stable-diffusion-xl-v1-base", kSai, "1024x1024"},
  };
  ::setenv("TZ", "UTC", 1);
  ::tzset();
  for (const auto& r : rows) {
    CAPTURE(r.arch);
    ModelSpec spec;
    spec.kind = r.kind;
    // The model's part as the SD plugin describes it before load (what the tools write).
    sumi::app::set_modelspec_model(spec, sumi::app::tools::describe_for_kohya(sumi::test::plugins(), r.family, r.v), r.v);
    spec.title = "t";
    spec.timestamp = 1700000000;
    const auto m = sumi::app::modelspec_metadata(spec);
    CHECK(m.at("modelspec.sai_model_spec") == "1.0.0");
    CHECK(m.at("modelspec.architecture") == r.arch);
    CHECK(m.at("modelspec.implementation") == r.impl);
    CHECK(m.at("modelspec.resolution") == r.reso);
    CHECK(m.at("modelspec.prediction_type") == (r.v ? "v" : "epsilon"));
    CHECK(m.at("modelspec.title") == "t");
    CHECK(m.at("modelspec.date") == "2023-11-14T22:13:20");  // datetime.fromtimestamp(...).isoformat()
    // kohya drops the optional keys it has no value for.
    CHECK(keys_of(m) == std::set<std::string>{"modelspec.sai_model_spec", "modelspec.architecture", "modelspec.implementation",
                                               "modelspec.title", "modelspec.resolution", "modelspec.date",
                                               "modelspec.prediction_type"});
  }
  ModelSpec spec;
  spec.architecture = "stable-diffusion-v1";
  spec.width = 640;
  spec.height = 448;
  spec.author = "me";
  spec.description = "d";
  spec.license = "openrail";
  spec.tags = "a,b";
  spec.timesteps = std::make_pair(int64_t{100}, int64_t{900});
  spec.clip_skip = 2;
  const auto m = sumi::app::modelspec_metadata(spec);
  CHECK(m.at("modelspec.resolution") == "640x448");
  CHECK(m.at("modelspec.author") == "me");
  CHECK(m.at("modelspec.description") == "d");
  CHECK(m.at("modelspec.license") == "openrail");
  CHECK(m.at("modelspec.tags") == "a,b");
  CHECK(m.at("modelspec.timestep_range") == "100,900");
  CHECK(m.at("modelspec.encoder_layer") == "2");
}

TEST_CASE("run metadata: title defaults to output_name; timestep range, clip_skip, training_comment, no_metadata") {
  sumi::app::TrainSettings s;
  s.family = "sd2";
  s.v_parameterization = true;
  // What the SD 2 plugin describes for a v-prediction model.
  sumi::app::ModelDescription d;
  d.kohya_v2 = true;
  d.kohya_base_model_version = "sd_v2_768_v";
  d.modelspec_architecture = "stable-diffusion-v2-768-v";
  s.output_name = "mylora";
  s.network_type = "lora";
  s.network_params = {{"dim", "8"}, {"alpha", "4"}, {"conv_dim", "2"}};
  s.network_args = {{"conv_dim", "2"}};
  s.model_params = {{"clip_skip", "1"}};
  auto spec = sumi::app::run_modelspec(s, ModelSpecKind::lora, 64, 96, d);
  CHECK(spec.title == "mylora");
  CHECK(!spec.timesteps);
  CHECK(!spec.clip_skip);
  CHECK(spec.width == 64);
  CHECK(spec.height == 96);
  s.metadata_title = "My LoRA";
  s.metadata_author = "someone";
  s.noise.min_timestep = 200;
  s.model_params["clip_skip"] = "2";
  spec = sumi::app::run_modelspec(s, ModelSpecKind::lora, 64, 96, d);
  CHECK(spec.title == "My LoRA");
  CHECK(spec.author == std::optional<std::string>("someone"));
  REQUIRE(spec.timesteps);
  CHECK(spec.timesteps->first == 200);
  CHECK(spec.timesteps->second == 1000);
  CHECK(spec.clip_skip == std::optional<int64_t>(2));

  sumi::app::RunFacts run;
  run.step = 7;
  run.epoch = 2;
  run.width = run.height = 64;
  auto full = sumi::app::network_metadata(s, run, d);
  CHECK(full.at("ss_training_comment") == "None");
  CHECK(full.at("ss_steps") == "7");
  CHECK(full.at("ss_v2") == "True");
  CHECK(full.at("ss_base_model_version") == "sd_v2_768_v");
  CHECK(full.at("ss_resolution") == "(64, 64)");
  s.training_comment = "trained on circles";
  CHECK(sumi::app::network_metadata(s, run, d).at("ss_training_comment") == "trained on circles");
  // --no_metadata: train_util.SS_METADATA_MINIMUM_KEYS only.
  s.no_metadata = true;
  const auto minimum = sumi::app::network_metadata(s, run, d);
  CHECK(keys_of(minimum) == std::set<std::string>{"ss_v2", "ss_base_model_version", "ss_network_module", "ss_network_dim",
                                                   "ss_network_alpha", "ss_network_args"});
  CHECK(minimum.at("ss_network_module") == "networks.lora");
  CHECK(minimum.at("ss_network_dim") == "8");
  CHECK(minimum.at("ss_network_alpha") == "4");
  CHECK(minimum.at("ss_network_args") == "{\"conv_dim\": \"2\"}");  // json.dumps of the given args
}

TEST_CASE("trained files carry kohya's metadata: LoRA (full and no_metadata), embedding, checkpoint; diffusers folders none") {
  at::set_num_threads(2);
  ::setenv("TZ", "UTC", 1);
  ::tzset();
  const auto dataset = sumi::test::example_dataset("sumi_meta_data", 1);
  const fs::path out = fs::temp_directory_path() / "sumi_meta_out";
  fs::remove_all(out);

  // LoRA with the comment and every metadata_* key.
  auto lora = settings(TrainMode::network, dataset, out / "lora");
  lora.training_comment = "circles, 1 step";
  lora.metadata_title = "Circle LoRA";
  lora.metadata_author = "sumi tests";
  lora.metadata_description = "a test LoRA";
  lora.metadata_license = "CC0";
  lora.metadata_tags = "circle,test";
  const auto r = sumi::app::train_network(lora, {SUMI_PLUGIN_DIR}, false);
  auto md = metadata_of(r.output_file);
  CHECK(md.at("ss_training_comment") == "circles, 1 step");
  CHECK(md.at("ss_steps") == "1");
  CHECK(md.at("modelspec.architecture") == "stable-diffusion-v1/lora");
  CHECK(md.at("modelspec.implementation") == "diffusers");
  CHECK(md.at("modelspec.title") == "Circle LoRA");
  CHECK(md.at("modelspec.author") == "sumi tests");
  CHECK(md.at("modelspec.description") == "a test LoRA");
  CHECK(md.at("modelspec.license") == "CC0");
  CHECK(md.at("modelspec.tags") == "circle,test");
  CHECK(md.at("modelspec.resolution") == "64x64");
  CHECK(md.at("modelspec.prediction_type") == "epsilon");
  CHECK(std::regex_match(md.at("modelspec.date"), std::regex(R"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)")));
  CHECK(md.at("sshs_model_hash") == sumi::app::safetensors_hashes(r.output_file).model_hash);

  // --no_metadata: the minimum ss_* keys, the model spec and the hashes (train_network.py +
  // networks/lora.py save_weights).
  auto bare = settings(TrainMode::network, dataset, out / "bare");
  bare.no_metadata = true;
  const auto rb = sumi::app::train_network(bare, {SUMI_PLUGIN_DIR}, false);
  md = metadata_of(rb.output_file);
  std::set<std::string> ss;
  for (const auto& [k, v] : md)
    if (k.rfind("modelspec.", 0) != 0) ss.insert(k);
  // No --network_args given: no ss_network_args (kohya writes it only for given args).
  CHECK(ss == std::set<std::string>{"ss_v2", "ss_base_model_version", "ss_network_module", "ss_network_dim", "ss_network_alpha",
                                    "sshs_model_hash", "sshs_legacy_hash"});
  CHECK(md.at("modelspec.title") == "out");
  CHECK(md.at("sshs_model_hash") == sumi::app::safetensors_hashes(rb.output_file).model_hash);

  // Textual Inversion embedding: train_textual_inversion.py's sai model spec, no ss_* keys.
  auto ti = settings(TrainMode::textual_inversion, dataset, out / "ti");
  ti.metadata_author = "sumi tests";
  const auto rt = sumi::app::train_network(ti, {SUMI_PLUGIN_DIR}, false);
  md = metadata_of(rt.output_file);
  CHECK(md.at("modelspec.architecture") == "stable-diffusion-v1/textual-inversion");
  CHECK(md.at("modelspec.implementation") == kSai);
  CHECK(md.at("modelspec.title") == "out");
  CHECK(md.at("modelspec.author") == "sumi tests");
  CHECK(md.at("modelspec.resolution") == "64x64");
  for (const auto& [k, v] : md) CHECK_MESSAGE(k.rfind("ss_", 0) != 0, k);
  const auto emb = sumi::io::load_all(rt.output_file);
  REQUIRE(emb.size() == 1);
  CHECK(emb.front().first == "emb_params");
  CHECK(emb.front().second.sizes().vec() == std::vector<int64_t>{1, 32});
  CHECK(fs::exists(out / "ti"));
  for (const auto& e : fs::directory_iterator(out / "ti"))  // no temporary left behind
    CHECK_MESSAGE(e.path().filename().string().find("tmp") == std::string::npos, e.path().string());

  // DreamBooth checkpoint: the model spec of a Stable Diffusion checkpoint; every tensor of the
  // fixture is there and reads back.
  auto db = settings(TrainMode::dreambooth, dataset, out / "db");
  db.metadata_title = "Circle model";
  const auto rd = sumi::app::train_network(db, {SUMI_PLUGIN_DIR}, false);
  const auto file = sumi::io::SafetensorsFile::open(rd.output_file);
  md = file->metadata();
  CHECK(md.at("modelspec.architecture") == "stable-diffusion-v1");
  CHECK(md.at("modelspec.implementation") == kSai);
  CHECK(md.at("modelspec.title") == "Circle model");
  CHECK(md.at("modelspec.prediction_type") == "epsilon");
  const auto base = sumi::io::SafetensorsFile::open(data("fixtures/tiny-sd1.safetensors"));
  CHECK(file->tensors().size() == base->tensors().size());
  CHECK(sumi::io::load_all(rd.output_file).size() == base->tensors().size());

  // A diffusers folder: no model spec anywhere, as diffusers' save_pretrained writes none.
  auto df = settings(TrainMode::dreambooth, dataset, out / "df");
  df.save_model_as = "diffusers";
  const auto rf = sumi::app::train_network(df, {SUMI_PLUGIN_DIR}, false);
  for (const auto& e : fs::recursive_directory_iterator(rf.output_file))
    if (e.path().extension() == ".safetensors")
      for (const auto& [k, v] : metadata_of(e.path().string())) CHECK_MESSAGE(k.rfind("modelspec.", 0) != 0, e.path().string());

  fs::remove_all(out);
  fs::remove_all(dataset);
}

TEST_CASE("sumi train: kohya's metadata flags reach the file; train_network.py's flags are refused elsewhere") {
  at::set_num_threads(2);
  const auto dataset = sumi::test::example_dataset("sumi_meta_cli", 1);
  const fs::path out = fs::temp_directory_path() / "sumi_meta_cli_out";
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
  CHECK(sumi::app::cmd_train(with({"--network_module", "networks.lora", "--network_dim", "4", "--output_name", "cli",
                                   "--training_comment", "from the CLI", "--metadata_title", "CLI LoRA", "--metadata_author",
                                   "A", "--metadata_description", "D", "--metadata_license", "L", "--metadata_tags", "t1,t2",
                                   "--min_timestep", "100"})) == 0);
  auto md = metadata_of((out / "cli.safetensors").string());
  CHECK(md.at("ss_training_comment") == "from the CLI");
  CHECK(md.at("modelspec.title") == "CLI LoRA");
  CHECK(md.at("modelspec.author") == "A");
  CHECK(md.at("modelspec.description") == "D");
  CHECK(md.at("modelspec.license") == "L");
  CHECK(md.at("modelspec.tags") == "t1,t2");
  CHECK(md.at("modelspec.timestep_range") == "100,1000");
  CHECK(md.count("modelspec.encoder_layer") == 0);  // clip_skip left at 1

  CHECK(sumi::app::cmd_train(with({"--network_module", "networks.lora", "--output_name", "bare", "--no_metadata"})) == 0);
  md = metadata_of((out / "bare.safetensors").string());
  CHECK(md.count("ss_network_module") == 1);
  CHECK(md.count("ss_steps") == 0);
  CHECK(md.count("ss_training_comment") == 0);

  CHECK(sumi::app::cmd_train(with({"--token_string", "sksemb", "--output_name", "emb", "--metadata_title", "Emb"})) == 0);
  CHECK(metadata_of((out / "emb.safetensors").string()).at("modelspec.title") == "Emb");

  CHECK_THROWS_WITH(sumi::app::cmd_train(with({"--token_string", "sksemb", "--no_metadata"})),
                    doctest::Contains("no_metadata (--no_metadata) is train_network.py's"));
  CHECK_THROWS_WITH(sumi::app::cmd_train(with({"--training_comment", "x"})),
                    doctest::Contains("training_comment (--training_comment) is train_network.py's"));
  fs::remove_all(out);
  fs::remove_all(dataset);
}

// Issue 12, item 7: each network's own metadata, as train_network.py writes it for that module.
TEST_CASE("network metadata per network: the module as given, only the given network_args, dim / alpha from the plugin") {
  at::set_num_threads(2);
  const auto dataset = sumi::test::example_dataset("sumi_meta_nets", 1);
  const fs::path out = fs::temp_directory_path() / "sumi_meta_nets_out";
  fs::remove_all(out);
  const std::vector<std::string> base{"--plugin-dir", SUMI_PLUGIN_DIR, "--pretrained_model_name_or_path",
                                      data("fixtures/tiny-sd1.safetensors"), "--train_data_dir", dataset.string(),
                                      "--caption_extension", ".txt", "--resolution", "64", "--output_dir", out.string(),
                                      "--seed", "5", "--max_train_steps", "1", "--optimizer_type", "AdamW"};
  auto train = [&](std::vector<std::string> extra) {
    auto a = base;
    a.insert(a.end(), extra.begin(), extra.end());
    REQUIRE(sumi::app::cmd_train(a) == 0);
    return metadata_of((out / (a[a.size() - 1] + ".safetensors")).string());
  };
  // OFT: dim = blocks, alpha = the constraint; the args exactly as typed, schema defaults left out;
  // train_network.py gives every network file the "/lora" model spec (get_sai_model_spec(lora=True)).
  auto md = train({"--network_module", "networks.oft", "--network_dim", "4", "--network_alpha", "1e-3", "--network_args",
                   "enable_conv=True", "--output_name", "oft"});
  CHECK(md.at("ss_network_module") == "networks.oft");
  CHECK(md.at("ss_network_dim") == "4");
  CHECK(md.at("ss_network_alpha") == "0.001");
  CHECK(md.at("ss_network_args") == "{\"enable_conv\": \"True\"}");
  CHECK(md.at("modelspec.architecture") == "stable-diffusion-v1/lora");
  // LyCORIS: kohya imports lycoris.kohya; the file says so, not networks.lycoris.kohya.
  md = train({"--network_module", "lycoris.kohya", "--network_args", "algo=loha", "conv_dim=2", "--output_name", "loha"});
  CHECK(md.at("ss_network_module") == "lycoris.kohya");
  CHECK(md.at("ss_network_args") == "{\"algo\": \"loha\", \"conv_dim\": \"2\"}");
  CHECK(md.at("ss_network_dim") == "4");  // the plugin's rank (kohya writes --network_dim; none given: the default)
  // A plugin given by path: written as given; no --network_args, no ss_network_args.
  const std::string path = std::string(SUMI_PLUGIN_DIR) + "/sumi_dylora.so";
  md = train({"--network_module", path, "--network_dim", "2", "--output_name", "dy"});
  CHECK(md.at("ss_network_module") == path);
  CHECK(md.count("ss_network_args") == 0);
  CHECK(md.at("ss_network_dim") == "2");
  fs::remove_all(out);

  // A network whose metadata slot gives neither dim nor alpha (an output-scaling adapter): no LoRA values.
  sumi::app::TrainSettings s;
  s.network_type = "ia3";
  s.network_params = {{"dim", "4"}};
  sumi::app::NetworkFacts facts;
  facts.component = "ia3";
  facts.has_metadata = true;
  const auto m = sumi::app::network_metadata(s, sumi::app::RunFacts{}, sumi::app::ModelDescription{}, &facts);
  CHECK(m.count("ss_network_dim") == 0);
  CHECK(m.count("ss_network_alpha") == 0);
  CHECK(m.at("ss_network_module") == "networks.ia3");
}
