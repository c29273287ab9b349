// Validation of sections against the host's and a plugin's schema.
#include <doctest/doctest.h>

#include "sumi/recipe/load.h"
#include "sumi/recipe/plan.h"
#include "sumi/recipe/schema.h"
#include "test_support.h"

using namespace sumi::recipe;
using sumi::recipe::test::data_file;
using sumi::recipe::test::has;
using sumi::recipe::test::TempFile;
using sumi::recipe::test::test_schemas;

namespace {
ResolvedSection resolve_optimizer(const std::string& toml_body) {
  TempFile f("recipe.toml", "[optimizer]\n" + toml_body);
  Value root = load_recipe(f.path());
  return resolve_section(*root.find("optimizer"), "optimizer", host_schema("optimizer"),
                         test_schemas()["optimizer"]);
}
}  // namespace

TEST_CASE("host schema table") {
  auto opt = host_schema("optimizer");
  REQUIRE(opt.size() == 7);
  CHECK(opt[0].key == "type");
  CHECK(*opt[0].default_value == "\"adamw\"");  // kohya's default optimizer
  CHECK(opt[1].key == "learning_rate");
  CHECK(opt[1].type == SUMI_PARAM_DOUBLE);
  CHECK(*opt[1].default_value == "2e-6");
  auto net = host_schema("network");
  REQUIRE(net.size() == 5);
  CHECK(net[2].key == "weights");
  CHECK(net[2].optional);
  CHECK(net[3].key == "dim_from_weights");  // kohya's --dim_from_weights
  CHECK(net[3].type == SUMI_PARAM_BOOL);
  CHECK(net[4].key == "scale_weight_norms");  // kohya's --scale_weight_norms
  CHECK(net[4].type == SUMI_PARAM_DOUBLE);
  CHECK(net[4].optional);
  CHECK(host_schema("sample")[0].key == "prompts");  // a prompt file, as kohya's --sample_prompts
  CHECK(host_schema("lr_scheduler")[0].default_value == std::optional<std::string>("\"constant\""));
  CHECK(host_schema("train")[1].key == "seed");
}

TEST_CASE("ParamSpec from the C ABI struct respects struct_size") {
  sumi_param_spec full{sizeof(sumi_param_spec), "eps", SUMI_PARAM_DOUBLE, "1e-8", "epsilon"};
  ParamSpec p(full);
  CHECK(p.key == "eps");
  CHECK(p.type == SUMI_PARAM_DOUBLE);
  CHECK(*p.default_value == "1e-8");
  CHECK(p.doc == "epsilon");
  sumi_param_spec short_one = full;
  short_one.struct_size = offsetof(sumi_param_spec, doc);  // an older, shorter layout
  ParamSpec q(short_one);
  CHECK(q.key == "eps");
  CHECK(q.doc.empty());
}

TEST_CASE("types are converted and defaults filled") {
  ResolvedSection s = resolve_optimizer(
      "type = \"adamw\"\nlearning_rate = 1\nbetas = \"0.8,0.9\"\namsgrad = \"true\"\n");
  CHECK(s.get_string("type") == "adamw");
  CHECK(s.get_double("learning_rate") == 1.0);  // int accepted for a float
  CHECK(s.text("learning_rate") == "1.0");
  CHECK(s.get_double_list("betas") == std::vector<double>{0.8, 0.9});
  CHECK(s.text("betas") == "[0.8, 0.9]");
  CHECK(s.get_bool("amsgrad") == true);
  CHECK(s.get_double("weight_decay") == 0.01);  // default
  CHECK(s.origin("weight_decay") == "default");
  CHECK(s.get_double("eps") == 1e-8);
  CHECK(s.origin("learning_rate").find("recipe.toml:3") != std::string::npos);
  // Keys come out in schema order, host keys first.
  REQUIRE(s.entries().size() == 6);
  CHECK(s.entries()[0].key == "type");
  CHECK(s.entries()[1].key == "learning_rate");
  CHECK(s.entries()[2].key == "weight_decay");
  CHECK_THROWS_AS(s.get_int("learning_rate"), RecipeError);
  CHECK_THROWS_AS(s.get_double("nonexistent"), RecipeError);
}

