// kohya's rules between optimizer and learning rates (app/train/optimizer_rules.h): the scheduler
// relative-step Adafactor needs, and the start-up refusals where kohya's run would crash; and
// optimizers through a whole run (logged values, an 8-bit optimizer's state across --resume).
#include <doctest/doctest.h>

#include "train_test_util.h"

#include "app/train/optimizer_rules.h"
#include "app/train/trainer.h"
#include "core/error.h"
#include "logging/event_file.h"

#include <filesystem>
#include <map>

using namespace sumi::app;

TEST_CASE("Adafactor with relative_step gets kohya's adafactor scheduler") {
  CHECK(scheduler_for("adafactor", {}, "cosine") == "adafactor");  // relative_step defaults to true
  CHECK(scheduler_for("adafactor", {{"relative_step", "false"}}, "cosine") == "cosine");
  CHECK(scheduler_for("adafactor", {{"relative_step", "false"}, {"warmup_init", "true"}}, "constant") == "adafactor");
  CHECK(scheduler_for("adamw", {}, "cosine") == "cosine");
  CHECK_THROWS_WITH_AS(scheduler_for("adamw", {}, "adafactor"), doctest::Contains("only works with --optimizer_type Adafactor"),
                       sumi::host::UserError);
}

TEST_CASE("D-adaptation and Prodigy learning rates are checked before the first step") {
  const std::vector<std::string> names = {"text_encoder", "unet"};
  // kohya's documented 0.5 / 1.0 split crashes DAdaptAdam, AdamPreprint, Lion, SGD and Prodigy.
  for (const char* o : {"dadaptadam", "dadaptadampreprint", "dadaptlion", "dadaptsgd", "prodigy"}) {
    CAPTURE(o);
    CHECK_THROWS_WITH_AS(check_optimizer_lrs(o, names, {0.5, 1.0}, {0.5, 1.0}), doctest::Contains("--text_encoder_lr 0"),
                         sumi::host::UserError);
    CHECK_NOTHROW(check_optimizer_lrs(o, names, {0.0, 1.0}, {0.0, 1.0}));
    CHECK_NOTHROW(check_optimizer_lrs(o, names, {1.0, 1.0}, {1.0, 1.0}));
  }
  // AdaGrad and the Adans use the first group's lr for all: a warning, as kohya's.
  for (const char* o : {"dadaptadagrad", "dadaptadan", "dadaptadanip"}) CHECK_NOTHROW(check_optimizer_lrs(o, names, {0.5, 1.0}, {0.5, 1.0}));
  // DAdaptSGD divides by the first step's gradient norm over groups with lr > 0.
  CHECK_THROWS_WITH_AS(check_optimizer_lrs("dadaptsgd", names, {1.0, 1.0}, {0.0, 0.0}), doctest::Contains("--lr_warmup_steps 0"),
                       sumi::host::UserError);
  CHECK_NOTHROW(check_optimizer_lrs("dadaptadam", names, {1.0, 1.0}, {0.0, 0.0}));  // a skipped first step, as the reference
  CHECK_NOTHROW(check_optimizer_lrs("adamw", names, {0.5, 1.0}, {0.0, 0.0}));
  CHECK(adapts_step_size("prodigy"));
  CHECK(adapts_step_size("dadaptlion"));
  CHECK_FALSE(adapts_step_size("adafactor"));
}

namespace {

// A 2-step LoRA run on tiny-sd1 with `optimizer`, logged to TensorBoard: the scalars by tag.
std::map<std::string, std::vector<float>> logged_run(const std::string& name, const std::string& optimizer,
                                                     const std::map<std::string, std::string>& args, double lr,
                                                     const std::string& scheduler) {
  namespace fs = std::filesystem;
  const auto dataset = sumi::test::example_dataset("sumi_optrules_" + name, 2);
  const fs::path out = fs::temp_directory_path() / ("sumi_optrules_" + name + "_out");
  fs::remove_all(out);
  auto s = sumi::test::fixture_run(TrainMode::network, dataset, out);
  s.network_type = "lora";
  s.network_params = {{"dim", "2"}, {"alpha", "1"}};
  s.optimizer_type = optimizer;
  s.optimizer_params = args;
  s.learning_rate = lr;
  s.lr_scheduler_type = scheduler;
  s.max_train_steps = 2;
  s.seed = 3;
  s.log.logging_dir = (out / "logs").string();
  const auto r = sumi::app::train_network(s, {SUMI_PLUGIN_DIR}, false);
  std::map<std::string, std::vector<float>> by_tag;
  for (const auto& e : sumi::logging::read_events(r.event_file).scalars) by_tag[e.tag].push_back(e.value);
  return by_tag;
}

}  // namespace

