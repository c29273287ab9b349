// kohya's dataset-config TOML: precedence subset > dataset > general > command line > default,
// schema errors with the nearest key, and the no-config folder convention.
#include <doctest/doctest.h>

#include "helpers.h"
#include "sumi/datasets/config.h"

using namespace sumi::datasets;
using sumi::test::TempDir;

namespace {
DatasetGroupConfig parse(const std::string& toml, const CliOptions& cli = {}) {
  return parse_dataset_config(toml, "cfg.toml", cli);
}
std::string error_of(const std::string& toml, const CliOptions& cli = {}) {
  try {
    parse(toml, cli);
  } catch (const ConfigError& e) {
    return e.what();
  }
  return "(no error)";
}
}  // namespace

TEST_CASE("precedence: subset > dataset > general > command line > default") {
  const auto g = parse(R"(
[general]
shuffle_caption = true
keep_tokens = 1
caption_extension = ".txt"
flip_aug = true

[[datasets]]
resolution = [768, 512]
batch_size = 4
keep_tokens = 2
enable_bucket = true

  [[datasets.subsets]]
  image_dir = "img/a"
  num_repeats = 10
  class_tokens = "sks dog"
  keep_tokens = 3

  [[datasets.subsets]]
  image_dir = "img/reg"
  is_reg = true
  caption_extension = "caption"

[[datasets]]
  [[datasets.subsets]]
  image_dir = "img/b"
)",
                       {{"resolution", std::string("512")}, {"train_batch_size", 2LL}, {"dataset_repeats", 3LL},
                        {"caption_dropout_rate", 0.25}, {"keep_tokens", 7LL}});
  REQUIRE(g.datasets.size() == 2);
  const auto& d0 = g.datasets[0];
  CHECK(d0.batch_size == 4);                            // dataset over command line
  CHECK(d0.buckets.resolution == Size{768, 512});       // dataset over command line
  CHECK(d0.buckets.enable_bucket);
  CHECK(d0.buckets.reso_steps == 64);                   // default
  REQUIRE(d0.subsets.size() == 2);
  const auto& a = d0.subsets[0];
  CHECK(a.kind == SubsetKind::DreamBooth);
  CHECK(a.image_dir == "img/a");
  CHECK(a.num_repeats == 10);                           // subset
  CHECK(a.class_tokens == std::optional<std::string>("sks dog"));
  CHECK(a.caption.keep_tokens == 3);                    // subset over dataset / general / cli
  CHECK(a.caption.shuffle);                             // general
  CHECK(a.caption_extension == ".txt");                 // general over default
  CHECK(a.caption.dropout_rate == 0.25);                // command line
  CHECK(a.flip_aug);
  CHECK_FALSE(a.is_reg);
  const auto& r = d0.subsets[1];
  CHECK(r.is_reg);
  CHECK(r.num_repeats == 3);                            // --dataset_repeats
  CHECK(r.caption.keep_tokens == 2);                    // dataset over general
  CHECK(r.caption_extension == ".caption");             // dot added
  CHECK_FALSE(r.class_tokens.has_value());
  const auto& d1 = g.datasets[1];
  CHECK(d1.batch_size == 2);                            // --train_batch_size
  CHECK(d1.buckets.resolution == Size{512, 512});       // --resolution
  CHECK_FALSE(d1.buckets.enable_bucket);                // default
  CHECK(d1.subsets[0].caption.keep_tokens == 1);        // general over command line
  CHECK(d1.subsets[0].num_repeats == 3);
  CHECK(d1.subsets[0].caption_extension == ".txt");
}

TEST_CASE("resize_interpolation: dataset level reaches subsets, names are checked") {
  auto g = parse("[[datasets]]\nresolution = 512\nresize_interpolation = \"area\"\n[[datasets.subsets]]\nimage_dir = \"a\"\n"
                 "[[datasets.subsets]]\nimage_dir = \"b\"\nresize_interpolation = \"nearest\"\n");
  CHECK(g.datasets[0].subsets[0].resize_interpolation == "area");
  CHECK(g.datasets[0].subsets[1].resize_interpolation == "nearest");
  const auto e = error_of("[general]\nresolution = 512\nresize_interpolation = \"lanczoz\"\n[[datasets]]\n"
                          "[[datasets.subsets]]\nimage_dir = \"a\"\n");
  CHECK(e.find("cfg.toml:3") != std::string::npos);
  CHECK(e.find("did you mean \"lanczos\"") != std::string::npos);
}