TEST_CASE("TOML arrays and single numbers become lists") {
  ResolvedSection s = resolve_optimizer("type = \"adamw\"\nbetas = [1, 0.5]\n");
  CHECK(s.get_double_list("betas") == std::vector<double>{1.0, 0.5});
  ResolvedSection one = resolve_optimizer("type = \"adamw\"\nbetas = 0.5\n");
  CHECK(one.get_double_list("betas") == std::vector<double>{0.5});
}

TEST_CASE("int lists, including the empty default") {
  Value net = Value::table("t");
  net.set("type", Value::string("lora", "t"));
  net.set("dim", Value::string("16", "--network_args"));
  ResolvedSection s = resolve_section(net, "network", host_schema("network"),
                                      test_schemas()["network"]);
  CHECK(s.get_int("dim") == 16);
  CHECK(s.get_int_list("block_dims").empty());
  CHECK(!s.has("weights"));  // optional host key left unset
  CHECK(s.get_double("multiplier") == 1.0);
  net.set("block_dims", Value::string("2,4,8", "--network_args"));
  ResolvedSection t = resolve_section(net, "network", host_schema("network"),
                                      test_schemas()["network"]);
  CHECK(t.get_int_list("block_dims") == std::vector<int64_t>{2, 4, 8});
  net.set("block_dims", Value::string("2,4.5", "--network_args"));
  CHECK_THROWS_WITH_AS(
      resolve_section(net, "network", host_schema("network"), test_schemas()["network"]),
      has("[network] block_dims: expected a list of integers"), RecipeError);
}

TEST_CASE("an unknown key names the nearest valid key, its origin and the valid keys") {
  CHECK_THROWS_WITH_AS(
      resolve_optimizer("type = \"adamw\"\nweight_decy = 0.1\n"),
      has("unknown key 'weight_decy' in [optimizer] ("), RecipeError);
  try {
    resolve_optimizer("type = \"adamw\"\nweight_decy = 0.1\n");
    FAIL("expected an error");
  } catch (const RecipeError& e) {
    std::string msg = e.what();
    CHECK(msg.find("recipe.toml:3); did you mean 'weight_decay'? valid keys: type, learning_rate, "
                   "unet_lr, text_encoder_lr, text_encoder_lr1, text_encoder_lr2, block_lr, weight_decay, betas, eps, amsgrad") != std::string::npos);
  }
  CHECK_THROWS_WITH_AS(resolve_optimizer("type = \"adamw\"\nzzzzzzzzzzzz = 1\n"),
                       has("; valid keys: type"), RecipeError);
}

TEST_CASE("a wrong type names key, expected type, found value and origin") {
  try {
    resolve_optimizer("type = \"adamw\"\nlearning_rate = \"fast\"\n");
    FAIL("expected an error");
  } catch (const RecipeError& e) {
    std::string msg = e.what();
    CHECK(msg.find("[optimizer] learning_rate: expected a float, found string \"fast\" (") !=
          std::string::npos);
    CHECK(msg.find("recipe.toml:3)") != std::string::npos);
  }
  CHECK_THROWS_WITH_AS(resolve_optimizer("type = 5\n"),
                       has("[optimizer] type: expected a string, found integer 5"),
                       RecipeError);
  CHECK_THROWS_WITH_AS(resolve_optimizer("type = \"adamw\"\namsgrad = 1\n"),
                       has("amsgrad: expected a boolean, found integer 1"),
                       RecipeError);
}

