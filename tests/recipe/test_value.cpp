// The value tree and loading: TOML and YAML agree, origins point at lines, errors name the
// file, line and the nearest valid section.
#include <doctest/doctest.h>

#include "sumi/recipe/load.h"
#include "sumi/recipe/plan.h"
#include "sumi/recipe/sections.h"
#include "test_support.h"

using namespace sumi::recipe;
using sumi::recipe::test::data_file;
using sumi::recipe::test::has;
using sumi::recipe::test::TempFile;

TEST_CASE("the same recipe in TOML and YAML gives an identical tree and plan") {
  Value t = load_recipe(data_file("lora.toml"));
  Value y = load_recipe(data_file("lora.yaml"));
  CHECK(t == y);
  CHECK(dump_plan(t) == dump_plan(y));
  const std::string plan = dump_plan(t);
  CHECK(plan.find("optimizer.learning_rate = 0.0001\n") != std::string::npos);
  CHECK(plan.find("optimizer.betas = [0.9, 0.999]\n") != std::string::npos);
  CHECK(plan.find("network.dim = 8\n") != std::string::npos);
  CHECK(plan.find("network.alpha = 4.0\n") != std::string::npos);
  CHECK(plan.find("model.type = \"sd\"\n") != std::string::npos);
  CHECK(plan.find("datasets = [{ image_dir = \"data/images\", num_repeats = 10, "
                  "caption_extension = \".txt\" }]\n") != std::string::npos);
  // Sorted lines.
  CHECK(plan.find("datasets = ") < plan.find("lr_scheduler.type"));
  CHECK(plan.find("lr_scheduler.type") < plan.find("model.path"));
}

TEST_CASE("tables keep document order and values remember their lines") {
  Value t = load_recipe(data_file("lora.toml"));
  std::vector<std::string> expected = {"model", "network", "optimizer", "lr_scheduler",
                                       "noise_scheduler", "datasets", "train", "sample", "output"};
  CHECK(t.keys() == expected);
  std::vector<std::string> opt = {"type", "learning_rate", "weight_decay", "betas"};
  CHECK(t.find("optimizer")->keys() == opt);
  const std::string file = data_file("lora.toml").string();
  CHECK(t.find("optimizer")->find("learning_rate")->origin() == file + ":14");
  CHECK(t.find("network")->find("dim")->origin() == file + ":8");

  Value y = load_recipe(data_file("lora.yaml"));
  const std::string yfile = data_file("lora.yaml").string();
  CHECK(y.find("optimizer")->find("learning_rate")->origin() == yfile + ":14");
  CHECK(y.find("optimizer")->keys() == opt);
}

TEST_CASE("YAML scalars are typed like TOML") {
  TempFile f("r.yaml",
             "train:\n  a: 12\n  b: -3.5\n  c: 1e-4\n  d: true\n  e: \"12\"\n  f: hello\n"
             "  g: 'false'\n  h: .inf\n  i: 0x10\n");
  Value v = load_recipe(f.path());
  const Value& s = *v.find("train");
  CHECK(s.find("a")->kind() == Value::Kind::Int);
  CHECK(s.find("a")->as_int() == 12);
  CHECK(s.find("b")->as_double() == -3.5);
  CHECK(s.find("c")->kind() == Value::Kind::Double);
  CHECK(s.find("c")->as_double() == 1e-4);
  CHECK(s.find("d")->as_bool() == true);
  CHECK(s.find("e")->as_string() == "12");
  CHECK(s.find("f")->as_string() == "hello");
  CHECK(s.find("g")->as_string() == "false");
  CHECK(s.find("h")->text() == "inf");
  CHECK(s.find("i")->as_int() == 16);
}

TEST_CASE("an unknown section names the nearest valid one, with file and line") {
  TempFile f("r.toml", "[model]\ntype = \"sd\"\n\n[optimiser]\ntype = \"adamw\"\n");
  CHECK_THROWS_WITH_AS(load_recipe(f.path()),
                       ("unknown section 'optimiser' in " + f.path().string() +
                        ":4; did you mean 'optimizer'?")
                           .c_str(),
                       RecipeError);
  TempFile y("r.yaml", "model:\n  type: sd\nlr_schedular:\n  type: cosine\n");
  CHECK_THROWS_WITH_AS(load_recipe(y.path()),
                       ("unknown section 'lr_schedular' in " + y.path().string() +
                        ":4; did you mean 'lr_scheduler'?")
                           .c_str(),
                       RecipeError);
  TempFile far("r.toml", "[zzzzzzzz]\na = 1\n");
  CHECK_THROWS_WITH_AS(load_recipe(far.path()), has("valid sections: model"),
                       RecipeError);
}

TEST_CASE("sections must be tables; datasets may be an array of tables") {
  TempFile f("r.toml", "train = 5\n");
  CHECK_THROWS_WITH_AS(load_recipe(f.path()),
                       has("section 'train' must be a table, found integer 5"),
                       RecipeError);
  TempFile d("r.toml", "datasets = [1, 2]\n");
  CHECK_THROWS_WITH_AS(load_recipe(d.path()),
                       has("each entry of 'datasets' must be a table"), RecipeError);
  TempFile ok("r.toml", "[datasets]\nimage_dir = \"x\"\n");
  CHECK_NOTHROW(load_recipe(ok.path()));
}

