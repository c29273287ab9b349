// Network training on tiny-sd1: the LoRA lowers the loss on a fixed batch, the saved file has
// exactly kohya's keys and shapes and the kohya/A1111 metadata, and a corrupt image is refused
// up front with its path. TensorBoard logs read back equal to the run, the loss-curve image,
// full_bf16, fp16 and gradient checkpointing, and sample images during training.
#include <doctest/doctest.h>

#include "train_test_util.h"

#include "../common/plugin_test.h"
#include "app/app.h"
#include "app/generation.h"
#include "app/image_io.h"
#include "app/train/network_file.h"
#include "app/train/precision.h"
#include "logging/event_file.h"
#include "app/train/trainer.h"
#include "core/op_bridge.h"
#include "core/tensor_handle.h"
#include "sumi/io/safetensors.h"
#include "sumi/io/safetensors_torch.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <filesystem>
#include <regex>
#include <fstream>
#include <sstream>

namespace fs = std::filesystem;

namespace {

using sumi::test::data;

fs::path make_dataset(const std::string& name, int images) {
  return sumi::test::example_dataset("sumi_train_" + name, images);
}

sumi::app::TrainSettings settings(const fs::path& dataset, const fs::path& out) {
  auto s = sumi::test::fixture_run(sumi::app::TrainMode::network, dataset, out);
  s.network_type = "lora";
  s.network_params = {{"dim", "4"}, {"alpha", "2"}};
  s.optimizer_params = {{"weight_decay", "0"}};
  s.learning_rate = 5e-3;
  s.lr_scheduler_type = "constant";
  s.max_train_steps = 30;
  s.seed = 1234;
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
  CHECK(md.at("ss_network_alpha") == "2.0");  // the lora plugin's metadata: kohya's str(float), as its files say
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

TEST_CASE("a corrupt image is refused before training, naming the file; --skip_bad_files leaves it out") {
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
  CHECK_THROWS_WITH(sumi::app::train_network(s, {SUMI_PLUGIN_DIR}, false), doctest::Contains("--skip_bad_files"));
  // Told to skip, the run trains on the good images only.
  s.skip_bad_files = true;
  s.max_train_steps = 1;
  const auto r = sumi::app::train_network(s, {SUMI_PLUGIN_DIR}, false);
  CHECK(r.steps == 1);
  CHECK(fs::exists(out / "lora.safetensors"));
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


TEST_CASE("TensorBoard log: kohya's tags per step, equal to the run's losses and LR schedule; loss-curve PNG") {
  at::set_num_threads(2);
  const auto dataset = make_dataset("tb", 2);
  const fs::path out = fs::temp_directory_path() / "sumi_train_tb_out";
  fs::remove_all(out);
  auto s = settings(dataset, out);
  s.max_train_steps = 12;  // 2 images x 5 repeats: one full epoch and a part
  s.lr_scheduler_type = "linear";
  s.lr_warmup_steps = 2;
  s.log.logging_dir = (out / "logs").string();
  s.log.log_prefix = "run-";
  const auto r = sumi::app::train_network(s, {SUMI_PLUGIN_DIR}, false);
  REQUIRE(r.losses.size() == 12);
  REQUIRE_FALSE(r.event_file.empty());
  // <logging_dir>/<log_prefix><YYYYmmddHHMMSS>/network_train/events.out.tfevents.*
  const fs::path ev(r.event_file);
  CHECK(ev.parent_path().filename() == "network_train");
  CHECK(std::regex_match(ev.parent_path().parent_path().filename().string(), std::regex("run-[0-9]{14}")));
  CHECK(ev.parent_path().parent_path().parent_path() == out / "logs");

  const auto file = sumi::logging::read_events(r.event_file);
  CHECK(file.file_version == "brain.Event:2");
  std::map<std::string, std::vector<sumi::logging::ScalarEvent>> by_tag;
  for (const auto& e : file.scalars) by_tag[e.tag].push_back(e);
  for (const char* tag : {"loss/current", "loss/average", "lr/unet", "lr/textencoder"}) {
    CAPTURE(tag);
    REQUIRE(by_tag[tag].size() == 12);
    for (size_t i = 0; i < 12; ++i) CHECK(by_tag[tag][i].step == static_cast<int64_t>(i + 1));
  }
  for (size_t i = 0; i < 12; ++i) {
    CAPTURE(i);
    CHECK(by_tag["loss/current"][i].value == static_cast<float>(r.losses[i]));
    CHECK(by_tag["loss/average"][i].value == static_cast<float>(r.average_losses[i]));
    // kohya logs the scheduler's last learning rate, after its step: the rate of the next step.
    const float next_lr = i + 1 < 12 ? static_cast<float>(r.lrs[i + 1]) : 0.0f;
    CHECK(by_tag["lr/unet"][i].value == next_lr);
    CHECK(by_tag["lr/textencoder"][i].value == next_lr);
  }
  // The LR follows the linear schedule: warm-up over 2 steps, then decay to 0 at step 12.
  CHECK(r.lrs[0] == doctest::Approx(0.0));
  CHECK(r.lrs[1] == doctest::Approx(5e-3 * 0.5));
  CHECK(r.lrs[2] == doctest::Approx(5e-3));
  CHECK(r.lrs[11] == doctest::Approx(5e-3 * 1.0 / 10));
  // loss/average: the mean over the first epoch's 10 batches, then a window sliding by one.
  double first10 = 0;
  for (size_t i = 0; i < 10; ++i) first10 += r.losses[i];
  CHECK(r.average_losses[9] == doctest::Approx(first10 / 10));
  CHECK(r.average_losses[11] == doctest::Approx((first10 - r.losses[0] - r.losses[1] + r.losses[10] + r.losses[11]) / 10));
  // loss/epoch once per epoch at step = epoch
  REQUIRE(by_tag["loss/epoch"].size() == 2);
  CHECK(by_tag["loss/epoch"][0].step == 1);
  CHECK(by_tag["loss/epoch"][0].value == static_cast<float>(first10 / 10));

  REQUIRE(r.loss_curve == (out / "lora.loss.png").string());
  const at::Tensor png = sumi::app::read_image(r.loss_curve);
  CHECK(png.size(0) == 400);
  CHECK(png.size(1) == 800);

  // Accumulating 2 micro-batches per step: every micro-batch logs its own loss at the global
  // step it ends on (0, 1, 1, 2, 2, 3), as kohya's loop does.
  auto acc = s;
  acc.max_train_steps = 3;
  acc.gradient_accumulation_steps = 2;
  acc.output_dir = (out / "acc").string();
  acc.log.logging_dir = (out / "acc" / "logs").string();
  const auto ra = sumi::app::train_network(acc, {SUMI_PLUGIN_DIR}, false);
  std::vector<int64_t> steps;
  std::vector<float> current;
  for (const auto& e : sumi::logging::read_events(ra.event_file).scalars)
    if (e.tag == "loss/current") {
      steps.push_back(e.step);
      current.push_back(e.value);
    }
  CHECK(steps == std::vector<int64_t>{0, 1, 1, 2, 2, 3});
  REQUIRE(current.size() == 6);
  for (size_t k = 0; k < 3; ++k)  // a step's loss is the mean of its two micro-batches
    CHECK(ra.losses[k] == doctest::Approx((double(current[2 * k]) + double(current[2 * k + 1])) / 2).epsilon(1e-6));

  auto wandb = s;
  wandb.log.log_with = "wandb";
  CHECK_THROWS_WITH(sumi::app::train_network(wandb, {SUMI_PLUGIN_DIR}, false), doctest::Contains("wandb is not supported"));
  fs::remove_all(out);
  fs::remove_all(dataset);
}

TEST_CASE("full_bf16: bf16 network and model weights train and lower the loss; needs mixed_precision bf16") {
  at::set_num_threads(2);
  const auto dataset = make_dataset("bf16", 1);
  const fs::path out = fs::temp_directory_path() / "sumi_train_bf16_out";
  fs::remove_all(out);
  auto s = settings(dataset, out);
  s.full_bf16 = true;
  CHECK_THROWS_WITH(sumi::app::train_network(s, {SUMI_PLUGIN_DIR}, false), doctest::Contains("full_bf16 needs mixed_precision"));
  s.mixed_precision = "bf16";
  s.save_precision = "bf16";
  const auto r = sumi::app::train_network(s, {SUMI_PLUGIN_DIR}, false);
  REQUIRE(r.losses.size() == 30);
  for (double l : r.losses) CHECK(std::isfinite(l));
  auto file = sumi::io::SafetensorsFile::open(r.output_file);
  for (const auto& t : file->tensors()) CHECK(t.dtype == "BF16");
  CHECK(file->metadata().at("ss_full_bf16") == "True");
  const double before = fixed_batch_loss("");
  const double after = fixed_batch_loss(r.output_file);
  CAPTURE(before);
  CAPTURE(after);
  CHECK(after < before);
  fs::remove_all(out);
  fs::remove_all(dataset);
}

TEST_CASE("fp16 mixed precision: refused where CPU fp16 autocast cannot run, else trains with loss scaling") {
  at::set_num_threads(2);
  const auto dataset = make_dataset("fp16", 1);
  const fs::path out = fs::temp_directory_path() / "sumi_train_fp16_out";
  fs::remove_all(out);
  auto s = settings(dataset, out);
  s.mixed_precision = "fp16";
  s.max_train_steps = 3;
  if (!sumi::app::cpu_fp16_autocast_available()) {
    CHECK_THROWS_WITH(sumi::app::train_network(s, {SUMI_PLUGIN_DIR}, false),
                      doctest::Contains("cannot compute in fp16 on the CPU"));
  } else {
    const auto r = sumi::app::train_network(s, {SUMI_PLUGIN_DIR}, false);
    CHECK(r.steps == 3);
    for (double l : r.losses) CHECK(std::isfinite(l));
  }
  fs::remove_all(out);
  fs::remove_all(dataset);
}

TEST_CASE("gradient_checkpointing: the model plugin's option, same losses; refused when the plugin lacks it") {
  at::set_num_threads(2);
  const auto dataset = make_dataset("gc", 1);
  const fs::path out = fs::temp_directory_path() / "sumi_train_gc_out";
  fs::remove_all(out);
  auto s = settings(dataset, out);
  s.max_train_steps = 3;
  const auto& c = *sumi::test::plugins().find(SUMI_KIND_MODEL, "sd1").component;
  bool has = false;
  for (int64_t i = 0; i < c.n_params; ++i) has |= std::string(c.params[i].key) == "gradient_checkpointing";
  auto gc = s;
  gc.gradient_checkpointing = true;
  if (!has) {
    CHECK_THROWS_WITH(sumi::app::train_network(gc, {SUMI_PLUGIN_DIR}, false),
                      doctest::Contains("has no 'gradient_checkpointing' option"));
  } else {
    const auto a = sumi::app::train_network(s, {SUMI_PLUGIN_DIR}, false);
    const auto b = sumi::app::train_network(gc, {SUMI_PLUGIN_DIR}, false);
    REQUIRE(a.losses.size() == b.losses.size());
    for (size_t i = 0; i < a.losses.size(); ++i) CHECK(b.losses[i] == doctest::Approx(a.losses[i]).epsilon(1e-5));
  }
  fs::remove_all(out);
  fs::remove_all(dataset);
}

TEST_CASE("sample images during training: kohya's names and steps, requested sizes, equal to generating with the saved network") {
  at::set_num_threads(2);
  const auto dataset = make_dataset("sample", 1);
  const fs::path out = fs::temp_directory_path() / "sumi_train_sample_out";
  fs::remove_all(out);
  fs::create_directories(out);
  const fs::path prompts = out / "prompts.txt";
  {
    std::ofstream f(prompts);
    f << "# samples\n"
      << "a sks circle --w 64 --h 64 --d 7 --s 3 --l 5\n"
      << "a sks circle on a dark background --n blurry --w 78 --h 64 --s 2\n";
  }
  auto s = settings(dataset, out);
  s.max_train_steps = 4;
  s.save_every_n_steps = 2;
  s.sample.prompts = prompts.string();
  s.sample.every_n_steps = 2;
  s.sample.at_first = true;
  s.sample.sampler = "euler";
  const auto r = sumi::app::train_network(s, {SUMI_PLUGIN_DIR}, false);
  REQUIRE(r.samples.size() == 6);  // before training, at step 2 and at step 4; two prompts each
  const std::regex seeded("lora_(e000000|000002|000004)_00_[0-9]{14}_7\\.png");
  const std::regex unseeded("lora_(e000000|000002|000004)_01_[0-9]{14}\\.png");
  for (size_t i = 0; i < r.samples.size(); ++i) {
    const fs::path p(r.samples[i]);
    CAPTURE(p);
    CHECK(p.parent_path() == out / "sample");
    CHECK(std::regex_match(p.filename().string(), i % 2 == 0 ? seeded : unseeded));
    const at::Tensor img = sumi::app::read_image(p.string());
    CHECK(img.size(0) == 64);
    CHECK(img.size(1) == (i % 2 == 0 ? 64 : 72));  // 78 rounds down to a multiple of 8
  }
  CHECK(fs::path(r.samples[2]).filename().string().rfind("lora_000002_00_", 0) == 0);

  // Sampling does not disturb training: the same run without samples has the same losses.
  auto plain = s;
  plain.sample = {};
  plain.output_dir = (out / "plain").string();
  const auto p = sumi::app::train_network(plain, {SUMI_PLUGIN_DIR}, false);
  REQUIRE(p.losses.size() == r.losses.size());
  for (size_t i = 0; i < p.losses.size(); ++i) CHECK(p.losses[i] == r.losses[i]);

  // The step-2 sample equals generating with the network saved at step 2 (multiplier 1, eval).
  sumi::host::Registry reg;
  auto model = sumi::test::make(SUMI_KIND_MODEL, "sd1", reg, {}, "model");
  const std::string path = data("fixtures/tiny-sd1.safetensors");
  model->check(model->vtable<sumi_model_vtable>().load(model->self(), path.c_str()), "load");
  auto net = sumi::test::make(SUMI_KIND_NETWORK, "lora", reg, {{"dim", "4"}, {"alpha", "2"}}, "network");
  sumi::app::attach_network(*model, *net, (out / "lora-step00000002.safetensors").string(), 1.0, false);
  auto sched = sumi::test::make(SUMI_KIND_NOISE_SCHEDULER, "euler", reg, {}, "noise_scheduler");
  sumi::app::ImageRequest req;
  req.prompt = "a sks circle";
  req.width = req.height = 64;
  req.steps = 3;
  req.scale = 5;
  req.seed = 7;
  const auto g = sumi::app::Generator(*model, *sched).run(req, false);
  CHECK(at::equal(sumi::app::to_uint8_hwc(g.image), sumi::app::read_image(r.samples[2])));

  // Options kohya's samples do not read are refused before training starts.
  {
    std::ofstream f(prompts);
    f << "a circle --am 0.5\n";
  }
  CHECK_THROWS_WITH(sumi::app::train_network(s, {SUMI_PLUGIN_DIR}, false), doctest::Contains("--am"));
  fs::remove_all(out);
  fs::remove_all(dataset);
}
