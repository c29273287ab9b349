// kohya-ss sd-scripts' dataset configuration (library/config_util.py): the `--dataset_config`
// TOML with [general], [[datasets]] and [[datasets.subsets]], and the no-config path
// (`--train_data_dir` folders named "<repeats>_<class tokens>", `--reg_data_dir`, `--in_json`,
// `--conditioning_data_dir`). Each setting resolves with kohya's precedence:
// subset > dataset > general > command line > default.
// Unknown keys are errors naming the nearest valid key; keys kohya knows but sumi does not
// act on are errors saying so. Relative paths are kept as written (relative to the working
// directory, as in kohya).
#pragma once

#include <filesystem>
#include <map>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include "sumi/datasets/bucket.h"
#include "sumi/datasets/caption.h"

namespace sumi::datasets {

struct ConfigError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// Command-line values by kohya argparse name (no leading "--"): "train_batch_size",
// "dataset_repeats", "resolution" ("512" or "512,768"), "enable_bucket", "caption_extension",
// "train_data_dir", ... Only keys the dataset layer knows are read; others are ignored.
using CliValue = std::variant<bool, long long, double, std::string>;
using CliOptions = std::map<std::string, CliValue>;

enum class SubsetKind { DreamBooth, FineTuning, ControlNet };
const char* to_string(SubsetKind k);

struct SubsetConfig {
  SubsetKind kind = SubsetKind::DreamBooth;
  std::string origin;  // where it was defined, for messages: "cfg.toml: datasets[0].subsets[1]"
  std::filesystem::path image_dir;
  std::filesystem::path metadata_file;          // fine-tuning: kohya's metadata JSON
  std::filesystem::path conditioning_data_dir;  // ControlNet: conditioning images by stem
  bool is_reg = false;
  int num_repeats = 1;
  std::optional<std::string> class_tokens;
  std::string caption_extension = ".caption";  // always with a leading dot
  CaptionOptions caption;
  bool flip_aug = false;
  bool color_aug = false;
  bool random_crop = false;
  std::string resize_interpolation;  // "" (kohya's default) or a name parse_interpolation accepts
};

struct DatasetConfig {
  std::string origin;
  int batch_size = 1;
  BucketSettings buckets;  // resolution is required (config or --resolution)
  std::vector<SubsetConfig> subsets;
};

struct DatasetGroupConfig {
  std::vector<DatasetConfig> datasets;
};

// `--dataset_config` file / text. Throws ConfigError naming the file, the key path and line.
DatasetGroupConfig load_dataset_config(const std::filesystem::path& toml_file, const CliOptions& cli = {});
DatasetGroupConfig parse_dataset_config(std::string_view toml_text, const std::string& name, const CliOptions& cli = {});

// Without `--dataset_config`: one dataset from train_data_dir (+ reg_data_dir), in_json
// (fine-tuning) or conditioning_data_dir (ControlNet), settings from `cli`.
DatasetGroupConfig config_from_arguments(const CliOptions& cli);

// "10_sks dog" -> {10, "sks dog"}; kohya splits at the first "_" and needs an integer in
// front. nullopt for a name without a leading integer.
struct FolderParams {
  int num_repeats;
  std::string class_tokens;
};
std::optional<FolderParams> parse_folder_name(std::string_view name);

// The subsets kohya makes of a train/reg folder: one per "<repeats>_<tokens>" subfolder with
// repeats >= 1 (others are skipped, reported in `skipped`), in name order.
std::vector<SubsetConfig> subsets_from_folders(const std::filesystem::path& dir, bool is_reg,
                                               std::vector<std::string>* skipped = nullptr);

// The valid key closest to `key` (edit distance), or "" if nothing is close.
std::string nearest_key(std::string_view key, const std::vector<std::string>& valid);

}  // namespace sumi::datasets
