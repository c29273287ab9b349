// PNG output: pixels round-trip exactly, the A1111 `parameters` text survives, and the 8-bit
// conversion rounds as diffusers/A1111 do.
#include <doctest/doctest.h>

#include "app/image_io.h"
#include "app/generation.h"

#include <filesystem>

TEST_CASE("PNG round trip keeps pixels and the parameters chunk") {
  const auto dir = std::filesystem::temp_directory_path() / "sumi_test_png";
  std::filesystem::create_directories(dir);
  const auto path = (dir / "img.png").string();
  at::manual_seed(3);
  at::Tensor img = at::randint(0, 256, {16, 24, 3}, at::kByte);
  const std::string params = "a cat\nNegative prompt: dog\nSteps: 10, Sampler: DDIM, CFG scale: 7.5, Seed: 42, Size: 24x16";
  sumi::app::write_png(path, img, {{"parameters", params}});
  std::map<std::string, std::string> text;
  at::Tensor back = sumi::app::read_image(path, &text);
  CHECK(at::equal(back, img));
  CHECK(text["parameters"] == params);
  // No temporary file is left behind.
  int files = 0;
  for (const auto& e : std::filesystem::directory_iterator(dir)) files += e.is_regular_file();
  CHECK(files == 1);
  std::filesystem::remove_all(dir);
}

TEST_CASE("8-bit conversion: round(clamp(x / 2 + 0.5) * 255), HWC") {
  at::Tensor x = at::tensor({-1.0f, -0.5f, 0.0f, 0.999f, 2.0f, 0.00196f}).reshape({1, 3, 1, 2});
  at::Tensor u = sumi::app::to_uint8_hwc(x);
  CHECK((u.sizes() == at::IntArrayRef({1, 2, 3})));
  // channel-major input [c][w] -> [h][w][c]
  CHECK(u[0][0][0].item<int>() == 0);
  CHECK(u[0][1][0].item<int>() == 64);   // -0.5 -> 0.25 * 255 = 63.75 -> 64
  CHECK(u[0][0][1].item<int>() == 128);  // 0 -> 127.5 -> 128 (round half away from zero)
  CHECK(u[0][1][1].item<int>() == 255);  // 0.999 -> 254.87 -> 255
  CHECK(u[0][0][2].item<int>() == 255);  // clamped
}

TEST_CASE("writing to a folder that does not exist fails with the path named") {
  at::Tensor img = at::zeros({8, 8, 3}, at::kByte);
  CHECK_THROWS_WITH(sumi::app::write_png("/nonexistent/dir/x.png", img, {}), doctest::Contains("/nonexistent/dir/x.png"));
}
