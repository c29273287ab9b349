// `sumi train` options around the model-training modes and saving: kohya's --save_last_n_* pruning,
// sdxl_train's --block_lr split of the UNet (checked against kohya's rule on the original names)
// and --learning_rate_te1/2, Textual Inversion's --weights, sample images while training the model
// itself, and the refusals of these options where they make no sense.
#include <doctest/doctest.h>

#include "train_test_util.h"

#include "../common/plugin_test.h"
#include "app/commands.h"
#include "app/image_io.h"
#include "app/model_description.h"
#include "app/tools/tools.h"
#include "app/train/trainer.h"
#include "sumi/io/safetensors_torch.h"
#include "nn/key_map.h"

#include <ATen/Parallel.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <set>

namespace fs = std::filesystem;
using sumi::app::TrainMode;

namespace {

using sumi::test::data;

sumi::app::TrainSettings settings(TrainMode mode, const fs::path& dataset, const fs::path& out, const std::string& family = "sd1") {
  auto s = sumi::test::fixture_run(mode, dataset, out, family);
  s.optimizer_params = {{"weight_decay", "0"}};
  s.learning_rate = 1e-3;
  s.max_train_steps = 3;
  s.seed = 5;
  if (mode == TrainMode::network) {
    s.network_type = "lora";
    s.network_params = {{"dim", "2"}, {"alpha", "1"}};
  }
  if (mode == TrainMode::textual_inversion) {
    s.num_vectors_per_token = 2;
    s.ti_template = "object";  // the token is in every caption
  }
  return s;
}

using sumi::test::load_map;

std::set<std::string> names_in(const fs::path& dir) {
  std::set<std::string> out;
  for (const auto& e : fs::directory_iterator(dir)) out.insert(e.path().filename().string());
  return out;
}

// sdxl_train.py's --block_lr count: time/label embedding, input_blocks 0-8, middle_block 0-2,
// output_blocks 0-8, out.
constexpr int kSdxlBlocks = 23;

// kohya's sdxl_train.get_block_params_to_optimize on an original-layout UNet name.
int kohya_block(const std::string& name) {
  auto index = [&](const char* prefix) { return std::stoi(name.substr(std::string(prefix).size())); };
  if (name.rfind("time_embed.", 0) == 0 || name.rfind("label_emb.", 0) == 0) return 0;
  if (name.rfind("input_blocks.", 0) == 0) return 1 + index("input_blocks.");
  if (name.rfind("middle_block.", 0) == 0) return 10 + index("middle_block.");
  if (name.rfind("output_blocks.", 0) == 0) return 13 + index("output_blocks.");
  if (name.rfind("out.", 0) == 0) return 22;
  return -1;
}

}  // namespace

TEST_CASE("block_lr: the SDXL model's described block layout puts the diffusers UNet names in kohya's 23 blocks") {
  sumi::host::Registry reg;
  auto model = sumi::test::make(SUMI_KIND_MODEL, "sdxl", reg, {}, "model");
  const std::string path = data("fixtures/tiny-sdxl.safetensors");
  model->check(model->vtable<sumi_model_vtable>().load(model->self(), path.c_str()), "load");
  const auto d = sumi::app::describe(*model);
  REQUIRE(d.block_lr);
  CHECK(d.block_lr->blocks == kSdxlBlocks);
  std::ifstream f(data("fixtures/tiny-sdxl.keys.txt"));
  REQUIRE(f);
  const std::string prefix = "model.diffusion_model.";
  std::set<int> seen;
  int n = 0;
  for (std::string line; std::getline(f, line);) {
    const std::string key = line.substr(0, line.find('\t'));
    if (key.rfind(prefix, 0) != 0) continue;
    const std::string original = key.substr(prefix.size());
    const auto diffusers = sumi::nn::unet_key_to_diffusers(original, 2);
    REQUIRE(diffusers);
    const int want = kohya_block(original);
    REQUIRE(want >= 0);
    CHECK_MESSAGE(d.block_lr->block_of(*diffusers) == want, original, " -> ", *diffusers);
    seen.insert(want);
    ++n;
  }
  CHECK(n > 100);
  CHECK(seen.size() == static_cast<size_t>(kSdxlBlocks));
  CHECK(d.block_lr->block_of("encoder.conv_in.weight") == -1);
  CHECK(d.text_encoders == std::vector<std::string>{"text_encoder", "text_encoder_2"});
  CHECK(d.added_conditioning.size() == 6);

  // SD1 describes no block layout and one text encoder.
  auto sd1 = sumi::test::make(SUMI_KIND_MODEL, "sd1", reg, {}, "model_sd1");
  const std::string sd1_path = data("fixtures/tiny-sd1.safetensors");
  sd1->check(sd1->vtable<sumi_model_vtable>().load(sd1->self(), sd1_path.c_str()), "load");
  const auto d1 = sumi::app::describe(*sd1);
  CHECK_FALSE(d1.block_lr);
  CHECK(d1.text_encoders.size() == 1);
  CHECK(d1.added_conditioning.empty());
}