TEST_CASE("subset kinds: fine-tuning and ControlNet") {
  const auto g = parse(R"(
[general]
resolution = 1024
class_tokens = "only for DreamBooth"
[[datasets]]
  [[datasets.subsets]]
  metadata_file = "meta.json"
  image_dir = "train"
[[datasets]]
  [[datasets.subsets]]
  image_dir = "img"
  conditioning_data_dir = "cond"
  caption_extension = ".txt"
)");
  const auto& ft = g.datasets[0].subsets[0];
  CHECK(ft.kind == SubsetKind::FineTuning);
  CHECK(ft.metadata_file == "meta.json");
  CHECK(ft.image_dir == "train");
  CHECK_FALSE(ft.class_tokens.has_value());  // a general DreamBooth key does not reach it
  const auto& cn = g.datasets[1].subsets[0];
  CHECK(cn.kind == SubsetKind::ControlNet);
  CHECK(cn.conditioning_data_dir == "cond");
  CHECK(cn.caption_extension == ".txt");
}

TEST_CASE("errors: unknown keys name the nearest valid key, with file and line") {
  const std::string base = "[general]\nresolution = 512\n[[datasets]]\n  [[datasets.subsets]]\n  image_dir = \"a\"\n";
  auto e = error_of(base + "  num_repeat = 3\n");
  CHECK(e.find("cfg.toml:6") != std::string::npos);
  CHECK(e.find("datasets[0].subsets[0].num_repeat") != std::string::npos);
  CHECK(e.find("did you mean \"num_repeats\"") != std::string::npos);
  e = error_of("[general]\nshufle_caption = true\nresolution = 512\n[[datasets]]\n[[datasets.subsets]]\nimage_dir = \"a\"\n");
  CHECK(e.find("did you mean \"shuffle_caption\"") != std::string::npos);
  e = error_of("[genral]\nresolution = 512\n");
  CHECK(e.find("did you mean \"general\"") != std::string::npos);
  e = error_of(base + "  completely_unrelated_setting_name = 1\n");
  CHECK(e.find("unknown dataset-config key") != std::string::npos);
  CHECK(e.find("did you mean") == std::string::npos);
}

TEST_CASE("errors: keys at the wrong level, wrong kind, wrong type, unsupported, missing") {
  const std::string head = "[general]\nresolution = 512\n[[datasets]]\n  [[datasets.subsets]]\n";
  CHECK(error_of(head + "  image_dir = \"a\"\n  batch_size = 2\n").find("is a dataset setting") != std::string::npos);
  CHECK(error_of("[general]\nimage_dir = \"a\"\nresolution = 512\n[[datasets]]\n[[datasets.subsets]]\nimage_dir = \"a\"\n")
            .find("per-subset setting") != std::string::npos);
  CHECK(error_of(head + "  metadata_file = \"m.json\"\n  is_reg = true\n").find("DreamBooth subsets only") !=
        std::string::npos);
  auto e = error_of(head + "  image_dir = \"a\"\n  num_repeats = \"ten\"\n");
  CHECK(e.find("num_repeats") != std::string::npos);
  CHECK(e.find("expected an integer, found a string") != std::string::npos);
  CHECK(error_of(head + "  image_dir = \"a\"\n  alpha_mask = true\n").find("does not support") != std::string::npos);
  CHECK(error_of(head + "  is_reg = true\n").find("needs \"image_dir\"") != std::string::npos);
  CHECK(error_of(head + "  image_dir = \"a\"\n  num_repeats = 10000000000000\n").find("out of range") !=
        std::string::npos);
  CHECK(error_of(head + "  image_dir = \"a\"\n  caption_dropout_rate = 1.5\n").find("between 0 and 1") !=
        std::string::npos);
  CHECK(error_of("[[datasets]]\n[[datasets.subsets]]\nimage_dir = \"a\"\n").find("resolution is required") !=
        std::string::npos);
  CHECK(error_of("[general]\nresolution = [1, 2, 3]\n[[datasets]]\n[[datasets.subsets]]\nimage_dir = \"a\"\n")
            .find("[width, height]") != std::string::npos);
  CHECK(error_of("[general]\nresolution = 512\n").find("no datasets") != std::string::npos);
  CHECK(error_of("[[datasets]]\nresolution = 512\n[[datasets.subsets]]\nimage_dir = \"a\"\n[[datasets.subsets]]\n"
                 "metadata_file = \"m\"\n")
            .find("cannot be mixed") != std::string::npos);
  CHECK(error_of("[general\n").find("invalid TOML") != std::string::npos);
  // Bucket bounds are checked against the resolution.
  CHECK(error_of("[general]\nresolution = 512\nenable_bucket = true\nmin_bucket_reso = 640\n[[datasets]]\n"
                 "[[datasets.subsets]]\nimage_dir = \"a\"\n")
            .find("min_bucket_reso") != std::string::npos);
  // Command-line values are typed too.
  CHECK(error_of(head + "  image_dir = \"a\"\n", {{"train_batch_size", std::string("two")}}).find("--train_batch_size") !=
        std::string::npos);
}

