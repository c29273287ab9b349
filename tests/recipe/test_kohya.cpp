// kohya-ss flags and config files mapped onto recipes.
#include <doctest/doctest.h>

#include "sumi/recipe/kohya.h"
#include "sumi/recipe/load.h"
#include "sumi/recipe/plan.h"
#include "sumi/recipe/schema.h"
#include "sumi/recipe/sections.h"
#include <fstream>
#include <iterator>

#include "test_support.h"

using namespace sumi::recipe;
using sumi::recipe::test::data_file;
using sumi::recipe::test::has;
using sumi::recipe::test::TempFile;
using sumi::recipe::test::test_schemas;

namespace {
Value kohya(std::vector<std::string> args, Value root = Value::table("empty")) {
  apply_kohya_args(root, args);
  return root;
}
const Value& at(const Value& root, const std::string& section, const std::string& key) {
  const Value* s = root.find(section);
  REQUIRE(s != nullptr);
  const Value* v = s->find(key);
  REQUIRE_MESSAGE(v != nullptr, (section + "." + key + " is not set"));
  return *v;
}
}  // namespace

TEST_CASE("every flag in the table maps to a recipe section") {
  for (const auto& f : kohya_flags()) {
    std::string target = f.target;
    if (target.empty()) continue;
    std::string section = target.substr(0, target.find('.'));
    CHECK_MESSAGE(is_section(section), std::string(f.name));
    CHECK_MESSAGE(find_kohya_flag(f.name) == &f, (std::string("duplicate flag ") + f.name));
  }
  CHECK(find_kohya_flag("network_dim")->kind == KohyaKind::Int);
  CHECK(find_kohya_flag("optimizer_args")->kind == KohyaKind::KeyValues);
  CHECK(find_kohya_flag("nope") == nullptr);
}

TEST_CASE("--network_module networks.lora becomes network.type lora") {
  Value r = kohya({"--network_module", "networks.lora", "--network_dim=16", "--network_alpha", "8"});
  CHECK(at(r, "network", "type").as_string() == "lora");
  CHECK(at(r, "network", "type").origin() == "--network_module");
  CHECK(at(r, "network", "dim").as_int() == 16);
  CHECK(at(r, "network", "alpha").as_double() == 8.0);
  CHECK(normalize_network_module("lycoris.kohya") == "lycoris.kohya");
}

TEST_CASE("--optimizer_args key=value items become optimizer keys") {
  Value r = kohya({"--optimizer_type", "AdamW", "--optimizer_args", "weight_decay=0.1",
                   "betas=0.9,0.99", "--learning_rate", "1e-4"});
  CHECK(at(r, "optimizer", "type").as_string() == "adamw");
  CHECK(at(r, "optimizer", "weight_decay").as_double() == 0.1);
  CHECK(at(r, "optimizer", "betas").text() == "[0.9, 0.99]");
  CHECK(at(r, "optimizer", "learning_rate").as_double() == 1e-4);
  ResolvedSection s = resolve_section(*r.find("optimizer"), "optimizer", host_schema("optimizer"),
                                      test_schemas()["optimizer"]);
  CHECK(s.get_double("weight_decay") == 0.1);
  CHECK(s.get_double_list("betas") == std::vector<double>{0.9, 0.99});
  CHECK(s.origin("betas") == "--optimizer_args");

  Value n = kohya({"--network_args", "conv_dim=4", "block_dims=2,4,8"});
  CHECK(at(n, "network", "conv_dim").as_int() == 4);
  // A string parameter (lora's down_lr_weight...) gets the item's own text, as kohya's module
  // receives it: "0" stays "0", "1,,0.5" keeps its empty entry.
  Value w = kohya({"--network_args", "mid_lr_weight=0", "up_lr_weight=1,,0.5", "down_lr_weight= sine+0.5 "});
  Value text;
  REQUIRE(convert_value(at(w, "network", "mid_lr_weight"), SUMI_PARAM_STRING, text));
  CHECK(text.as_string() == "0");
  REQUIRE(convert_value(at(w, "network", "up_lr_weight"), SUMI_PARAM_STRING, text));
  CHECK(text.as_string() == "1,,0.5");
  REQUIRE(convert_value(at(w, "network", "down_lr_weight"), SUMI_PARAM_STRING, text));
  CHECK(text.as_string() == "sine+0.5");
  CHECK(!convert_value(Value::integer(3, "a recipe"), SUMI_PARAM_STRING, text));  // a file's number stays a number
  CHECK_THROWS_WITH_AS(kohya({"--optimizer_args", "weight_decay"}),
                       has("--optimizer_args expects key=value"), RecipeError);
}