TEST_CASE("SDXL fine-tuning: block_lr trains only blocks with a learning rate; learning_rate_te1/2 per text encoder") {
  at::set_num_threads(2);
  const auto dataset = sumi::test::example_dataset("sumi_opts_blocklr", 1);
  const fs::path out = fs::temp_directory_path() / "sumi_opts_blocklr_out";
  fs::remove_all(out);
  auto s = settings(TrainMode::dreambooth, dataset, out, "sdxl");
  s.max_train_steps = 2;
  s.train_text_encoder = true;
  s.block_lr.assign(kSdxlBlocks, 1e-3);
  for (int b : {0, 1, 5, 11, 14, 22}) s.block_lr[static_cast<size_t>(b)] = 0;  // not trained
  s.text_encoder_lr1 = 1e-3;
  s.text_encoder_lr2 = 0;
  const auto r = sumi::app::train_network(s, {SUMI_PLUGIN_DIR}, false);
  REQUIRE(r.losses.size() == 2);
  const auto base = load_map(data("fixtures/tiny-sdxl.safetensors")), got = load_map(r.output_file);
  const std::string unet = "model.diffusion_model.";
  std::map<int, int> changed, total;
  int te1_changed = 0, te2_changed = 0;
  for (const auto& [k, t] : got) {
    auto it = base.find(k);
    REQUIRE(it != base.end());
    const bool same = at::equal(t.to(at::kFloat), it->second.to(at::kFloat));
    // CLIP-G's logit_scale is not part of the text model (diffusers drops it; the writer puts back
    // OpenCLIP's constant), so it is no trained weight.
    if (k.find("logit_scale") != std::string::npos) continue;
    if (k.rfind(unet, 0) == 0) {
      const int b = kohya_block(k.substr(unet.size()));
      ++total[b];
      if (!same) ++changed[b];
    } else if (k.rfind("conditioner.embedders.0.", 0) == 0) {
      te1_changed += !same;
    } else if (k.rfind("conditioner.embedders.1.", 0) == 0) {
      te2_changed += !same;
    } else {
      CHECK_MESSAGE(same, k);  // the VAE is not trained
    }
  }
  for (int b = 0; b < kSdxlBlocks; ++b) {
    if (s.block_lr[static_cast<size_t>(b)] == 0)
      CHECK_MESSAGE(changed[b] == 0, "block ", b);
    else
      CHECK_MESSAGE(changed[b] > 0, "block ", b);
  }
  CHECK(te1_changed > 0);
  CHECK(te2_changed == 0);  // learning_rate_te2 = 0

  auto bad = settings(TrainMode::dreambooth, dataset, out, "sdxl");
  bad.block_lr = {1e-3, 1e-3};
  CHECK_THROWS_WITH(sumi::app::train_network(bad, {SUMI_PLUGIN_DIR}, false), doctest::Contains("expected 23"));
  bad = settings(TrainMode::dreambooth, dataset, out);  // sd1
  bad.block_lr.assign(kSdxlBlocks, 1e-3);
  CHECK_THROWS_WITH(sumi::app::train_network(bad, {SUMI_PLUGIN_DIR}, false), doctest::Contains("sdxl_train.py"));
  bad = settings(TrainMode::network, dataset, out, "sdxl");
  bad.text_encoder_lr2 = 1e-4;
  CHECK_THROWS_WITH(sumi::app::train_network(bad, {SUMI_PLUGIN_DIR}, false), doctest::Contains("use text_encoder_lr"));
  fs::remove_all(out);
  fs::remove_all(dataset);
}