TEST_CASE("folder names: <repeats>_<class tokens>") {
  auto p = parse_folder_name("10_sks dog");
  REQUIRE(p);
  CHECK(p->num_repeats == 10);
  CHECK(p->class_tokens == "sks dog");
  p = parse_folder_name("3_a_b c");  // only the first "_" splits
  REQUIRE(p);
  CHECK(p->num_repeats == 3);
  CHECK(p->class_tokens == "a_b c");
  p = parse_folder_name("5");
  REQUIRE(p);
  CHECK(p->class_tokens.empty());
  CHECK_FALSE(parse_folder_name("sks dog"));
  CHECK_FALSE(parse_folder_name("x10_dog"));
  CHECK_FALSE(parse_folder_name("_dog"));
  CHECK(parse_folder_name("0_dog")->num_repeats == 0);
}

TEST_CASE("no config: --train_data_dir folders and --reg_data_dir") {
  TempDir t;
  std::filesystem::create_directories(t / "train/10_sks dog");
  std::filesystem::create_directories(t / "train/2_sks cat");
  std::filesystem::create_directories(t / "train/logs");
  std::filesystem::create_directories(t / "train/0_disabled");
  std::filesystem::create_directories(t / "reg/1_dog");
  std::vector<std::string> skipped;
  auto subs = subsets_from_folders(t / "train", false, &skipped);
  REQUIRE(subs.size() == 2);
  CHECK(subs[0].num_repeats == 10);
  CHECK(*subs[0].class_tokens == "sks dog");
  CHECK(subs[1].num_repeats == 2);
  CHECK(skipped.size() == 2);
  auto g = config_from_arguments({{"train_data_dir", (t / "train").string()},
                                  {"reg_data_dir", (t / "reg").string()},
                                  {"resolution", std::string("512,768")},
                                  {"dataset_repeats", 5LL},
                                  {"caption_extension", std::string(".txt")},
                                  {"enable_bucket", true}});
  REQUIRE(g.datasets.size() == 1);
  const auto& d = g.datasets[0];
  CHECK(d.buckets.resolution == Size{512, 768});
  CHECK(d.buckets.enable_bucket);
  REQUIRE(d.subsets.size() == 3);
  CHECK(d.subsets[0].num_repeats == 10);  // folder name over --dataset_repeats
  CHECK(d.subsets[0].caption_extension == ".txt");
  CHECK(d.subsets[2].is_reg);
  CHECK(*d.subsets[2].class_tokens == "dog");
  // Fine-tuning: --in_json with --train_data_dir as the image folder; --dataset_repeats applies.
  g = config_from_arguments({{"train_data_dir", std::string("imgs")}, {"in_json", std::string("meta.json")},
                             {"resolution", 512LL}, {"dataset_repeats", 5LL}});
  CHECK(g.datasets[0].subsets[0].kind == SubsetKind::FineTuning);
  CHECK(g.datasets[0].subsets[0].num_repeats == 5);
  CHECK_THROWS_AS(config_from_arguments({{"resolution", 512LL}}), ConfigError);
  CHECK_THROWS_WITH(config_from_arguments({{"train_data_dir", (t / "reg/1_dog").string()}, {"resolution", 512LL}}),
                    doctest::Contains("no subfolders named"));
}

TEST_CASE("load_dataset_config reads a file and names it") {
  TempDir t;
  sumi::test::write_text(t / "d.toml", "[general]\nresolution = 512\nflip_aug = 1\n");
  try {
    load_dataset_config(t / "d.toml");
    FAIL("expected an error");
  } catch (const ConfigError& e) {
    CHECK(std::string(e.what()).find((t / "d.toml").string() + ":3") != std::string::npos);
    CHECK(std::string(e.what()).find("expected true or false") != std::string::npos);
  }
  CHECK_THROWS_WITH(load_dataset_config(t / "missing.toml"), doctest::Contains("cannot open"));
}

TEST_CASE("command-line dataset options the layer does not know are refused, with the nearest name") {
  using namespace sumi::datasets;
  CHECK_THROWS_WITH_AS(config_from_arguments({{"train_data_dir", std::string("/nonexistent")}, {"caption_extention", std::string(".txt")}}),
                       doctest::Contains("unknown dataset option 'caption_extention'; did you mean 'caption_extension'?"),
                       ConfigError);
}