TEST_CASE("a typo inside --optimizer_args is an unknown key naming the nearest") {
  Value r = kohya({"--optimizer_type", "AdamW", "--optimizer_args", "weight_decy=0.1"});
  CHECK_THROWS_WITH_AS(resolve_section(*r.find("optimizer"), "optimizer", host_schema("optimizer"),
                                       test_schemas()["optimizer"]),
                       has("unknown key 'weight_decy' in [optimizer] "
                                         "(--optimizer_args); did you mean 'weight_decay'?"),
                       RecipeError);
}

TEST_CASE("kohya optimizer names") {
  CHECK(normalize_optimizer_type("AdamW") == "adamw");
  CHECK(normalize_optimizer_type("SGD") == "sgd");
  CHECK(normalize_optimizer_type("torch.optim.SGD") == "sgd");
  CHECK(normalize_optimizer_type("") == "adamw");
  CHECK(normalize_optimizer_type("AdamW8bit") == "adamw8bit");
  CHECK(normalize_optimizer_type("Prodigy") == "prodigy");
  CHECK(normalize_optimizer_type("DAdaptAdam") == "dadaptadam");
  CHECK(normalize_optimizer_type("Lion") == "lion");
  CHECK(at(kohya({"--use_8bit_adam"}), "optimizer", "type").as_string() == "adamw8bit");
  CHECK(at(kohya({"--use_lion_optimizer"}), "optimizer", "type").as_string() == "lion");
}

TEST_CASE("SGDNesterov is sgd with nesterov and kohya's momentum 0.9") {
  Value r = kohya({"--optimizer_type", "SGDNesterov"});
  CHECK(at(r, "optimizer", "type").as_string() == "sgd");
  CHECK(at(r, "optimizer", "nesterov").as_bool() == true);
  CHECK(at(r, "optimizer", "momentum").as_double() == 0.9);
  ResolvedSection s = resolve_section(*r.find("optimizer"), "optimizer", host_schema("optimizer"),
                                      test_schemas(true)["optimizer"]);
  CHECK(s.get_bool("nesterov"));
  CHECK(s.get_double("momentum") == 0.9);
  // A momentum the user gave wins, whichever order the flags come in.
  Value m = kohya({"--optimizer_args", "momentum=0.5", "--optimizer_type", "SGDNesterov"});
  CHECK(at(m, "optimizer", "momentum").as_double() == 0.5);
  CHECK(at(r, "optimizer", "momentum").origin() == "--optimizer_type (implied by SGDNesterov)");

  // A config file's SGDNesterov overridden on the command line leaves nothing behind.
  TempFile cfg("cfg.toml", "optimizer_type = \"SGDNesterov\"\n");
  Value o = kohya({"--config_file", cfg.path().string(), "--optimizer_type", "AdamW"});
  CHECK(at(o, "optimizer", "type").as_string() == "adamw");
  CHECK(o.find("optimizer")->find("nesterov") == nullptr);
  CHECK(o.find("optimizer")->find("momentum") == nullptr);
}

TEST_CASE("flag syntax: --flag=value, --flag value, switches, negative numbers") {
  Value r = kohya({"--seed=-1", "--max_train_steps", "10", "--gradient_checkpointing",
                   "--cache_latents=false", "--output_dir", "out dir"});
  CHECK(at(r, "train", "seed").as_int() == -1);
  CHECK(at(r, "train", "max_train_steps").as_int() == 10);
  CHECK(at(r, "train", "gradient_checkpointing").as_bool() == true);
  CHECK(at(r, "output", "output_dir").as_string() == "out dir");
  REQUIRE(r.find("datasets") != nullptr);
  CHECK(r.find("datasets")->items()[0].find("cache_latents")->as_bool() == false);
  Value neg = kohya({"--seed", "-5"});
  CHECK(at(neg, "train", "seed").as_int() == -5);
  // Repeated flags: the last one wins, as with argparse.
  CHECK(at(kohya({"--seed", "1", "--seed", "2"}), "train", "seed").as_int() == 2);
  Value many = kohya({"--base_weights", "a.safetensors", "b.safetensors"});
  CHECK(at(many, "model", "base_weights").text() == "[\"a.safetensors\", \"b.safetensors\"]");
}