TEST_CASE("missing required keys are reported, all problems together") {
  // [optimizer] type defaults to kohya's AdamW; [network] type has no default.
  CHECK(resolve_optimizer("learning_rate = 1e-3\n").get_string("type") == "adamw");
  Value net = Value::table("recipe.toml");
  net.set("dimm", Value::integer(4, "recipe.toml:3"));
  try {
    resolve_section(net, "network", host_schema("network"), {});
    FAIL("expected an error");
  } catch (const RecipeError& e) {
    std::string msg = e.what();
    CHECK(msg.find("unknown key 'dimm'") != std::string::npos);
    CHECK(msg.find("missing required key 'type' in [network] (section at ") != std::string::npos);
  }
}

TEST_CASE("a plugin may not redeclare a host key") {
  std::vector<ParamSpec> bad = {ParamSpec("learning_rate", SUMI_PARAM_DOUBLE, "1", "")};
  Value s = Value::table("t");
  s.set("type", Value::string("x", "t"));
  CHECK_THROWS_WITH_AS(resolve_section(s, "optimizer", host_schema("optimizer"), bad),
                       has("declares 'learning_rate', a key the host owns"),
                       RecipeError);
}

TEST_CASE("a whole recipe resolves into a plan with defaults") {
  Value root = load_recipe(data_file("lora.toml"));
  root.find("sample")->erase("prompts");  // a list here; sample.prompts is a prompt file
  ResolvedRecipe r = resolve_recipe(root, test_schemas());
  CHECK(r.section("optimizer").get_double("learning_rate") == 1e-4);
  CHECK(r.section("network").get_int("dim") == 8);
  CHECK(r.section("train").get_int("seed") == 42);
  CHECK(r.section("lr_scheduler").get_int("warmup_steps") == 10);
  CHECK(r.datasets.size() == 1);
  std::string plan = dump_plan(r);
  CHECK(plan.find("network.multiplier = 1.0\n") != std::string::npos);
  CHECK(plan.find("optimizer.eps = 1e-08\n") != std::string::npos);
  CHECK(plan.find("output.output_name = \"my-lora\"\n") != std::string::npos);

  // YAML resolves to the same plan.
  Value y = load_recipe(data_file("lora.yaml"));
  y.find("sample")->erase("prompts");
  CHECK(dump_plan(resolve_recipe(y, test_schemas())) == plan);
}

TEST_CASE("resolve_recipe reports missing sections' required keys and mistyped sample keys") {
  Value root = load_recipe(data_file("lora.toml"));
  root.erase("model");
  try {
    resolve_recipe(root, test_schemas());
    FAIL("expected an error");
  } catch (const RecipeError& e) {
    std::string msg = e.what();
    CHECK(msg.find("missing required key 'type' in [model]") != std::string::npos);
    CHECK(msg.find("missing required key 'path' in [model]") != std::string::npos);
    CHECK(msg.find("[sample] prompts: expected a string") != std::string::npos);
  }
}

TEST_CASE("string lists (host keys only): an array of strings, or one string as a one-item list") {
  Value model = Value::table("t");
  model.set("type", Value::string("sd1", "t"));
  model.set("path", Value::string("m.safetensors", "t"));
  Value files = Value::array("--base_weights");
  files.push_back(Value::string("a.safetensors", "--base_weights"));
  files.push_back(Value::string("b.safetensors", "--base_weights"));
  model.set("base_weights", files);
  ResolvedSection s = resolve_section(model, "model", host_schema("model"), {});
  CHECK(s.get_string_list("base_weights") == std::vector<std::string>{"a.safetensors", "b.safetensors"});
  CHECK(!s.has("base_weights_multiplier"));
  model.set("base_weights", Value::string("c.safetensors", "recipe.toml:3"));
  CHECK(resolve_section(model, "model", host_schema("model"), {}).get_string_list("base_weights") ==
        std::vector<std::string>{"c.safetensors"});
  Value bad = Value::array("recipe.toml:4");
  bad.push_back(Value::integer(3, "recipe.toml:4"));
  model.set("base_weights", bad);
  CHECK_THROWS_WITH_AS(resolve_section(model, "model", host_schema("model"), {}), doctest::Contains("list of strings"), RecipeError);
}
