// kohya's rules between optimizer and learning rates (app/train/optimizer_rules.h): the scheduler
// relative-step Adafactor needs, and the start-up refusals where kohya's run would crash.
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
