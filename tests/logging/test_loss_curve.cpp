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
  // Early losses are high: the first points sit in the upper part of the plot (blue, right of
  // the y axis, below the title).
  bool upper = false;
  for (int x = 50; x < 60; ++x)
    for (int y = 20; y < im.h / 3; ++y) {
      const std::size_t i = (static_cast<std::size_t>(y) * im.w + x) * 3;
      upper = upper || im.px[i + 2] > im.px[i] + 40;
    }
  CHECK(upper);
  // The background dominates (not a filled image).
  std::size_t bg = 0;
  for (int y = 0; y < im.h; ++y)
    for (int x = 0; x < im.w; ++x) bg += is_background(im, x, y);
  CHECK(bg > static_cast<std::size_t>(im.w * im.h / 2));
}

namespace {
// Pixels of a colour family inside a box: dark (text in black), orange (learning rate).
int count(const Image& im, int x0, int y0, int x1, int y1, bool (*pred)(const unsigned char*)) {
  int n = 0;
  for (int y = y0; y < y1; ++y)
    for (int x = x0; x < x1; ++x) n += pred(&im.px[(static_cast<std::size_t>(y) * im.w + x) * 3]);
  return n;
}
bool dark(const unsigned char* p) { return p[0] < 120 && p[1] < 120 && p[2] < 120; }
bool orange(const unsigned char* p) { return p[0] > 180 && p[1] > 70 && p[1] < 170 && p[2] < 90; }
}  // namespace

TEST_CASE("the chart is labelled: title, step and loss tick values, and the learning rate on its own scale") {
  const fs::path dir = fs::path(SUMI_BUILD_DIR) / "test_logging" / "labels";
  fs::remove_all(dir);
  const std::string path = (dir / "loss.png").string();
  std::vector<std::int64_t> steps;
  std::vector<double> losses, lrs;
  for (int i = 0; i < 100; ++i) {
    steps.push_back(i + 1);
    losses.push_back(0.5 * std::exp(-i / 30.0) + 0.1);
    lrs.push_back(1e-4 * (1 - i / 100.0));
  }
  LossCurveOptions opt;
  write_loss_curve_png(path, steps, losses, "my run: training loss", opt);
  const Image plain = read_png(path);
  // 800x400: the title in the top band, step values under the x axis, loss values left of the y axis.
  CHECK(count(plain, 200, 0, 600, 20, dark) > 30);
  CHECK(count(plain, 60, 380, 780, 400, dark) > 20);   // "step" and the step tick values
  CHECK(count(plain, 60, 362, 780, 378, dark) > 20);
  CHECK(count(plain, 0, 30, 60, 360, [](const unsigned char* p) { return p[2] > p[0] + 40; }) > 30);  // loss ticks
  CHECK(count(plain, 0, 0, 800, 400, orange) == 0);
  opt.lrs = lrs;
  write_loss_curve_png(path, steps, losses, "my run: training loss", opt);
  const Image with_lr = read_png(path);
  CHECK(count(with_lr, 60, 30, 730, 360, orange) > 100);  // the lr curve
  CHECK(count(with_lr, 740, 30, 800, 360, orange) > 30);  // its tick values on the right
  opt.lrs.pop_back();
  CHECK_THROWS_WITH_AS(write_loss_curve_png(path, steps, losses, "x", opt), doctest::Contains("99 learning rates but 100 losses"),
                       std::invalid_argument);
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
