// Loss-curve PNG: size, drawn pixels, moving average, input validation.
#include <doctest/doctest.h>

#include <OpenImageIO/imageio.h>

#include <cmath>
#include <filesystem>
#include <limits>
#include <vector>

#include "logging/loss_curve.h"

namespace fs = std::filesystem;
using namespace sumi::logging;

namespace {

struct Image {
  int w = 0, h = 0, c = 0;
  std::vector<unsigned char> px;
  std::string description;
};

Image read_png(const std::string& path) {
  auto in = OIIO::ImageInput::open(path);
  REQUIRE(in);
  const OIIO::ImageSpec& s = in->spec();
  Image im{s.width, s.height, s.nchannels, {}, s.get_string_attribute("ImageDescription")};
  im.px.resize(static_cast<std::size_t>(im.w) * im.h * im.c);
  REQUIRE(in->read_image(0, 0, 0, im.c, OIIO::TypeDesc::UINT8, im.px.data()));
  in->close();
  return im;
}

bool is_background(const Image& im, int x, int y) {
  const std::size_t i = (static_cast<std::size_t>(y) * im.w + x) * im.c;
  return im.px[i] == 255 && im.px[i + 1] == 255 && im.px[i + 2] == 255;
}

}  // namespace

TEST_CASE("moving_average is a trailing mean") {
  const std::vector<double> v{1, 2, 3, 4, 5};
  const auto a = moving_average(v, 2);
  CHECK(a == std::vector<double>{1, 1.5, 2.5, 3.5, 4.5});
  CHECK(moving_average(v, 1) == v);
  CHECK(moving_average(v, 10).back() == doctest::Approx(3.0));
  CHECK_THROWS(moving_average(v, 0));
}

TEST_CASE("loss curve PNG has the requested size and the curve is drawn") {
  const fs::path dir = fs::path(SUMI_BUILD_DIR) / "test_logging" / "curve";
  fs::remove_all(dir);
  const std::string path = (dir / "loss.png").string();

  std::vector<std::int64_t> steps;
  std::vector<double> losses;
  for (int i = 0; i < 200; ++i) {
    steps.push_back(i + 1);
    losses.push_back(0.2 + 0.5 * std::exp(-i / 40.0) + 0.03 * std::sin(i * 0.7));
  }
  LossCurveOptions opt;
  opt.width = 320;
  opt.height = 200;
  write_loss_curve_png(path, steps, losses, "my run", opt);

  REQUIRE(fs::exists(path));
  for (const auto& e : fs::directory_iterator(dir))  // no temp file left behind
    CHECK(e.path().filename() == "loss.png");
  const Image im = read_png(path);
  CHECK(im.w == 320);
  CHECK(im.h == 200);
  CHECK(im.c == 3);
  CHECK(im.description.find("my run") != std::string::npos);

  // Walk a few columns inside the plot: each must contain curve-coloured (blue-ish) pixels.
  int columns_with_curve = 0;
  for (int x = 60; x < 300; x += 20) {
    for (int y = 0; y < im.h; ++y) {
      const std::size_t i = (static_cast<std::size_t>(y) * im.w + x) * 3;
      if (im.px[i + 2] > im.px[i] + 40) {  // blue dominates: raw or average line
        ++columns_with_curve;
        break;
      }
    }
  }
  CHECK(columns_with_curve == 12);
  // Early losses are high: the first point sits in the upper part of the plot.
  const int left = 320 / 16;
  bool upper = false;
  for (int y = 0; y < im.h / 3; ++y) upper = upper || !is_background(im, left + 1, y);
  CHECK(upper);
  // The background dominates (not a filled image).
  std::size_t bg = 0;
  for (int y = 0; y < im.h; ++y)
    for (int x = 0; x < im.w; ++x) bg += is_background(im, x, y);
  CHECK(bg > static_cast<std::size_t>(im.w * im.h / 2));
}

TEST_CASE("a single point and constant losses still plot") {
  const fs::path dir = fs::path(SUMI_BUILD_DIR) / "test_logging" / "curve1";
  fs::remove_all(dir);
  const std::string path = (dir / "one.png").string();
  write_loss_curve_png(path, {5}, {0.1}, "one");
  const Image im = read_png(path);
  CHECK(im.w == 800);
  CHECK(im.h == 400);
  write_loss_curve_png(path, {1, 2, 3}, {0.3, 0.3, 0.3}, "flat");  // replaces via rename
  CHECK(read_png(path).description.find("flat") != std::string::npos);
}

TEST_CASE("bad inputs are rejected with a clear message") {
  const std::string path = (fs::path(SUMI_BUILD_DIR) / "test_logging" / "bad.png").string();
  CHECK_THROWS_WITH(write_loss_curve_png(path, {}, {}, "t"), doctest::Contains("no losses"));
  CHECK_THROWS_WITH(write_loss_curve_png(path, {1, 2}, {0.1}, "t"),
                    doctest::Contains("2 steps but 1 losses"));
  CHECK_THROWS_WITH(write_loss_curve_png(path, {1, 2}, {0.1, std::nan("")}, "t"),
                    doctest::Contains("index 1"));
  LossCurveOptions tiny;
  tiny.width = 10;
  CHECK_THROWS_WITH(write_loss_curve_png(path, {1}, {0.1}, "t", tiny), doctest::Contains("too small"));
  CHECK_FALSE(fs::exists(path));
}
