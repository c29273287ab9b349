// kohya's rules between optimizer and learning rates (app/train/optimizer_rules.h): the scheduler
// relative-step Adafactor needs, and the start-up refusals where kohya's run would crash.
#include <doctest/doctest.h>

#include "app/train/optimizer_rules.h"
#include "core/error.h"

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