TEST_CASE("parse errors name the file and line") {
  TempFile t("bad.toml", "[model]\ntype = \"sd\"\npath = \n");
  CHECK_THROWS_WITH_AS(load_recipe(t.path()), has(t.path().string() + ":3"),
                       RecipeError);
  TempFile y("bad.yaml", "model:\n  type: sd\n   path: [x\n");
  CHECK_THROWS_WITH_AS(load_recipe(y.path()), has(y.path().string() + ":"),
                       RecipeError);
  CHECK_THROWS_WITH_AS(load_recipe(y.path()), has("invalid YAML"), RecipeError);
  TempFile x("r.json", "{}");
  CHECK_THROWS_WITH_AS(load_recipe(x.path()), has("expected a .toml, .yaml or .yml"),
                       RecipeError);
  CHECK_THROWS_WITH_AS(load_recipe("/nonexistent/r.toml"), has("cannot open"),
                       RecipeError);
}

TEST_CASE("YAML duplicate keys are rejected") {
  TempFile y("r.yaml", "train:\n  seed: 1\n  seed: 2\n");
  CHECK_THROWS_WITH_AS(load_recipe(y.path()), has("duplicate key 'seed'"),
                       RecipeError);
}

TEST_CASE("values typed from text") {
  CHECK(parse_value_text("16", "x").as_int() == 16);
  CHECK(parse_value_text("-1", "x").as_int() == -1);
  CHECK(parse_value_text("0.1", "x").as_double() == 0.1);
  CHECK(parse_value_text("1e-4", "x").as_double() == 1e-4);
  CHECK(parse_value_text("True", "x").as_bool() == true);
  CHECK(parse_value_text("false", "x").as_bool() == false);
  CHECK(parse_value_text("None", "x").is_null());
  CHECK(parse_value_text("hello world", "x").as_string() == "hello world");
  CHECK(parse_value_text("\"16\"", "x").as_string() == "16");
  CHECK(parse_value_text("0.9,0.99", "x").text() == "[0.9, 0.99]");
  CHECK(parse_value_text("(0.9, 0.99)", "x").text() == "[0.9, 0.99]");
  CHECK(parse_value_text("[1, 2, 3]", "x").text() == "[1, 2, 3]");
  CHECK(parse_value_text("a,b", "x").as_string() == "a,b");
  CHECK(parse_value_text("7", "--set a.b").origin() == "--set a.b");
}

TEST_CASE("canonical text of doubles is the shortest round trip") {
  CHECK(format_double(1.0) == "1.0");
  CHECK(format_double(0.1) == "0.1");
  CHECK(format_double(1e-4) == "0.0001");
  CHECK(format_double(2e-6) == "2e-06");
  CHECK(format_double(0.999) == "0.999");
  CHECK(format_double(1e20) == "1e+20");
  CHECK(std::strtod(format_double(1.0 / 3.0).c_str(), nullptr) == 1.0 / 3.0);
  CHECK(quote_string("a\"b\\c\n") == "\"a\\\"b\\\\c\\n\"");
}

TEST_CASE("set_override replaces, creates and checks the section name") {
  Value root = load_recipe(data_file("lora.toml"));
  set_override(root, "optimizer.learning_rate", "3e-4", "--set optimizer.learning_rate");
  const Value& lr = *root.find("optimizer")->find("learning_rate");
  CHECK(lr.as_double() == 3e-4);
  CHECK(lr.origin() == "--set optimizer.learning_rate");
  // The key keeps its place in the table.
  CHECK(root.find("optimizer")->keys()[1] == "learning_rate");

  set_override(root, "train.mixed_precision", "fp16", "--set");
  CHECK(root.find("train")->find("mixed_precision")->as_string() == "fp16");
  apply_set_argument(root, "optimizer.betas=0.8,0.9", "--set");
  CHECK(root.find("optimizer")->find("betas")->text() == "[0.8, 0.9]");

  CHECK_THROWS_WITH_AS(set_override(root, "optimiser.eps", "1", "--set"),
                       "--set: unknown section 'optimiser'; did you mean 'optimizer'?",
                       RecipeError);
  CHECK_THROWS_AS(set_override(root, "optimizer", "1", "--set"), RecipeError);
  CHECK_THROWS_AS(set_override(root, "optimizer.learning_rate.x", "1", "--set"), RecipeError);
  CHECK_THROWS_AS(apply_set_argument(root, "optimizer.eps", "--set"), RecipeError);
}

TEST_CASE("plugin_type reads the type key") {
  Value root = load_recipe(data_file("lora.toml"));
  CHECK(plugin_type(root, "optimizer") == "adamw");
  CHECK(plugin_type(root, "network") == "lora");
  Value empty = Value::table("x");
  CHECK(plugin_type(empty, "lr_scheduler") == "constant");
  CHECK(plugin_type(empty, "model") == "");
}

TEST_CASE("nested tables flatten into dotted plan lines; an empty YAML file is an empty recipe") {
  TempFile t("r.toml", "[sample.sampler]\nname = \"euler\"\nsteps = 20\n[output]\n");
  Value v = load_recipe(t.path());
  CHECK(dump_plan(v) == "output = {}\nsample.sampler.name = \"euler\"\nsample.sampler.steps = 20\n");
  TempFile y("r.yaml", "# nothing yet\n");
  Value e = load_recipe(y.path());
  CHECK(e.is_table());
  CHECK(e.size() == 0);
  Value root = Value::table("x");
  CHECK_THROWS_WITH_AS(set_override(root, "datasets.image_dir", "x", "--set"),
                       has("datasets entries cannot be set one key at a time"), RecipeError);
}