TEST_CASE("save_last_n_steps / _state and save_last_n_epochs remove the older saves as kohya does") {
  at::set_num_threads(2);
  const auto dataset = sumi::test::example_dataset("sumi_opts_lastn", 1);
  const fs::path out = fs::temp_directory_path() / "sumi_opts_lastn_out";
  fs::remove_all(out);
  auto s = settings(TrainMode::network, dataset, out);
  s.max_train_steps = 6;
  s.save_every_n_steps = 1;
  s.save_last_n_steps = 2;
  s.save_state = true;
  s.save_last_n_steps_state = 1;
  sumi::app::train_network(s, {SUMI_PLUGIN_DIR}, false);
  // kohya: at step n the save of step n - last_n - 1 (rounded down to save_every_n_steps) goes.
  // Saves at steps 1..5; step 4 removes step 1, step 5 removes step 2 (files, last 2);
  // states (last 1): step 3 removes 1, step 4 removes 2, step 5 removes 3.
  CHECK(names_in(out) == std::set<std::string>{"out-step00000003.safetensors", "out-step00000004.safetensors",
                                                "out-step00000005.safetensors", "out-step00000004-state",
                                                "out-step00000005-state", "out.safetensors", "out-state",
                                                "out.loss.csv", "out.loss.png"});

  // Epochs: 1 image x 5 repeats = 5 steps per epoch; 4 epochs, a save every epoch, keep 2.
  const fs::path out2 = out / "epochs";
  auto e = settings(TrainMode::network, dataset, out2);
  e.max_train_steps = 20;
  e.save_every_n_epochs = 1;
  e.save_last_n_epochs = 2;
  sumi::app::train_network(e, {SUMI_PLUGIN_DIR}, false);
  CHECK(names_in(out2) == std::set<std::string>{"out-000002.safetensors", "out-000003.safetensors", "out.safetensors",
                                                 "out.loss.csv", "out.loss.png"});

  auto bad = settings(TrainMode::network, dataset, out / "bad");
  bad.save_last_n_steps = 2;
  CHECK_THROWS_WITH(sumi::app::train_network(bad, {SUMI_PLUGIN_DIR}, false), doctest::Contains("save_every_n_steps"));
  bad = settings(TrainMode::network, dataset, out / "bad");
  bad.save_every_n_epochs = 1;
  bad.save_last_n_epochs_state = 1;
  CHECK_THROWS_WITH(sumi::app::train_network(bad, {SUMI_PLUGIN_DIR}, false), doctest::Contains("save_state"));
  fs::remove_all(out);
  fs::remove_all(dataset);
}

TEST_CASE("Textual Inversion --weights: the token starts from the file's vectors; a wrong count is refused") {
  at::set_num_threads(2);
  const auto dataset = sumi::test::example_dataset("sumi_opts_tiweights", 1);
  const fs::path out = fs::temp_directory_path() / "sumi_opts_tiweights_out";
  fs::remove_all(out);
  // A trained embedding, then a run starting from it at learning rate 0 saves it unchanged.
  auto first = settings(TrainMode::textual_inversion, dataset, out / "a");
  const auto a = sumi::app::train_network(first, {SUMI_PLUGIN_DIR}, false);
  const at::Tensor trained = load_map(a.output_file).at("emb_params");
  auto from = settings(TrainMode::textual_inversion, dataset, out / "b");
  from.ti_weights = a.output_file;
  from.learning_rate = 0;
  from.max_train_steps = 1;
  const auto b = sumi::app::train_network(from, {SUMI_PLUGIN_DIR}, false);
  CHECK(at::equal(load_map(b.output_file).at("emb_params"), trained));
  // The same run from init_word saves other vectors: --weights replaced them.
  from.ti_weights.clear();
  from.output_dir = (out / "c").string();
  CHECK_FALSE(at::equal(load_map(sumi::app::train_network(from, {SUMI_PLUGIN_DIR}, false).output_file).at("emb_params"), trained));

  auto three = settings(TrainMode::textual_inversion, dataset, out / "d");
  three.num_vectors_per_token = 3;
  three.ti_weights = a.output_file;
  CHECK_THROWS_WITH(sumi::app::train_network(three, {SUMI_PLUGIN_DIR}, false), doctest::Contains("num_vectors_per_token"));
  auto missing = settings(TrainMode::textual_inversion, dataset, out / "d");
  missing.ti_weights = (out / "nope.safetensors").string();
  CHECK_THROWS_WITH(sumi::app::train_network(missing, {SUMI_PLUGIN_DIR}, false), doctest::Contains("nope.safetensors"));
  auto db = settings(TrainMode::dreambooth, dataset, out / "d");
  db.ti_weights = a.output_file;
  CHECK_THROWS_WITH(sumi::app::train_network(db, {SUMI_PLUGIN_DIR}, false), doctest::Contains("Textual Inversion's"));
  fs::remove_all(out);
  fs::remove_all(dataset);
}

