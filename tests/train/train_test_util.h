// Shared by the training tests: a small copy of the bundled example dataset, the run settings
// every test starts from, and a saved file's tensors by name.
#pragma once

#include "../common/test_data.h"
#include "app/train/trainer.h"
#include "sumi/io/safetensors_torch.h"

#include <ATen/ATen.h>

#include <cstdio>
#include <filesystem>
#include <map>
#include <string>

namespace sumi::test {

// `images` images (with captions) of examples/dataset/10_sks circle, copied into a fresh
// <temp>/<dir_name>/5_sks circle folder (kohya's <repeats>_<class> convention). Returns the root.
inline std::filesystem::path example_dataset(const std::string& dir_name, int images) {
  namespace fs = std::filesystem;
  const fs::path root = fs::temp_directory_path() / dir_name;
  fs::remove_all(root);
  fs::create_directories(root / "5_sks circle");
  const fs::path src = fs::path(SUMI_SOURCE_DIR) / "examples" / "dataset" / "10_sks circle";
  for (int i = 0; i < images; ++i) {
    char n[32];
    std::snprintf(n, sizeof n, "circle_%02d", i);
    for (const char* ext : {".png", ".txt"})
      fs::copy_file(src / (std::string(n) + ext), root / "5_sks circle" / (std::string(n) + ext));
  }
  return root;
}

// What every training test's run shares: `mode` on the tiny-<family> fixture with AdamW, the
// dataset at 64 px with .txt captions in batches of 1, files <out>/out.*; Textual Inversion adds
// the token "sksemb" starting from "circle". Each test sets its own rates, steps, seed and network.
inline app::TrainSettings fixture_run(app::TrainMode mode, const std::filesystem::path& dataset,
                                      const std::filesystem::path& out, const std::string& family = "sd1") {
  app::TrainSettings s;
  s.mode = mode;
  s.model_path = fixture("tiny-" + family + ".safetensors");
  s.family = family;
  s.optimizer_type = "adamw";
  s.dataset_args = {{"train_data_dir", dataset.string()}, {"caption_extension", std::string(".txt")},
                    {"resolution", std::string("64")}, {"train_batch_size", 1LL}};
  s.output_dir = out.string();
  s.output_name = "out";
  if (mode == app::TrainMode::textual_inversion) {
    s.token_string = "sksemb";
    s.init_word = "circle";
  }
  return s;
}

// A .safetensors file's tensors by name.
inline std::map<std::string, at::Tensor> load_map(const std::string& path) {
  std::map<std::string, at::Tensor> m;
  for (auto& [k, t] : io::load_all(path)) m[k] = t;
  return m;
}

}  // namespace sumi::test
