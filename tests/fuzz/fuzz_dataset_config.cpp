// Fuzz harness: kohya dataset configs (datasets/src/config.cpp): the `--dataset_config` TOML
// with [general], [[datasets]] and [[datasets.subsets]], resolved against one of a few sets
// of command-line values (picked by the input's length, so a seed keeps its bytes as a plain
// TOML file). Only ConfigError may escape.
#include <cstdint>

#include "fuzz_support.h"
#include "sumi/datasets/config.h"

namespace ds = sumi::datasets;

namespace {

ds::CliOptions cli_for(std::size_t size) {
  switch (size % 4) {
    case 0: return {};
    case 1: return {{"resolution", std::string("512,768")}, {"train_batch_size", 2LL}};
    case 2:
      return {{"resolution", 512LL},        {"enable_bucket", true},         {"cache_latents", true},
              {"cache_text_encoder_outputs", true}, {"caption_extension", std::string("txt")},
              {"min_bucket_reso", 256LL},   {"max_bucket_reso", 1024LL}};
    default:
      return {{"resolution", std::string("768")}, {"dataset_repeats", std::string("3")},
              {"keep_tokens", std::string("2")},  {"flip_aug", std::string("true")},
              {"caption_dropout_rate", 0.1},      {"shuffle_caption", true}};
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  std::uint64_t sum = 0;
  try {
    const ds::DatasetGroupConfig g = ds::parse_dataset_config(sumi::fuzz::text(data, size), "fuzz.toml", cli_for(size));
    for (const auto& d : g.datasets) {
      sum += d.origin.size() + static_cast<std::uint64_t>(d.batch_size) + d.subsets.size();
      for (const auto& s : d.subsets) sum += s.image_dir.native().size() + static_cast<std::uint64_t>(s.num_repeats);
    }
  } catch (const ds::ConfigError&) {
  }
  sumi::fuzz::use(sum);
  return 0;
}