TEST_CASE("sample images while training the model itself: DreamBooth and Textual Inversion (with the new token)") {
  at::set_num_threads(2);
  const auto dataset = sumi::test::example_dataset("sumi_opts_sample", 1);
  const fs::path out = fs::temp_directory_path() / "sumi_opts_sample_out";
  fs::remove_all(out);
  fs::create_directories(out);
  const fs::path prompts = out / "prompts.txt";
  std::ofstream(prompts) << "a photo of sksemb --w 64 --h 64 --s 2 --d 3\n";
  for (TrainMode mode : {TrainMode::dreambooth, TrainMode::textual_inversion}) {
    auto s = settings(mode, dataset, out / (mode == TrainMode::dreambooth ? "db" : "ti"));
    s.max_train_steps = 2;
    s.sample.prompts = prompts.string();
    s.sample.every_n_steps = 2;
    s.sample.at_first = true;
    s.sample.sampler = "euler";
    const auto r = sumi::app::train_network(s, {SUMI_PLUGIN_DIR}, false);
    REQUIRE(r.samples.size() == 2);  // before training and at step 2
    const at::Tensor before = sumi::app::read_image(r.samples[0]), after = sumi::app::read_image(r.samples[1]);
    CHECK(before.sizes().vec() == std::vector<int64_t>{64, 64, 3});
    CHECK_FALSE(at::equal(before, after));  // the trained weights / vectors draw the second one
    // Sampling leaves the training run as it is.
    auto plain = s;
    plain.sample = {};
    plain.output_dir = (out / "plain").string();
    const auto p = sumi::app::train_network(plain, {SUMI_PLUGIN_DIR}, false);
    REQUIRE(p.losses.size() == r.losses.size());
    for (size_t i = 0; i < p.losses.size(); ++i) CHECK(p.losses[i] == r.losses[i]);
  }
  fs::remove_all(out);
  fs::remove_all(dataset);
}

TEST_CASE("sumi train: kohya's defaults and flags — AdamW without --optimizer_type, --learning_rate_te, ControlNet datasets refused") {
  const auto dataset = sumi::test::example_dataset("sumi_opts_cli", 1);
  const fs::path out = fs::temp_directory_path() / "sumi_opts_cli_out";
  fs::remove_all(out);
  const std::vector<std::string> base = {"--plugin-dir", SUMI_PLUGIN_DIR, "--pretrained_model_name_or_path",
                                         data("fixtures/tiny-sd1.safetensors"), "--train_data_dir", dataset.string(),
                                         "--resolution", "64", "--output_dir", out.string(), "--max_train_steps", "1",
                                         "--seed", "3", "--learning_rate", "1e-4", "--learning_rate_te", "1e-5"};
  CHECK(sumi::app::cmd_train(base) == 0);  // DreamBooth, AdamW (kohya's default optimizer)
  CHECK(fs::exists(out / "last.safetensors"));
  auto with = [&](std::vector<std::string> extra) {
    auto a = base;
    a.insert(a.end(), extra.begin(), extra.end());
    return a;
  };
  CHECK(sumi::app::cmd_train(with({"--save_state", "--output_name", "st"})) == 0);
  std::ifstream j(out / "st-state" / "train_state.json");
  std::string text((std::istreambuf_iterator<char>(j)), std::istreambuf_iterator<char>());
  CHECK(text.find("\"adamw\"") != std::string::npos);
  CHECK_THROWS_WITH(sumi::app::cmd_train(with({"--block_lr", "1e-4,1e-4"})), doctest::Contains("sdxl_train.py"));
  CHECK_THROWS_WITH(sumi::app::cmd_train(with({"--conditioning_data_dir", dataset.string()})),
                    doctest::Contains("ControlNet"));
  fs::remove_all(out);
  fs::remove_all(dataset);
}