TEST_CASE("Prodigy logs kohya's lr/d*lr; relative-step Adafactor logs the rate it used and runs on the adafactor scheduler") {
  auto prodigy = logged_run("prodigy", "prodigyopt.Prodigy", {{"weight_decay", "0.01"}}, 1.0, "constant");
  REQUIRE(prodigy["lr/d*lr"].size() == 2);
  for (float v : prodigy["lr/d*lr"]) CHECK(v >= 1e-6f);  // d >= d0, lr 1

  // Adafactor: kohya's relative step ignores the cosine schedule (replaced by adafactor) and logs
  // min(1e-2, 1/sqrt(step)) * max(1e-3, RMS(first parameter)), not --learning_rate.
  auto adafactor = logged_run("adafactor", "Adafactor", {}, 1e-3, "cosine");
  REQUIRE(adafactor["lr/unet"].size() == 2);
  CHECK(adafactor.count("lr/d*lr") == 0);
  for (float v : adafactor["lr/unet"]) {
    CHECK(v >= 1e-5f);  // 1e-2 x at least eps2 = 1e-3
    CHECK(v != 1e-3f);
  }
}

TEST_CASE("kohya's AdamW8bit trains a LoRA with 8-bit state and resumes from --save_state bit-exactly") {
  namespace fs = std::filesystem;
  const auto dataset = sumi::test::example_dataset("sumi_optrules_8bit", 2);
  const fs::path out = fs::temp_directory_path() / "sumi_optrules_8bit_out";
  fs::remove_all(out);
  auto s = sumi::test::fixture_run(TrainMode::network, dataset, out);
  s.network_type = "lora";
  s.network_params = {{"dim", "8"}, {"alpha", "4"}};  // the largest LoRA tensors reach 8192 elements: 8-bit state
  s.optimizer_type = "bitsandbytes.optim.AdamW8bit";
  s.learning_rate = 1e-3;
  s.max_train_steps = 4;
  s.seed = 5;
  auto full = s;
  full.output_dir = (out / "full").string();
  const auto a = sumi::app::train_network(full, {SUMI_PLUGIN_DIR}, false);
  REQUIRE(a.losses.size() == 4);

  auto part = s;
  part.output_dir = (out / "part").string();
  part.save_every_n_steps = 2;
  part.save_state = true;
  sumi::app::train_network(part, {SUMI_PLUGIN_DIR}, false);
  const fs::path state = out / "part" / "out-step00000002-state";
  REQUIRE(fs::exists(state / "train_state.safetensors"));
  int quantized = 0, absmax = 0;
  for (const auto& [name, t] : sumi::io::load_all((state / "train_state.safetensors").string())) {
    if (name.rfind("optimizer/", 0) != 0) continue;
    if (t.scalar_type() == at::kByte) ++quantized;
    if (name.find(".absmax") != std::string::npos) ++absmax;
  }
  CHECK(quantized > 0);
  CHECK(absmax == quantized);  // absmax1 / absmax2 beside each uint8 state1 / state2

  auto resumed = s;
  resumed.output_dir = (out / "resumed").string();
  resumed.resume = state.string();
  const auto c = sumi::app::train_network(resumed, {SUMI_PLUGIN_DIR}, false);
  REQUIRE(c.losses.size() == 2);
  for (size_t i = 0; i < 2; ++i) CHECK(c.losses[i] == a.losses[i + 2]);
  const auto fa = sumi::test::load_map(a.output_file), fc = sumi::test::load_map(c.output_file);
  REQUIRE(fa.size() == fc.size());
  for (const auto& [k, t] : fa) CHECK(at::equal(t, fc.at(k)));

  // The same state with float32 optimizer state (min_8bit_size above every tensor) is refused.
  auto other = resumed;
  other.optimizer_params = {{"min_8bit_size", std::to_string(int64_t{1} << 40)}};
  CHECK_THROWS_WITH(sumi::app::train_network(other, {SUMI_PLUGIN_DIR}, false), doctest::Contains("is Byte in the state and Float in this run"));
  // And with block_wise=False (one max per tensor, not one absmax per block), naming the layout.
  other.optimizer_params = {{"block_wise", "False"}};
  CHECK_THROWS_WITH(sumi::app::train_network(other, {SUMI_PLUGIN_DIR}, false),
                    doctest::Contains("the state has no 'optimizer/block_wise=False'"));
  fs::remove_all(out);
  fs::remove_all(dataset);
}

