// Network training on tiny-sd1: the LoRA lowers the loss on a fixed batch, the saved file has
// exactly kohya's keys and shapes and the kohya/A1111 metadata, and a corrupt image is refused
// up front with its path.
#include <doctest/doctest.h>

#include "../common/plugin_test.h"
#include "app/train/network_file.h"
#include "app/train/trainer.h"
#include "core/op_bridge.h"
#include "core/tensor_handle.h"
#include "io/safetensors.h"
#include "io/safetensors_torch.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <sstream>

namespace fs = std::filesystem;

namespace {

std::string data(const std::string& f) { return std::string(SUMI_TEST_DATA) + "/" + f; }

fs::path make_dataset(const std::string& name, int images) {
  const fs::path root = fs::temp_directory_path() / ("sumi_train_" + name);
  fs::remove_all(root);
  fs::create_directories(root / "5_sks circle");
  const fs::path src = fs::path(SUMI_SOURCE_DIR) / "examples" / "dataset" / "10_sks circle";
  for (int i = 0; i < images; ++i) {
    char n[32];
    std::snprintf(n, sizeof n, "circle_%02d", i);
    fs::copy_file(src / (std::string(n) + ".png"), root / "5_sks circle" / (std::string(n) + ".png"));
    fs::copy_file(src / (std::string(n) + ".txt"), root / "5_sks circle" / (std::string(n) + ".txt"));
  }
  return root;
}

sumi::app::TrainSettings settings(const fs::path& dataset, const fs::path& out) {
  sumi::app::TrainSettings s;
  s.model_path = data("fixtures/tiny-sd1.safetensors");
  s.family = "sd1";
  s.network_type = "lora";
  s.network_params = {{"dim", "4"}, {"alpha", "2"}};
  s.optimizer_type = "adamw";
  s.optimizer_params = {{"weight_decay", "0"}};
  s.learning_rate = 5e-3;
  s.lr_scheduler_type = "constant";
  s.max_train_steps = 30;
  s.seed = 1234;
  s.dataset_args = {{"train_data_dir", dataset.string()}, {"caption_extension", std::string(".txt")},
                    {"resolution", std::string("64")}, {"train_batch_size", 1LL}};
  s.output_dir = out.string();
  s.output_name = "lora";
  return s;
}

// Mean MSE of the eps prediction over fixed latents/noise/timesteps, with or without a LoRA file.
double fixed_batch_loss(const std::string& lora_file) {
  sumi::host::Registry reg;
  auto model = sumi::test::make(SUMI_KIND_MODEL, "sd1", reg, {}, "model");
  const auto& mvt = model->vtable<sumi_model_vtable>();
  const std::string path = data("fixtures/tiny-sd1.safetensors");
  model->check(mvt.load(model->self(), path.c_str()), "load");
  std::unique_ptr<sumi::host::Component> net;
  std::vector<int32_t> selected;
  if (!lora_file.empty()) {
    net = sumi::test::make(SUMI_KIND_NETWORK, "lora", reg, {{"dim", "4"}, {"alpha", "2"}}, "network");
    const auto& nvt = net->vtable<sumi_network_vtable>();
    const sumi_module_info* mods = nullptr;
    int64_t n = 0;
    model->check(mvt.modules(model->self(), &mods, &n), "modules");
    selected.assign(static_cast<size_t>(n), 0);
    net->check(nvt.attach(net->self(), mods, n, selected.data()), "attach");
    auto w = sumi::io::load_all(lora_file);
    std::vector<std::string> names;
    std::vector<const char*> cn;
    std::vector<sumi_tensor> hs;
    for (auto& [k, t] : w) {
      names.push_back(k);
      hs.push_back(sumi::host::make_handle(t));
    }
    for (auto& k : names) cn.push_back(k.c_str());
    net->check(nvt.load(net->self(), cn.data(), hs.data(), static_cast<int64_t>(hs.size())), "load");
    for (auto h : hs) sumi::host::release_handle(h);
    net->check(nvt.set_training(net->self(), 0), "set_training");
    model->check(mvt.set_network(model->self(), net->self(), &nvt, selected.data()), "set_network");
  }
  at::NoGradGuard ng;
  at::manual_seed(99);
  const at::Tensor latents = at::randn({1, 4, 8, 8}) * 0.5;
  double total = 0;
  for (int64_t t : {50, 200, 400, 600, 800}) {
    const at::Tensor noise = at::randn({1, 4, 8, 8});
    const at::Tensor noisy = latents + noise;
    const char* caption = "a sks circle on a light background";
    sumi_tensor cond = nullptr, pooled = nullptr, out = nullptr;
    model->check(mvt.encode_text(model->self(), &caption, 1, &cond, &pooled), "encode_text");
    auto h_noisy = sumi::host::make_handle(noisy);
    auto h_t = sumi::host::make_handle(at::full({1}, static_cast<double>(t), at::kFloat));
    model->check(mvt.denoise(model->self(), h_noisy, h_t, cond, pooled, nullptr, &out), "denoise");
    total += (sumi::host::unwrap(out) - noise).pow(2).mean().item<double>();
    for (auto h : {cond, pooled, out, h_noisy, h_t}) sumi::host::release_handle(h);
  }
  return total / 5;
}

}  // namespace