// kohya's --base_weights: LoRA files merged into the model before the network is created (by the
// plugin probe picks, as sumi generate loads a file), so training starts from the merged model.
TEST_CASE("--base_weights: training from base_weights equals training from the model merged beforehand (sumi merge_lora)") {
  at::set_num_threads(2);
  const auto dataset = sumi::test::example_dataset("sumi_base_weights", 1);
  const fs::path out = fs::temp_directory_path() / "sumi_base_weights_out";
  fs::remove_all(out);
  fs::create_directories(out);
  const std::string lora = sumi::test::fixture("tiny-sd1.lora.safetensors");
  const std::string merged = (out / "merged.safetensors").string();
  REQUIRE(sumi::app::tools::cmd_merge_lora({"--plugin-dir", SUMI_PLUGIN_DIR, "--sd_model", sumi::test::fixture("tiny-sd1.safetensors"),
                                             "--models", lora, lora, "--ratios", "0.7", "1.0", "--save_to", merged}) == 0);
  auto run = [&](const std::string& name, const std::string& model, std::vector<std::string> base, std::vector<double> muls) {
    auto s = sumi::test::fixture_run(TrainMode::network, dataset, out / name);
    s.model_path = model;
    s.network_type = "lora";
    s.network_params = {{"dim", "2"}, {"alpha", "1"}};
    s.base_weights = std::move(base);
    s.base_weights_multiplier = std::move(muls);
    s.learning_rate = 1e-3;
    s.max_train_steps = 2;
    s.seed = 4;
    return sumi::app::train_network(s, {SUMI_PLUGIN_DIR}, false);
  };
  // The merged file reloads as the model it came from (its configs ride in its metadata; the
  // input's sit in the .yaml beside it), so the base weights go into the fixture itself.
  const std::string zero = sumi::test::fixture("tiny-sd1.safetensors");
  // Two files: 0.7, and the missing second multiplier is 1.0 (kohya's default).
  const auto from_base = run("base", zero, {lora, lora}, {0.7});
  const auto from_merged = run("merged", merged, {}, {});
  const auto plain = run("plain", zero, {}, {});
  REQUIRE(from_base.losses.size() == 2);
  for (size_t i = 0; i < 2; ++i) CHECK(from_base.losses[i] == doctest::Approx(from_merged.losses[i]).epsilon(1e-5));
  CHECK(std::abs(from_base.losses[0] - plain.losses[0]) > 1e-4);  // the merge changes the model
  const auto a = sumi::test::load_map(from_base.output_file), b = sumi::test::load_map(from_merged.output_file);
  REQUIRE(a.size() == b.size());
  for (const auto& [k, t] : a) {
    CAPTURE(k);
    CHECK((t.to(at::kFloat) - b.at(k).to(at::kFloat)).abs().max().item<double>() < 1e-5);
  }
  // The base file's tensors are not the run's: the saved network has only its own keys.
  CHECK(a.size() == sumi::test::load_map(plain.output_file).size());

  CHECK_THROWS_WITH(run("bad", sumi::test::fixture("tiny-sd1.safetensors"), {lora}, {0.5, 0.5}),
                    doctest::Contains("--base_weights_multiplier: 2 multipliers for 1 --base_weights files"));
  // From the command line; DreamBooth has no such flag.
  const std::vector<std::string> cli{"--plugin-dir", SUMI_PLUGIN_DIR, "--pretrained_model_name_or_path",
                                     sumi::test::fixture("tiny-sd1.safetensors"), "--train_data_dir", dataset.string(),
                                     "--caption_extension", ".txt", "--resolution", "64", "--output_dir", (out / "cli").string(),
                                     "--max_train_steps", "1", "--base_weights", lora, "--base_weights_multiplier", "0.7"};
  auto with = [&](std::vector<std::string> extra) {
    auto v = cli;
    v.insert(v.end(), extra.begin(), extra.end());
    return v;
  };
  CHECK(sumi::app::cmd_train(with({"--network_module", "networks.lora", "--output_name", "cli"})) == 0);
  CHECK(fs::exists(out / "cli" / "cli.safetensors"));
  CHECK_THROWS_WITH(sumi::app::cmd_train(with({})), doctest::Contains("base_weights (--base_weights) is train_network.py's"));
  fs::remove_all(out);
}
