// Shared by the recipe tests: temporary files and the plugin schemas a host would pass.
#pragma once

#include <doctest/doctest.h>
#include <sumi/sumi.h>

#include <unistd.h>

#include <atomic>
#include <iterator>
#include <filesystem>
#include <fstream>
#include <string>

#include "sumi/recipe/plan.h"
#include "sumi/recipe/schema.h"

namespace sumi::recipe::test {

// doctest's Contains matcher from a std::string.
inline doctest::Contains has(const std::string& s) { return doctest::Contains(s.c_str()); }

inline std::filesystem::path data_file(const std::string& name) {
  return std::filesystem::path(SUMI_SOURCE_DIR) / "tests" / "recipe" / "data" / name;
}

// A file in a fresh temporary folder, removed with the object.
class TempFile {
 public:
  TempFile(const std::string& name, const std::string& content) {
    static std::atomic<int> counter{0};
    dir_ = std::filesystem::temp_directory_path() /
           ("sumi_recipe_test_" + std::to_string(::getpid()) + "_" + std::to_string(counter++));
    std::filesystem::create_directories(dir_);
    path_ = dir_ / name;
    std::ofstream(path_) << content;
  }
  ~TempFile() {
    std::error_code ec;
    std::filesystem::remove_all(dir_, ec);
  }
  const std::filesystem::path& path() const { return path_; }
  const std::filesystem::path& dir() const { return dir_; }

 private:
  std::filesystem::path dir_, path_;
};

// Stand-ins for the descriptors of an adamw optimizer, an sgd optimizer and a lora network.
inline const sumi_param_spec kAdamw[] = {
    {sizeof(sumi_param_spec), "weight_decay", SUMI_PARAM_DOUBLE, "0.01", "decoupled weight decay"},
    {sizeof(sumi_param_spec), "betas", SUMI_PARAM_DOUBLE_LIST, "0.9,0.999", "moment decay rates"},
    {sizeof(sumi_param_spec), "eps", SUMI_PARAM_DOUBLE, "1e-8", "denominator epsilon"},
    {sizeof(sumi_param_spec), "amsgrad", SUMI_PARAM_BOOL, "false", "AMSGrad variant"},
};
inline const sumi_param_spec kSgd[] = {
    {sizeof(sumi_param_spec), "momentum", SUMI_PARAM_DOUBLE, "0", "momentum factor"},
    {sizeof(sumi_param_spec), "nesterov", SUMI_PARAM_BOOL, "false", "Nesterov momentum"},
    {sizeof(sumi_param_spec), "weight_decay", SUMI_PARAM_DOUBLE, "0", "L2 penalty"},
};
inline const sumi_param_spec kLora[] = {
    {sizeof(sumi_param_spec), "dim", SUMI_PARAM_INT, "4", "rank"},
    {sizeof(sumi_param_spec), "alpha", SUMI_PARAM_DOUBLE, "1", "scale numerator"},
    {sizeof(sumi_param_spec), "dropout", SUMI_PARAM_DOUBLE, "0", "dropout of the down output"},
    {sizeof(sumi_param_spec), "conv_dim", SUMI_PARAM_INT, "0", "rank of 3x3 convolutions"},
    {sizeof(sumi_param_spec), "block_dims", SUMI_PARAM_INT_LIST, "", "per-block ranks"},
};

inline PluginSchemas test_schemas(bool sgd = false) {
  PluginSchemas s;
  s["optimizer"] = sgd ? to_specs(kSgd, std::size(kSgd)) : to_specs(kAdamw, std::size(kAdamw));
  s["network"] = to_specs(kLora, std::size(kLora));
  return s;
}

}  // namespace sumi::recipe::test
