// kohya's dataset flags and a recipe's [datasets] table reach the dataset layer: every caption
// option lands in the subset's CaptionOptions, loader options in DataLoaderOptions; unknown
// keys and unimplemented options are refused by name.
#include <doctest/doctest.h>

#include "app/train/dataset_options.h"
#include "core/error.h"

#include <sumi/datasets/latent_cache.h>
#include <sumi/recipe/kohya.h>
#include <sumi/recipe/load.h>

#include <filesystem>
#include <fstream>

namespace fs = std::filesystem;
namespace ds = sumi::datasets;
using sumi::recipe::Value;

namespace {

fs::path folder() {
  const fs::path root = fs::temp_directory_path() / "sumi_dataset_options";
  fs::create_directories(root / "3_sks dog");
  return root;
}

void check_captions(const ds::SubsetConfig& s) {
  const ds::CaptionOptions& c = s.caption;
  CHECK(c.prefix == "pre");
  CHECK(c.suffix == "suf");
  CHECK(c.shuffle);
  CHECK(c.keep_tokens == 2);
  CHECK(c.keep_tokens_separator == "|||");
  CHECK(c.separator == ";");
  CHECK(c.secondary_separator == ";;;");
  CHECK(c.dropout_rate == doctest::Approx(0.25));
  CHECK(c.dropout_every_n_epochs == 3);
  CHECK(c.tag_dropout_rate == doctest::Approx(0.125));
  CHECK(c.token_warmup_min == 2);
  CHECK(c.token_warmup_step == doctest::Approx(0.5));
  CHECK(c.enable_wildcard);
  CHECK(s.caption_extension == ".txt");
  CHECK(s.flip_aug);
  CHECK(s.num_repeats == 3);  // the folder's repeats
  CHECK(s.class_tokens == std::string("sks dog"));
}

}  // namespace

TEST_CASE("kohya's caption and loader flags reach the dataset layer") {
  const fs::path dir = folder();
  Value root = Value::table("flags");
  sumi::recipe::apply_kohya_args(
      root, {"--train_data_dir", dir.string(), "--resolution", "64", "--caption_prefix", "pre", "--caption_suffix", "suf",
             "--shuffle_caption", "--keep_tokens", "2", "--keep_tokens_separator", "|||", "--caption_separator", ";",
             "--secondary_separator", ";;;", "--caption_dropout_rate", "0.25", "--caption_dropout_every_n_epochs", "3",
             "--caption_tag_dropout_rate", "0.125", "--token_warmup_min", "2", "--token_warmup_step", "0.5",
             "--enable_wildcard", "--caption_extension", ".txt", "--flip_aug", "--cache_latents_to_disk",
             "--vae_batch_size", "4", "--resize_interpolation", "lanczos"});
  std::string dataset_config;
  const ds::CliOptions cli = sumi::app::dataset_options(root, dataset_config);
  CHECK(dataset_config.empty());
  const auto cfg = ds::config_from_arguments(cli);
  REQUIRE(cfg.datasets.size() == 1);
  REQUIRE(cfg.datasets[0].subsets.size() == 1);
  check_captions(cfg.datasets[0].subsets[0]);
  CHECK(cfg.datasets[0].subsets[0].resize_interpolation == "lanczos");
  const auto lo = ds::data_loader_options(cli);
  CHECK(lo.cache_latents);
  CHECK(lo.cache_latents_to_disk);
  CHECK(lo.vae_batch_size == 4);
}

TEST_CASE("a recipe's [datasets] table reaches the dataset layer the same way") {
  const fs::path dir = folder();
  const std::string toml = "[datasets]\ntrain_data_dir = \"" + dir.string() +
                           "\"\nresolution = \"64\"\ncaption_prefix = \"pre\"\ncaption_suffix = \"suf\"\n"
                           "shuffle_caption = true\nkeep_tokens = 2\nkeep_tokens_separator = \"|||\"\n"
                           "caption_separator = \";\"\nsecondary_separator = \";;;\"\ncaption_dropout_rate = 0.25\n"
                           "caption_dropout_every_n_epochs = 3\ncaption_tag_dropout_rate = 0.125\ntoken_warmup_min = 2\n"
                           "token_warmup_step = 0.5\nenable_wildcard = true\ncaption_extension = \".txt\"\nflip_aug = true\n"
                           "cache_latents = true\n";
  const Value root = sumi::recipe::parse_toml_text(toml, "recipe.toml");
  std::string dataset_config;
  const ds::CliOptions cli = sumi::app::dataset_options(root, dataset_config);
  check_captions(ds::config_from_arguments(cli).datasets.at(0).subsets.at(0));
  CHECK(ds::data_loader_options(cli).cache_latents);
  CHECK_FALSE(ds::data_loader_options(cli).cache_latents_to_disk);

  // dataset_config names the kohya TOML; the table's other keys are its command-line layer.
  const Value with_file = sumi::recipe::parse_toml_text("[datasets]\ndataset_config = \"d.toml\"\nkeep_tokens = 1\n", "r.toml");
  const ds::CliOptions cli2 = sumi::app::dataset_options(with_file, dataset_config);
  CHECK(dataset_config == "d.toml");
  CHECK(std::get<long long>(cli2.at("keep_tokens")) == 1);

  // A misspelt key is refused by the dataset layer, with the nearest valid one.
  const Value typo = sumi::recipe::parse_toml_text("[datasets]\ntrain_data_dir = \"" + dir.string() +
                                                       "\"\nresolution = \"64\"\nshufle_caption = true\n",
                                                   "t.toml");
  CHECK_THROWS_WITH_AS(ds::config_from_arguments(sumi::app::dataset_options(typo, dataset_config)),
                       doctest::Contains("shuffle_caption"), ds::ConfigError);
  // Text-encoder output caching reaches the loader options.
  const Value te = sumi::recipe::parse_toml_text("[datasets]\ncache_text_encoder_outputs_to_disk = true\n", "te.toml");
  const auto te_opts = ds::data_loader_options(sumi::app::dataset_options(te, dataset_config));
  CHECK(te_opts.cache_text_encoder_outputs);
  CHECK(te_opts.cache_text_encoder_outputs_to_disk);
  fs::remove_all(dir);
}
