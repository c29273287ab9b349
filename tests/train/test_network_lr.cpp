// The lora network's per-group learning rates in the engine: kohya's down/mid/up_lr_weight give
// one optimizer group per U-Net block at unet_lr (or learning_rate) times the block's weight, the
// text encoder one group at text_encoder_lr; blocks at weight 0 are left out of the optimizer,
// keep their initial tensors through training and are still saved.
#include <doctest/doctest.h>

#include "../common/kohya_blocks.h"
#include "train_test_util.h"

#include "../common/plugin_test.h"
#include "app/model_description.h"
#include "app/train/param_groups.h"
#include "app/train/trainer.h"
#include "sumi/io/safetensors_torch.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <filesystem>
#include <map>
#include <regex>

namespace fs = std::filesystem;
using sumi::app::TrainMode;

namespace {

using sumi::test::kohya_block;

const std::map<std::string, std::string> kWeights = {
    {"dim", "2"}, {"alpha", "1"}, {"conv_dim", "2"}, {"down_lr_weight", "0.5,,2,0.1"}, {"mid_lr_weight", "3"},
    {"up_lr_weight", "reverse_linear"}, {"block_lr_zero_threshold", "0.1"}};

// kohya's weight of a block for kWeights: down [0.5, 0, 2, 0.1 -> 0 (not above 0.1), 1 ...],
// mid 3, up reverse_linear (11 - k) / 11 with the last (0) cut.
double kohya_weight(int block) {
  const std::vector<double> down = {0.5, 0, 2, 0, 1, 1, 1, 1, 1, 1, 1, 1};
  if (block < 12) return down[static_cast<size_t>(block)];
  if (block == 12) return 3;
  const double w = static_cast<double>(11 - (block - 13)) / 11.0;
  return w > 0.1 ? w : 0.0;
}

}  // namespace

TEST_CASE("lora down/mid/up_lr_weight: optimizer groups and rates as kohya's prepare_optimizer_params") {
  sumi::host::Registry reg;
  auto model = sumi::test::make(SUMI_KIND_MODEL, "sd1", reg, {}, "model");
  const auto& mvt = model->vtable<sumi_model_vtable>();
  const std::string path = sumi::test::data("fixtures/tiny-sd1.safetensors");
  model->check(mvt.load(model->self(), path.c_str()), "load");
  auto net = sumi::test::make(SUMI_KIND_NETWORK, "lora", reg, kWeights, "network");
  const sumi_module_info* mods = nullptr;
  int64_t n = 0;
  model->check(mvt.modules(model->self(), &mods, &n), "modules");
  std::vector<int32_t> selected(static_cast<size_t>(n), 0);
  net->check(net->vtable<sumi_network_vtable>().attach(net->self(), mods, n, selected.data()), "attach");

  sumi::app::TrainSettings s;
  s.mode = TrainMode::network;
  s.learning_rate = 1e-3;
  s.unet_lr = 2e-3;
  s.text_encoder_lr = 5e-4;
  const auto groups = sumi::app::build_param_groups(s, reg, "network", sumi::app::ModelDescription{});

  // kohya: the text encoder's group first, then one group per U-Net block in order of its first
  // module, left out when its rate is 0.
  std::vector<std::string> want_names = {"text_encoder"};
  std::vector<double> want_lrs = {5e-4};
  std::map<int, size_t> params_of_block;
  for (const auto& e : reg.entries()) {
    if (e.component != "network" || !e.trainable || e.name.rfind("lora_unet_", 0) != 0) continue;
    const int b = kohya_block(e.name);
    REQUIRE(b >= 1);
    if (!params_of_block.count(b) && kohya_weight(b) > 0) {
      char g[32];
      std::snprintf(g, sizeof g, "unet_block%02d", b);
      want_names.push_back(g);
      want_lrs.push_back(2e-3 * kohya_weight(b));
    }
    ++params_of_block[b];
  }
  REQUIRE(params_of_block.size() == 24);
  REQUIRE(groups.groups.size() == want_names.size());
  // out: block 1 ('' = 0), 3 (0.1 is not above 0.1), 23 (1/11) and 24 (0) of reverse_linear
  CHECK(want_names.size() == 1 + 24 - 4);
  size_t trained = 0;
  for (size_t i = 0; i < want_names.size(); ++i) {
    CAPTURE(i);
    CHECK(groups.groups[i].first == want_names[i]);
    CHECK(groups.base_lrs[i] == doctest::Approx(want_lrs[i]).epsilon(1e-12));
    if (i > 0) CHECK(groups.groups[i].second.size() == params_of_block.at(std::stoi(want_names[i].substr(10))));
    trained += groups.groups[i].second.size();
  }
  // The blocks left out get no gradient.
  for (const auto& e : reg.entries()) {
    if (e.component != "network" || !e.trainable || e.name.rfind("lora_unet_", 0) != 0) continue;
    CAPTURE(e.name);
    CHECK(e.tensor.requires_grad() == (kohya_weight(kohya_block(e.name)) > 0));
  }
  CHECK(groups.all.size() == trained);
}