TEST_CASE("LoRA training on tiny-sd1: kohya keys, metadata, and a lower loss") {
  at::set_num_threads(2);
  const auto dataset = make_dataset("one", 1);
  const fs::path out = fs::temp_directory_path() / "sumi_train_out";
  fs::remove_all(out);
  auto s = settings(dataset, out);
  const auto result = sumi::app::train_network(s, {SUMI_PLUGIN_DIR}, false);
  CHECK(result.steps == 30);
  REQUIRE(result.losses.size() == 30);
  REQUIRE(fs::exists(result.output_file));

  // Exactly the tensors kohya's networks/lora.py creates for this model at dim 4 / alpha 2.
  std::ifstream keys(data("fixtures/tiny-sd1.lora_keys.lierla.txt"));
  std::map<std::string, std::string> want;
  std::string line;
  while (std::getline(keys, line)) {
    if (line.empty() || line[0] == '#') continue;
    const auto tab1 = line.find('\t'), tab2 = line.find('\t', tab1 + 1);
    want[line.substr(0, tab1)] = line.substr(tab1 + 1, tab2 - tab1 - 1);
  }
  auto file = sumi::io::SafetensorsFile::open(result.output_file);
  std::map<std::string, std::string> got;
  for (const auto& t : file->tensors()) {
    std::string shape = "[";
    for (size_t i = 0; i < t.shape.size(); ++i) shape += (i ? ", " : "") + std::to_string(t.shape[i]);
    got[t.name] = shape + "]";
    CHECK(t.dtype == "F32");
  }
  CHECK(got.size() == want.size());
  for (const auto& [k, shape] : want) {
    CAPTURE(k);
    REQUIRE(got.count(k));
    std::string w = shape;
    w.erase(std::remove(w.begin(), w.end(), ' '), w.end());
    std::string g = got[k];
    g.erase(std::remove(g.begin(), g.end(), ' '), g.end());
    CHECK(g == w);
  }
  const auto& md = file->metadata();
  CHECK(md.at("ss_network_module") == "networks.lora");
  CHECK(md.at("ss_network_dim") == "4");
  CHECK(md.at("ss_network_alpha") == "2");
  CHECK(md.at("ss_steps") == "30");
  CHECK(md.at("ss_base_model_version") == "sd_v1");
  CHECK(md.at("modelspec.architecture") == "stable-diffusion-v1/lora");
  CHECK(md.at("modelspec.sai_model_spec") == "1.0.0");
  // The precalculated hash is what A1111's additional-networks computes from the file itself.
  CHECK(md.at("sshs_model_hash") == sumi::app::safetensors_hashes(result.output_file).model_hash);

  // The trained LoRA predicts the noise better on a fixed batch of the trained caption.
  const double before = fixed_batch_loss("");
  const double after = fixed_batch_loss(result.output_file);
  CAPTURE(before);
  CAPTURE(after);
  CHECK(after < before);
  fs::remove_all(out);
  fs::remove_all(dataset);
}

TEST_CASE("a corrupt image is refused before training, naming the file") {
  const auto dataset = make_dataset("corrupt", 2);
  const fs::path bad = dataset / "5_sks circle" / "broken.png";
  {
    std::ofstream f(bad, std::ios::binary);
    f << "this is not a png";
  }
  const fs::path out = fs::temp_directory_path() / "sumi_train_out_corrupt";
  auto s = settings(dataset, out);
  CHECK_THROWS_WITH(sumi::app::train_network(s, {SUMI_PLUGIN_DIR}, false), doctest::Contains("broken.png"));
  CHECK_FALSE(fs::exists(out / "lora.safetensors"));
  fs::remove_all(dataset);
  fs::remove_all(out);
}

TEST_CASE("resume after a stop continues the identical loss sequence") {
  at::set_num_threads(2);
  const auto dataset = make_dataset("resume", 3);
  const fs::path out = fs::temp_directory_path() / "sumi_train_resume_out";
  fs::remove_all(out);
  auto s = settings(dataset, out);
  s.max_train_steps = 8;
  s.dataset_args["flip_aug"] = true;  // data randomness must resume too
  s.network_params["dropout"] = "0.1";  // and the torch RNG stream

  auto full = s;
  full.output_dir = (out / "full").string();
  const auto a = sumi::app::train_network(full, {SUMI_PLUGIN_DIR}, false);
  REQUIRE(a.losses.size() == 8);

  // The same run, saving its state at step 3 (mid-epoch: 3 images x 5 repeats per epoch).
  auto first = s;
  first.output_dir = (out / "part").string();
  first.save_every_n_steps = 3;
  first.save_state = true;
  const auto b = sumi::app::train_network(first, {SUMI_PLUGIN_DIR}, false);
  const fs::path state = out / "part" / "lora-step00000003-state";
  REQUIRE(fs::exists(state / "train_state.json"));
  for (size_t i = 0; i < 8; ++i) CHECK(b.losses[i] == a.losses[i]);

  auto resumed = s;
  resumed.output_dir = (out / "resumed").string();
  resumed.resume = state.string();
  const auto c = sumi::app::train_network(resumed, {SUMI_PLUGIN_DIR}, false);
  REQUIRE(c.losses.size() == 5);
  for (size_t i = 0; i < 5; ++i) {
    CAPTURE(i);
    CHECK(c.losses[i] == a.losses[i + 3]);
  }
  // The final networks are identical too.
  auto fa = sumi::io::load_all(a.output_file), fc = sumi::io::load_all(c.output_file);
  REQUIRE(fa.size() == fc.size());
  for (size_t i = 0; i < fa.size(); ++i) CHECK(at::equal(fa[i].second, fc[i].second));

  // A state from another network type is refused.
  auto other = s;
  other.optimizer_type = "sgd";
  other.optimizer_params.clear();
  other.resume = state.string();
  CHECK_THROWS_WITH(sumi::app::train_network(other, {SUMI_PLUGIN_DIR}, false), doctest::Contains("optimizer 'adamw'"));
  fs::remove_all(out);
  fs::remove_all(dataset);
}
