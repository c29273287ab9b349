// Temp folders, text files and images (written with OpenImageIO) for the dataset tests.
#pragma once

#include <chrono>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include <OpenImageIO/imageio.h>

namespace sumi::test {

struct TempDir {
  std::filesystem::path path;
  TempDir() {
    std::random_device rd;
    path = std::filesystem::temp_directory_path() /
           ("sumi_datasets_" + std::to_string(rd()) + "_" +
            std::to_string(std::chrono::steady_clock::now().time_since_epoch().count()));
    std::filesystem::create_directories(path);
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path, ec);
  }
  std::filesystem::path operator/(const std::string& p) const { return path / p; }
};

inline void write_text(const std::filesystem::path& p, const std::string& text) {
  std::filesystem::create_directories(p.parent_path());
  std::ofstream(p, std::ios::binary) << text;
}

// A w x h RGB image whose pixel (x, y) is (x % 256, y % 256, (x + y) % 256) unless `fill`.
inline void write_image(const std::filesystem::path& p, int w, int h, int channels = 3) {
  std::filesystem::create_directories(p.parent_path());
  std::vector<unsigned char> px(static_cast<std::size_t>(w) * h * channels);
  for (int y = 0; y < h; ++y)
    for (int x = 0; x < w; ++x)
      for (int c = 0; c < channels; ++c)
        px[(static_cast<std::size_t>(y) * w + x) * channels + c] =
            static_cast<unsigned char>(c == 0 ? x : c == 1 ? y : c == 2 ? x + y : 255);
  auto out = OIIO::ImageOutput::create(p.string());
  if (!out) throw std::runtime_error("no writer for " + p.string());
  OIIO::ImageSpec spec(w, h, channels, OIIO::TypeDesc::UINT8);
  if (p.extension() == ".jpg") spec.attribute("Compression", "jpeg:100");
  if (!out->open(p.string(), spec) || !out->write_image(OIIO::TypeDesc::UINT8, px.data()) || !out->close())
    throw std::runtime_error("cannot write " + p.string() + ": " + out->geterror());
}

}  // namespace sumi::test