TEST_CASE("lora block_lr_zero_threshold: blocks not trained keep their initial tensors and are still saved") {
  at::set_num_threads(2);
  const auto dataset = sumi::test::example_dataset("sumi_network_lr_data", 1);
  const fs::path out = fs::temp_directory_path() / "sumi_network_lr_out";
  fs::remove_all(out);
  auto s = sumi::test::fixture_run(TrainMode::network, dataset, out);
  s.network_type = "lora";
  s.network_params = kWeights;
  s.optimizer_params = {{"weight_decay", "0"}};
  s.learning_rate = 1e-2;
  s.max_train_steps = 2;
  s.seed = 7;
  const auto result = sumi::app::train_network(s, {SUMI_PLUGIN_DIR}, false);
  REQUIRE(fs::exists(result.output_file));
  const auto file = sumi::test::load_map(result.output_file);
  size_t frozen = 0;
  std::map<int, bool> block_moved;  // a trained block: some lora_up left zero
  for (const auto& [key, t] : file) {
    const std::string suffix = ".lora_up.weight";
    if (key.rfind("lora_unet_", 0) != 0 || key.size() < suffix.size() || key.compare(key.size() - suffix.size(), suffix.size(), suffix) != 0)
      continue;
    CAPTURE(key);
    // lora_up starts at zero: it stays zero exactly when its block is not trained.
    const bool zero = t.abs().max().item<double>() == 0.0;
    if (kohya_weight(kohya_block(key)) > 0) {
      // (a single-token self-attention, as in the 1x1 mid block at 64 px, gives q / k no gradient)
      block_moved[kohya_block(key)] |= !zero;
    } else {
      CHECK(zero);
      CHECK(file.count(key.substr(0, key.size() - suffix.size()) + ".lora_down.weight"));
      ++frozen;
    }
  }
  CHECK(frozen > 0);
  CHECK(block_moved.size() == 20);
  for (const auto& [b, moved] : block_moved) {
    CAPTURE(b);
    CHECK(moved);
  }
  fs::remove_all(out);
  fs::remove_all(dataset);
}

namespace {

// Each module's delta up @ down * alpha / dim (einsum for convolutions) in a saved LoRA file.
std::map<std::string, double> file_norms(const std::map<std::string, at::Tensor>& f) {
  std::map<std::string, double> out;
  const std::string sfx = ".lora_down.weight";
  for (const auto& [key, down] : f) {
    if (key.size() < sfx.size() || key.compare(key.size() - sfx.size(), sfx.size(), sfx) != 0) continue;
    const std::string mod = key.substr(0, key.size() - sfx.size());
    const at::Tensor up = f.at(mod + ".lora_up.weight").to(at::kDouble);
    const at::Tensor d = down.to(at::kDouble);
    const double scale = f.at(mod + ".alpha").item<double>() / static_cast<double>(d.size(0));
    const at::Tensor delta = d.dim() == 2 ? at::mm(up, d) : at::einsum("or,rikl->oikl", {up.flatten(1), d});
    out[mod] = (delta * scale).norm().item<double>();
  }
  return out;
}

sumi::app::TrainSettings small_run(const fs::path& dataset, const fs::path& out) {
  auto s = sumi::test::fixture_run(TrainMode::network, dataset, out);
  s.network_type = "lora";
  s.network_params = {{"dim", "2"}, {"alpha", "1"}};
  s.optimizer_params = {{"weight_decay", "0"}};
  s.learning_rate = 5e-2;
  s.max_train_steps = 3;
  s.seed = 11;
  return s;
}

}  // namespace