TEST_CASE("bad values name the flag") {
  CHECK_THROWS_WITH_AS(kohya({"--network_dim", "big"}),
                       "--network_dim expects an integer, found 'big'", RecipeError);
  CHECK_THROWS_WITH_AS(kohya({"--learning_rate", "fast"}),
                       "--learning_rate expects a number, found 'fast'", RecipeError);
  CHECK_THROWS_WITH_AS(kohya({"--network_dim"}), has("network_dim"), RecipeError);
  CHECK_THROWS_WITH_AS(kohya({"--seed", "1", "2"}), has("unexpected argument '2'"),
                       RecipeError);
  CHECK_THROWS_WITH_AS(kohya({"--output_config"}),
                       has("sumi does not support --output_config"), RecipeError);
}

TEST_CASE("an unknown flag names the nearest known flag") {
  CHECK_THROWS_WITH_AS(kohya({"--netwrk_dim", "16"}),
                       "unknown flag --netwrk_dim; did you mean '--network_dim'?", RecipeError);
  CHECK_THROWS_WITH_AS(kohya({"--learning_rat=1e-4"}),
                       "unknown flag --learning_rat; did you mean '--learning_rate'?", RecipeError);
  // No prefix guessing: an abbreviation is not a flag.
  CHECK_THROWS_WITH_AS(kohya({"--network_d", "16"}), has("unknown flag --network_d"),
                       RecipeError);
  CHECK_THROWS_WITH_AS(kohya({"--qqqqqqqqqqqqqq"}), has("docs/recipes.md"),
                       RecipeError);
}

TEST_CASE("a flag sumi cannot act on yet is an error at validation, never silent") {
  Value root = load_recipe(data_file("kohya_equivalent.toml"));
  apply_kohya_args(root, {"--fp8_base"});
  CHECK_THROWS_WITH_AS(resolve_recipe(root, test_schemas()),
                       has("sumi does not support --fp8_base yet (it maps to "
                           "train.fp8_base, which the host does not declare)"),
                       RecipeError);
  Value d = load_recipe(data_file("kohya_equivalent.toml"));
  apply_kohya_args(d, {"--train_data_dir", "img", "--resolution", "512,512"});
  try {
    resolve_recipe(d, test_schemas());
    FAIL("expected an error");
  } catch (const RecipeError& e) {
    std::string msg = e.what();
    CHECK(msg.find("sumi does not support --train_data_dir yet") != std::string::npos);
    CHECK(msg.find("sumi does not support --resolution yet") != std::string::npos);
  }
}

TEST_CASE("precedence: recipe < --config_file < CLI flags < --set") {
  TempFile recipe("recipe.toml",
                  "[model]\ntype = \"sd\"\npath = \"from-recipe\"\n"
                  "[optimizer]\ntype = \"adamw\"\nlearning_rate = 1.0\nweight_decay = 0.5\n"
                  "[train]\nmax_train_steps = 1\nseed = 1\n");
  TempFile config("cfg.toml",
                  "[optimizer_arguments]\nlearning_rate = 2.0\noptimizer_args = [\"weight_decay=0.25\"]\n"
                  "[training_arguments]\nmax_train_steps = 2\nseed = 2\n");
  Value root = load_recipe(recipe.path());
  apply_kohya_args(root, {"--set", "train.seed=4", "--seed", "3", "--max_train_steps", "3",
                          "--config_file", config.path().string()});
  CHECK(at(root, "model", "path").as_string() == "from-recipe");                // recipe only
  CHECK(at(root, "optimizer", "learning_rate").as_double() == 2.0);             // config > recipe
  CHECK(at(root, "optimizer", "weight_decay").as_double() == 0.25);             // config > recipe
  CHECK(at(root, "train", "max_train_steps").as_int() == 3);                    // CLI > config
  CHECK(at(root, "train", "seed").as_int() == 4);                               // --set > CLI
  CHECK(at(root, "train", "seed").origin() == "--set train.seed");
  CHECK(at(root, "optimizer", "learning_rate").origin() == config.path().string() + ":2");
}

