// Image reading through OpenImageIO (images written by the test), corrupt files, and the
// per-sample resize / crop / flip / color steps.
#include <doctest/doctest.h>

#include "helpers.h"
#include "sumi/datasets/image.h"

using namespace sumi::datasets;
using sumi::test::TempDir;
using sumi::test::write_image;
using sumi::test::write_text;

TEST_CASE("png, jpg, webp and bmp read as RGB8 with the right size and pixels") {
  TempDir t;
  // Debian's OpenImageIO has the webp plugin; a build without it skips webp, saying so.
  const std::string formats = OIIO::get_string_attribute("format_list");
  const bool webp = formats.find("webp") != std::string::npos;
  if (!webp) MESSAGE("OpenImageIO has no webp plugin (formats: " << formats << "); webp not tested");
  for (const char* ext : {".png", ".jpg", ".webp", ".bmp"}) {
    if (!webp && std::string(ext) == ".webp") continue;
    const auto p = t / (std::string("img") + ext);
    write_image(p, 40, 24);
    INFO(p.string());
    CHECK(is_image_file(p));
    CHECK(read_image_size(p) == Size{40, 24});
    const Image img = read_image(p);
    REQUIRE(img.width == 40);
    REQUIRE(img.height == 24);
    const bool exact = std::string(ext) == ".png" || std::string(ext) == ".bmp";
    const int tol = exact ? 0 : 40;  // lossy codecs
    for (auto [x, y] : {std::pair{0, 0}, {39, 23}, {17, 9}}) {
      const auto* px = img.pixel(x, y);
      CHECK(std::abs(px[0] - x) <= tol);
      CHECK(std::abs(px[1] - y) <= tol);
      CHECK(std::abs(px[2] - (x + y)) <= tol);
    }
  }
  CHECK(is_image_file("A.JPEG"));
  CHECK_FALSE(is_image_file("a.txt"));
}

TEST_CASE("gray and RGBA images become RGB") {
  TempDir t;
  write_image(t / "g.png", 8, 4, 1);
  auto g = read_image(t / "g.png");
  CHECK(g.pixel(5, 2)[0] == 5);
  CHECK(g.pixel(5, 2)[1] == 5);
  CHECK(g.pixel(5, 2)[2] == 5);
  write_image(t / "a.png", 8, 4, 4);
  auto a = read_image(t / "a.png");
  CHECK(a.rgb.size() == 8 * 4 * 3);
  CHECK(a.pixel(5, 2)[1] == 2);
}

TEST_CASE("a corrupt or missing image is an error naming the file") {
  TempDir t;
  const auto bad = t / "broken.png";
  write_text(bad, "this is not a png at all \x01\x02\x03 garbage bytes");
  const std::string name = bad.string();
  CHECK_THROWS_WITH_AS(read_image(bad), doctest::Contains(name.c_str()), ImageError);
  CHECK_THROWS_WITH_AS(read_image_size(bad), doctest::Contains(name.c_str()), ImageError);
  // A real PNG cut short: the header reads, the pixels do not.
  write_image(t / "full.png", 64, 64);
  std::ifstream in(t / "full.png", std::ios::binary);
  std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  write_text(t / "cut.png", bytes.substr(0, bytes.size() / 2));
  CHECK(read_image_size(t / "cut.png") == Size{64, 64});
  const std::string cut = (t / "cut.png").string();
  CHECK_THROWS_WITH_AS(read_image(t / "cut.png"), doctest::Contains(cut.c_str()), ImageError);
  CHECK_THROWS_WITH_AS(read_image(t / "nope.png"), doctest::Contains("does not exist"), ImageError);
}

TEST_CASE("crop, flip and resize") {
  TempDir t;
  write_image(t / "i.png", 20, 10);
  const Image img = read_image(t / "i.png");
  const Image c = crop_image(img, {3, 2}, {5, 4});
  CHECK(c.width == 5);
  CHECK(c.height == 4);
  CHECK(c.pixel(0, 0)[0] == 3);
  CHECK(c.pixel(0, 0)[1] == 2);
  CHECK(c.pixel(4, 3)[0] == 7);
  CHECK_THROWS(crop_image(img, {18, 0}, {5, 4}));
  Image f = img;
  flip_horizontal(f);
  CHECK(f.pixel(0, 5)[0] == 19);
  CHECK(f.pixel(19, 5)[0] == 0);
  const Image r = resize_image(img, {40, 20});
  CHECK(r.width == 40);
  CHECK(r.height == 20);
  // A smooth ramp stays a ramp: pixel (20, 10) of the 2x image is near source (10, 5).
  CHECK(std::abs(r.pixel(20, 10)[0] - 10) <= 1);
  CHECK(std::abs(r.pixel(20, 10)[1] - 5) <= 1);
}

