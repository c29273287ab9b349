// Shared by the training tests: a small copy of the bundled example dataset.
#pragma once

#include <cstdio>
#include <filesystem>
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

}  // namespace sumi::test