TEST_CASE("--config_file without .toml gets it appended, as kohya does") {
  TempFile config("cfg.toml", "seed = 9\n");
  std::string stem = (config.dir() / "cfg").string();
  Value r = kohya({"--config_file", stem});
  CHECK(at(r, "train", "seed").as_int() == 9);
}

TEST_CASE("a kohya config file maps onto the same plan as the equivalent recipe") {
  Value from_kohya = load_recipe(data_file("base_for_kohya.toml"));
  apply_kohya_args(from_kohya, {"--config_file", data_file("kohya_config.toml").string()});
  Value recipe = load_recipe(data_file("kohya_equivalent.toml"));
  std::string a = dump_plan(resolve_recipe(from_kohya, test_schemas()));
  std::string b = dump_plan(resolve_recipe(recipe, test_schemas()));
  CHECK(a == b);
  CHECK(a.find("network.type = \"lora\"\n") != std::string::npos);
  CHECK(a.find("optimizer.betas = [0.9, 0.999]\n") != std::string::npos);

  // The same through command-line flags.
  Value from_flags = load_recipe(data_file("base_for_kohya.toml"));
  apply_kohya_args(from_flags,
                   {"--pretrained_model_name_or_path", "models/tiny-sd1.safetensors",
                    "--network_module", "networks.lora", "--network_dim", "8", "--network_alpha",
                    "4", "--network_args", "conv_dim=0", "--optimizer_type", "AdamW",
                    "--learning_rate", "1e-4", "--optimizer_args", "weight_decay=0.01",
                    "betas=0.9,0.999", "--lr_scheduler", "cosine", "--lr_warmup_steps", "10",
                    "--max_train_steps", "200", "--seed", "42", "--output_dir", "out",
                    "--output_name", "my-lora"});
  CHECK(dump_plan(resolve_recipe(from_flags, test_schemas())) == b);
}

TEST_CASE("config file errors") {
  TempFile unknown("cfg.toml", "[a]\nnetwork_dimm = 4\n");
  Value r = Value::table("x");
  CHECK_THROWS_WITH_AS(apply_kohya_config_file(r, unknown.path()),
                       ("unknown kohya option 'network_dimm' in " + unknown.path().string() +
                        ":2; did you mean 'network_dim'?")
                           .c_str(),
                       RecipeError);
  TempFile sw("cfg.toml", "gradient_checkpointing = 3\n");
  CHECK_THROWS_WITH_AS(apply_kohya_config_file(r, sw.path()),
                       has("gradient_checkpointing is a switch"), RecipeError);
  TempFile unsupported("cfg.toml", "fp8_base = true\n");
  Value root = load_recipe(data_file("kohya_equivalent.toml"));
  apply_kohya_config_file(root, unsupported.path());
  CHECK_THROWS_WITH_AS(resolve_recipe(root, test_schemas()),
                       has("sumi does not support --fp8_base yet (" +
                                         unsupported.path().string() + ":1"),
                       RecipeError);
}

TEST_CASE("docs/recipes.md lists every kohya flag sumi knows") {
  std::ifstream in(std::filesystem::path(SUMI_SOURCE_DIR) / "docs" / "recipes.md");
  REQUIRE(in.good());
  std::string doc((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  for (const auto& f : kohya_flags())
    CHECK_MESSAGE(doc.find("| `--" + std::string(f.name) + "` |") != std::string::npos,
                  std::string(f.name));
}

TEST_CASE("a kohya flag the chosen network plugin has no parameter for names the plugin, not a missing sumi feature") {
  static const sumi_param_spec kIa3[] = {
      {sizeof(sumi_param_spec), "train_on_input", SUMI_PARAM_BOOL, "false", "scale the input instead of the output"},
  };
  PluginSchemas schemas = test_schemas();
  schemas["network"] = to_specs(kIa3, std::size(kIa3));
  Value root = load_recipe(data_file("kohya_equivalent.toml"));
  apply_kohya_args(root, {"--network_module", "ia3", "--network_dim", "8"});
  try {
    resolve_recipe(root, schemas);
    FAIL("expected an error");
  } catch (const RecipeError& e) {
    const std::string msg = e.what();
    CHECK(msg.find("network 'ia3' has no parameter dim (--network_dim") != std::string::npos);
    CHECK(msg.find("its parameters: train_on_input") != std::string::npos);
    CHECK(msg.find("does not support") == std::string::npos);
  }
}