TEST_CASE("load_training_image: resize to cover, centre crop, flip mirrors SDXL crop") {
  TempDir t;
  write_image(t / "w.png", 200, 100);
  const BucketChoice choice{{64, 64}, {128, 64}, 0};
  std::mt19937_64 rng(3);
  auto ti = load_training_image(t / "w.png", choice, {}, rng);
  CHECK(ti.image.width == 64);
  CHECK(ti.image.height == 64);
  CHECK(ti.original == Size{200, 100});
  CHECK(ti.crop.left == 32);  // (128 - 64) // 2
  CHECK(ti.crop.top == 0);
  CHECK_FALSE(ti.flipped);
  // The red channel is the source x: resized x = 32 is source x = 32 * 200 / 128 = 50.
  CHECK(std::abs(ti.image.pixel(0, 32)[0] - 50) <= 2);
  bool seen_flip = false, seen_plain = false;
  for (int i = 0; i < 20; ++i) {
    auto f = load_training_image(t / "w.png", choice, {true, true, false}, rng);
    CHECK(f.crop.left >= 0);
    CHECK(f.crop.left <= 64);
    if (f.flipped) {
      seen_flip = true;
      CHECK(f.crop_ltrb.left == doctest::Approx(64 - ti.crop_ltrb.right));
      CHECK(f.image.pixel(0, 10)[0] > f.image.pixel(63, 10)[0]);  // decreasing ramp
    } else {
      seen_plain = true;
      CHECK(f.image.pixel(0, 10)[0] < f.image.pixel(63, 10)[0]);
    }
  }
  CHECK(seen_flip);
  CHECK(seen_plain);
  // A conditioning image follows the same crop and flip.
  write_image(t / "cond.png", 200, 100);
  for (int i = 0; i < 6; ++i) {
    auto f = load_training_image(t / "w.png", choice, {true, true, false}, rng, t / "cond.png");
    CHECK(f.conditioning.rgb == f.image.rgb);
  }
  write_image(t / "small.png", 100, 50);
  CHECK_THROWS_WITH_AS(load_training_image(t / "w.png", choice, {}, rng, t / "small.png"),
                       doctest::Contains("must be the same size"), ImageError);
}

TEST_CASE("color_aug is deterministic under a seed and changes images about a third of the time") {
  TempDir t;
  write_image(t / "c.png", 32, 32);
  const Image img = read_image(t / "c.png");
  std::mt19937_64 a(11), b(11);
  int changed = 0;
  for (int i = 0; i < 60; ++i) {
    Image x = img, y = img;
    color_aug(x, a);
    color_aug(y, b);
    CHECK(x.rgb == y.rgb);
    changed += x.rgb != img.rgb;
  }
  CHECK(changed > 8);
  CHECK(changed < 35);
}

TEST_CASE("resize_interpolation: area averages, nearest picks, default follows kohya's rule") {
  Image img;
  img.width = 6;
  img.height = 1;
  for (int v : {0, 30, 60, 90, 120, 150}) img.rgb.insert(img.rgb.end(), {static_cast<std::uint8_t>(v), 0, 0});
  auto area = resize_image(img, {2, 1}, Interpolation::Area);  // mean of 3 source pixels
  CHECK(area.pixel(0, 0)[0] == 30);
  CHECK(area.pixel(1, 0)[0] == 120);
  CHECK(resize_image(img, {2, 1}).rgb == area.rgb);  // shrinking both sides: area by default
  // "nearest" is kohya's cv2.INTER_NEAREST_EXACT: of the two source pixels under each output
  // pixel at an integer factor, OpenCV picks the first.
  auto nearest = resize_image(img, {3, 1}, Interpolation::Nearest);
  CHECK(nearest.pixel(0, 0)[0] == 0);
  CHECK(nearest.pixel(1, 0)[0] == 60);
  CHECK(nearest.pixel(2, 0)[0] == 120);
  // Enlarging either side: lanczos (INTER_LANCZOS4) by default; the names map as kohya's
  // get_cv2_interpolation maps them.
  CHECK(cv_interpolation(Interpolation::Default, {6, 1}, {12, 2}) == CvInterpolation::Lanczos4);
  CHECK(cv_interpolation(Interpolation::Default, {6, 4}, {5, 5}) == CvInterpolation::Lanczos4);
  CHECK(cv_interpolation(Interpolation::Default, {6, 4}, {6, 4}) == CvInterpolation::Area);
  CHECK(resize_image(img, {12, 2}).rgb == resize_image(img, {12, 2}, CvInterpolation::Lanczos4).rgb);
  CHECK(cv_interpolation(Interpolation::Linear, {1, 1}, {1, 1}) == CvInterpolation::Linear);
  CHECK(cv_interpolation(Interpolation::Cubic, {1, 1}, {1, 1}) == CvInterpolation::Cubic);
  CHECK(parse_interpolation("bicubic") == Interpolation::Cubic);
  CHECK(parse_interpolation("box") == Interpolation::Area);
  CHECK_FALSE(parse_interpolation("hamming"));
}