TEST_CASE("AdamW8bit with block_wise=False trains, resumes bit-exactly, and its state does not resume block-wise") {
  namespace fs = std::filesystem;
  const auto dataset = sumi::test::example_dataset("sumi_optrules_8bit_static", 2);
  const fs::path out = fs::temp_directory_path() / "sumi_optrules_8bit_static_out";
  fs::remove_all(out);
  auto s = sumi::test::fixture_run(TrainMode::network, dataset, out);
  s.network_type = "lora";
  s.network_params = {{"dim", "8"}, {"alpha", "4"}};
  s.optimizer_type = "AdamW8bit";
  s.optimizer_params = {{"block_wise", "False"}};
  s.learning_rate = 1e-3;
  s.max_train_steps = 4;
  s.seed = 5;
  auto full = s;
  full.output_dir = (out / "full").string();
  const auto a = sumi::app::train_network(full, {SUMI_PLUGIN_DIR}, false);
  REQUIRE(a.losses.size() == 4);

  auto part = s;
  part.output_dir = (out / "part").string();
  part.save_every_n_steps = 2;
  part.save_state = true;
  sumi::app::train_network(part, {SUMI_PLUGIN_DIR}, false);
  const fs::path state = out / "part" / "out-step00000002-state";
  REQUIRE(fs::exists(state / "train_state.safetensors"));
  int quantized = 0, maxes = 0, absmax = 0, marker = 0;
  for (const auto& [name, t] : sumi::io::load_all((state / "train_state.safetensors").string())) {
    if (name.rfind("optimizer/", 0) != 0) continue;
    if (t.scalar_type() == at::kByte && t.dim() > 0) ++quantized;
    if (name.size() > 5 && (name.compare(name.size() - 5, 5, ".max1") == 0 || name.compare(name.size() - 5, 5, ".max2") == 0)) {
      ++maxes;
      CHECK(t.numel() == 1);
    }
    absmax += name.find(".absmax") != std::string::npos;
    marker += name == "optimizer/block_wise=False";
  }
  CHECK(quantized > 0);
  CHECK(maxes == quantized);  // max1 / max2 (and new_max1 / new_max2) beside each uint8 state1 / state2
  CHECK(absmax == 0);
  CHECK(marker == 1);

  auto resumed = s;
  resumed.output_dir = (out / "resumed").string();
  resumed.resume = state.string();
  const auto c = sumi::app::train_network(resumed, {SUMI_PLUGIN_DIR}, false);
  REQUIRE(c.losses.size() == 2);
  for (size_t i = 0; i < 2; ++i) CHECK(c.losses[i] == a.losses[i + 2]);
  const auto fa = sumi::test::load_map(a.output_file), fc = sumi::test::load_map(c.output_file);
  REQUIRE(fa.size() == fc.size());
  for (const auto& [k, t] : fa) CHECK(at::equal(t, fc.at(k)));

  // The same state resumed block-wise: refused, naming the per-block absmax it lacks.
  auto other = resumed;
  other.optimizer_params = {};
  CHECK_THROWS_WITH(sumi::app::train_network(other, {SUMI_PLUGIN_DIR}, false), doctest::Contains(".absmax1'"));
  CHECK_THROWS_WITH(sumi::app::train_network(other, {SUMI_PLUGIN_DIR}, false),
                    doctest::Contains("other --optimizer_args (e.g. block_wise, min_8bit_size)"));
  fs::remove_all(out);
  fs::remove_all(dataset);
}
