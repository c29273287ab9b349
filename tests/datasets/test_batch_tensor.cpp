// Batch assembly into ATen tensors: layout, value range, SDXL size conditioning.
#include <doctest/doctest.h>

#include <ATen/ATen.h>

#include "batch_tensor.h"

using namespace sumi::datasets;

namespace {
Image ramp(int w, int h, int offset) {
  Image img;
  img.width = w;
  img.height = h;
  img.rgb.resize(static_cast<std::size_t>(w) * h * 3);
  for (int y = 0; y < h; ++y)
    for (int x = 0; x < w; ++x) {
      auto* p = img.pixel(x, y);
      p[0] = static_cast<std::uint8_t>(x + offset);
      p[1] = static_cast<std::uint8_t>(y);
      p[2] = 255;
    }
  return img;
}
}  // namespace

TEST_CASE("images_to_tensor: NCHW float in [-1, 1]") {
  const Image a = ramp(4, 3, 0), b = ramp(4, 3, 10);
  const at::Tensor t = images_to_tensor({&a, &b});
  CHECK(t.sizes().vec() == std::vector<int64_t>{2, 3, 3, 4});
  CHECK((t.scalar_type() == at::kFloat));
  CHECK(t[0][0][1][2].item<float>() == doctest::Approx(2 / 127.5 - 1));   // R = x
  CHECK(t[0][1][2][0].item<float>() == doctest::Approx(2 / 127.5 - 1));   // G = y
  CHECK(t[1][0][0][3].item<float>() == doctest::Approx(13 / 127.5 - 1));
  CHECK(t[1][2][0][0].item<float>() == doctest::Approx(1.0));             // 255 -> 1
  const Image c = ramp(3, 3, 0);
  CHECK_THROWS_WITH_AS(images_to_tensor({&a, &c}), doctest::Contains("one batch is one bucket"), std::invalid_argument);
}

TEST_CASE("sdxl_size_conditioning: (h, w) pairs as kohya passes them") {
  TrainingImage s;
  s.image = ramp(576, 448, 0);
  s.original = {1024, 768};
  s.crop_ltrb = sdxl_crop_ltrb({576, 448}, {1024, 768});  // (0, 8, 576, 440)
  at::Tensor o, c, t;
  sdxl_size_conditioning({&s}, {&o, &c, &t});
  CHECK(o[0][0].item<int64_t>() == 768);
  CHECK(o[0][1].item<int64_t>() == 1024);
  CHECK(c[0][0].item<int64_t>() == 8);
  CHECK(c[0][1].item<int64_t>() == 0);
  CHECK(t[0][0].item<int64_t>() == 448);
  CHECK(t[0][1].item<int64_t>() == 576);
}