TEST_CASE("scale_weight_norms: after each step every module's norm is at most the maximum; the reported mean is the file's") {
  at::set_num_threads(2);
  const auto dataset = sumi::test::example_dataset("sumi_max_norm_data", 1);
  const fs::path out = fs::temp_directory_path() / "sumi_max_norm_out";
  fs::remove_all(out);
  auto s = small_run(dataset, out);
  const double max_norm = 2e-3;
  s.scale_weight_norms = max_norm;
  const auto result = sumi::app::train_network(s, {SUMI_PLUGIN_DIR}, false);
  REQUIRE(result.keys_scaled.size() == 3);
  REQUIRE(result.average_key_norms.size() == 3);
  REQUIRE(result.max_key_norms.size() == 3);
  int64_t scaled = 0;
  for (size_t i = 0; i < 3; ++i) {
    scaled += result.keys_scaled[i];
    CHECK(result.average_key_norms[i] <= max_norm * (1 + 1e-5));
    CHECK(result.max_key_norms[i] <= max_norm * (1 + 1e-5));
  }
  CHECK(scaled > 0);
  const auto norms = file_norms(sumi::test::load_map(result.output_file));
  REQUIRE(!norms.empty());
  double sum = 0, mx = 0;
  for (const auto& [mod, n] : norms) {
    CAPTURE(mod);
    CHECK(n <= max_norm * (1 + 1e-5));
    sum += n;
    mx = std::max(mx, n);
  }
  // The file is the state after the last step's max-norm: its norms are the reported ones.
  CHECK(result.average_key_norms.back() == doctest::Approx(sum / static_cast<double>(norms.size())).epsilon(1e-4));
  CHECK(result.max_key_norms.back() == doctest::Approx(mx).epsilon(1e-4));

  // Outside network training it is refused.
  auto db = sumi::test::fixture_run(TrainMode::dreambooth, dataset, out);
  db.scale_weight_norms = 1.0;
  db.max_train_steps = 1;
  CHECK_THROWS_WITH_AS(sumi::app::train(db, {SUMI_PLUGIN_DIR}, false), doctest::Contains("scale_weight_norms"), std::exception);
  fs::remove_all(out);
  fs::remove_all(dataset);
}

TEST_CASE("dim_from_weights: the network takes the modules and per-module ranks of --network_weights") {
  at::set_num_threads(2);
  const auto dataset = sumi::test::example_dataset("sumi_dim_from_weights_data", 1);
  const fs::path out = fs::temp_directory_path() / "sumi_dim_from_weights_out";
  fs::remove_all(out);
  auto first = small_run(dataset, out / "a");
  first.max_train_steps = 1;
  const auto a = sumi::app::train_network(first, {SUMI_PLUGIN_DIR}, false);
  // A file as resize_lora --dynamic_method writes one for the U-Net only: the down blocks at rank
  // 2, every other module cut to rank 1, no text-encoder modules.
  sumi::io::NamedTensors resized;
  for (const auto& [key, t] : sumi::test::load_map(a.output_file)) {
    if (key.rfind("lora_te", 0) == 0) continue;
    const bool keep = key.find("down_blocks") != std::string::npos;
    if (key.find(".lora_down.") != std::string::npos && !keep) resized.emplace_back(key, t.slice(0, 0, 1).contiguous());
    else if (key.find(".lora_up.") != std::string::npos && !keep) resized.emplace_back(key, t.slice(1, 0, 1).contiguous());
    else resized.emplace_back(key, t);
  }
  const std::string resized_path = (out / "resized.safetensors").string();
  sumi::io::save_tensors(resized_path, resized);

  auto second = small_run(dataset, out / "b");
  second.network_params = {{"dim", "4"}, {"alpha", "1"}};
  second.network_weights = resized_path;
  second.max_train_steps = 1;
  // Without dim_from_weights the configured rank 4 does not fit the file.
  CHECK_THROWS_WITH_AS(sumi::app::train_network(second, {SUMI_PLUGIN_DIR}, false), doctest::Contains("shape"), std::exception);
  second.dim_from_weights = true;
  const auto b = sumi::app::train_network(second, {SUMI_PLUGIN_DIR}, false);
  const auto saved = sumi::test::load_map(b.output_file);
  CHECK(saved.size() == resized.size());
  for (const auto& [key, t] : resized) {
    CAPTURE(key);
    REQUIRE(saved.count(key));
    CHECK(saved.at(key).sizes() == t.sizes());
  }
  // --network_weights alone continues from the file: after one step at a tiny rate the network is
  // the file's (a fresh initialisation would differ by far more).
  auto cont = small_run(dataset, out / "d");
  cont.network_weights = a.output_file;
  cont.learning_rate = 1e-7;
  cont.max_train_steps = 1;
  const auto d = sumi::app::train_network(cont, {SUMI_PLUGIN_DIR}, false);
  const auto start = sumi::test::load_map(a.output_file);
  const auto continued = sumi::test::load_map(d.output_file);
  REQUIRE(continued.size() == start.size());
  for (const auto& [key, t] : start) {
    CAPTURE(key);
    REQUIRE(continued.count(key));
    CHECK((continued.at(key) - t).abs().max().item<double>() < 1e-5);
  }
  // dim_from_weights without a file is refused naming both.
  auto third = small_run(dataset, out / "c");
  third.dim_from_weights = true;
  CHECK_THROWS_WITH_AS(sumi::app::train_network(third, {SUMI_PLUGIN_DIR}, false), doctest::Contains("dim_from_weights"), std::exception);
  fs::remove_all(out);
  fs::remove_all(dataset);
}
