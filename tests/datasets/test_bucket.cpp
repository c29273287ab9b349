// Aspect-ratio buckets against kohya-ss sd-scripts. Each expected value is derived by hand
// from kohya's code (library/model_util.py make_bucket_resolutions, library/train_util.py
// BucketManager.select_bucket / round_to_steps, BaseDataset.adjust_min_max_bucket_reso_by_steps,
// trim_and_resize_if_required, get_crop_ltrb); the derivation is in the comments.
#include <doctest/doctest.h>

#include <set>
#include <stdexcept>

#include "sumi/datasets/bucket.h"

using namespace sumi::datasets;

namespace {
std::vector<Size> v(std::initializer_list<std::pair<int, int>> l) {
  std::vector<Size> out;
  for (auto [w, h] : l) out.push_back({w, h});
  return out;
}
BucketSettings on(Size reso, int min_r = 256, int max_r = 1024, int steps = 64, bool no_upscale = false) {
  BucketSettings s;
  s.resolution = reso;
  s.enable_bucket = true;
  s.min_bucket_reso = min_r;
  s.max_bucket_reso = max_r;
  s.reso_steps = steps;
  s.no_upscale = no_upscale;
  return s;
}
}  // namespace

TEST_CASE("make_bucket_resolutions: 512x512, sizes 256..1024, step 64") {
  // max_area = 262144; square = floor(sqrt(262144) / 64) * 64 = 512.
  // width w from 256 to 1024 step 64, height = min(1024, (262144 // w) // 64 * 64):
  //  256 -> 1024   320 -> 819//64=12 -> 768   384 -> 682 -> 640   448 -> 585 -> 576
  //  512 -> 512    576 -> 455 -> 448   640 -> 409 -> 384   704 -> 372 -> 320   768 -> 341 -> 320
  //  832 -> 315 -> 256   896 -> 292 -> 256   960 -> 273 -> 256   1024 -> 256 -> 256
  // each (w, h) and (h, w) kept (all heights >= 256), sorted as tuples.
  CHECK(make_bucket_resolutions({512, 512}, 256, 1024, 64) ==
        v({{256, 832}, {256, 896}, {256, 960}, {256, 1024}, {320, 704}, {320, 768}, {384, 640}, {448, 576},
           {512, 512}, {576, 448}, {640, 384}, {704, 320}, {768, 320}, {832, 256}, {896, 256}, {960, 256},
           {1024, 256}}));
}

TEST_CASE("make_bucket_resolutions: non-square 768x512 keeps only heights >= min") {
  // max_area = 393216, square = floor(627.06 / 64) * 64 = 576.
  //  256 -> 1536 -> min 1024   320 -> 1228//64=19 -> 1216 -> 1024   384 -> 1024   448 -> 877 -> 832
  //  512 -> 768   576 -> 682 -> 640   640 -> 614 -> 576   704 -> 558 -> 512   768 -> 512
  //  832 -> 472 -> 448   896 -> 438 -> 384   960 -> 409 -> 384   1024 -> 384
  CHECK(make_bucket_resolutions({768, 512}, 256, 1024, 64) ==
        v({{256, 1024}, {320, 1024}, {384, 896}, {384, 960}, {384, 1024}, {448, 832}, {512, 704}, {512, 768},
           {576, 576}, {576, 640}, {640, 576}, {704, 512}, {768, 512}, {832, 448}, {896, 384}, {960, 384},
           {1024, 256}, {1024, 320}, {1024, 384}}));
}

TEST_CASE("make_bucket_resolutions: SDXL 1024x1024, sizes 512..2048") {
  auto r = make_bucket_resolutions({1024, 1024}, 512, 2048, 64);
  // 1048576 // 512 = 2048 -> (512, 2048); 1048576 // 832 = 1260 -> 1216; 1048576 // 1344 = 780 -> 768.
  CHECK(r.size() == 33);
  CHECK(r.front() == Size{512, 1856});  // w = 1856 gives (1856, 512) and its mirror sorts first
  CHECK(r.back() == Size{2048, 512});
  const std::set<Size> s(r.begin(), r.end());
  for (auto z : v({{832, 1216}, {1216, 832}, {896, 1152}, {1152, 896}, {768, 1344}, {1344, 768}, {1024, 1024},
                   {640, 1536}, {1536, 640}}))
    CHECK_MESSAGE(s.count(z), to_string(z));
  CHECK(s.count({1280, 832}) == 0);
}

struct Row {
  Size image;
  BucketSettings settings;
  Size bucket;
  Size resized;
};

TEST_CASE("select: the kohya table") {
  BucketSettings fixed;
  fixed.resolution = {512, 512};
  BucketSettings fixed_portrait;
  fixed_portrait.resolution = {512, 768};
  const Row rows[] = {
      // Exactly a bucket: kept as is.
      {{512, 512}, on({512, 512}), {512, 512}, {512, 512}},
      {{640, 384}, on({512, 512}), {640, 384}, {640, 384}},
      // 1024x768, ar 1.3333: nearest bucket 576x448 (1.2857, error 0.048; 640x384 is 0.33 off).
      // ar > 1.2857, so scale to the height: 448 / 768 = 0.58333, width int(597.33 + 0.5) = 597.
      {{1024, 768}, on({512, 512}), {576, 448}, {597, 448}},
      // Portrait mirror: 448x576, scale to the width, height 597.
      {{768, 1024}, on({512, 512}), {448, 576}, {448, 597}},
      // 1920x1080, ar 1.7778: 640x384 (1.6667) beats 704x320 (2.2); 384 / 1080 * 1920 = 682.67 -> 683.
      {{1920, 1080}, on({512, 512}), {640, 384}, {683, 384}},
      // 300x1200, ar 0.25: exactly 256x1024; scale by width 256/300 -> height int(1024.0 + 0.5).
      {{300, 1200}, on({512, 512}), {256, 1024}, {256, 1024}},
      // Square, larger than the bucket: scaled down to 512x512.
      {{1000, 1000}, on({512, 512}), {512, 512}, {512, 512}},
      // 577x433, ar 1.33256: 576x448 again; 448 / 433 * 577 = 596.99 -> 597.
      {{577, 433}, on({512, 512}), {576, 448}, {597, 448}},
      // SDXL 3000x2000, ar 1.5: 1216x832 (1.4615, error 0.038) beats 1280x768 (1.667) and
      // 1152x896 (1.2857); ar > 1.4615 so scale 832 / 2000 -> width 1248.
      {{3000, 2000}, on({1024, 1024}, 512, 2048), {1216, 832}, {1248, 832}},
      // SDXL 1080x1920, ar 0.5625: 768x1344 (0.5714); scale by width 768 / 1080 -> 1365.33 -> 1365.
      {{1080, 1920}, on({1024, 1024}, 512, 2048), {768, 1344}, {768, 1365}},
      // Step 32 adds e.g. 544x480 and 608x416, but 576x448 is still the closest to 4:3.
      {{1024, 768}, on({512, 512}, 256, 1024, 32), {576, 448}, {597, 448}},
      // min 320 / max 1000 are adjusted to 320 / 1024 at step 64; at 768x768 the 4:3 neighbour
      // is 896x640 (1.4, error 0.067; 832x704 = 1.18 is further) -> scale 896 / 1024 -> 672.
      {{1024, 768}, on({768, 768}, 320, 1000), {896, 640}, {896, 672}},
      // 640x640: (1000x750) ar 1.3333; 704x576 (1.2222, err 0.111) vs 768x512 (1.5, err 0.1667)
      // -> 704x576; ar > 1.2222, so scale 576 / 750 -> width 768.
      {{1000, 750}, on({640, 640}), {704, 576}, {768, 576}},

      // bucket_no_upscale: 2000x1500 > 512*512. rw = sqrt(262144 * 1.3333) = 591.2, rh = 443.4.
      // Width first: round(591.2)=591 -> 576, its height round(432) -> 384: ar 1.5.
      // Height first: 443 -> 384, its width round(512) -> 512: ar 1.3333 (exact) -> wins.
      // resized (int(384 * 1.3333 + 0.5), 384) = (512, 384), bucket the same.
      {{2000, 1500}, on({512, 512}, 256, 1024, 64, true), {512, 384}, {512, 384}},
      // Smaller than the area: never enlarged; bucket = size cut down to steps (crop only).
      {{300, 200}, on({512, 512}, 256, 1024, 64, true), {256, 192}, {300, 200}},
      // 4000x1000, ar 4: rw = 1024, rh = 256 -> both roundings give 1024x256 exactly.
      {{4000, 1000}, on({512, 512}, 256, 1024, 64, true), {1024, 256}, {1024, 256}},
      // SDXL 1920x1080: rw = 1365.33, rh = 768 -> width-first 1344 x round(756)=704 (1.909) loses
      // to height-first 768 x round(1365.3)->1344 (1.75); resized (1365, 768), bucket 1344x768.
      {{1920, 1080}, on({1024, 1024}, 512, 2048, 64, true), {1344, 768}, {1365, 768}},
      // Step 32: 700x500 > 262144, rw = 605.8, rh = 432.7: width-first 576 x round(411.4)->384
      // (1.5) vs height-first 416 x round(582.4)->576 (1.3846); ar 1.4 -> height-first,
      // resized (int(416 * 1.4 + 0.5), 416) = (582, 416), bucket 576x416.
      {{700, 500}, on({512, 512}, 256, 1024, 32, true), {576, 416}, {582, 416}},

      // enable_bucket off: one bucket at the resolution, image scaled to cover it.
      // 1920x1080 into 512x512: ar > 1, scale 512 / 1080 -> width 910.2 -> 910.
      {{1920, 1080}, fixed, {512, 512}, {910, 512}},
      {{400, 600}, fixed_portrait, {512, 768}, {512, 768}},
  };
  for (const auto& r : rows) {
    BucketSelector sel(r.settings);
    const auto c = sel.select(r.image);
    INFO("image ", to_string(r.image), " resolution ", to_string(r.settings.resolution), " no_upscale ",
         r.settings.no_upscale, " steps ", r.settings.reso_steps);
    CHECK(to_string(c.bucket) == to_string(r.bucket));
    CHECK(to_string(c.resized) == to_string(r.resized));
    CHECK(c.resized.width >= c.bucket.width);
    CHECK(c.resized.height >= c.bucket.height);
  }
}

TEST_CASE("select: ar_error is the bucket's aspect ratio minus the image's") {
  BucketSelector sel(on({512, 512}));
  const auto c = sel.select({1024, 768});
  CHECK(c.ar_error == doctest::Approx(576.0 / 448.0 - 1024.0 / 768.0));
}

TEST_CASE("adjusted min/max bucket reso and their checks") {
  auto a = adjusted(on({512, 512}, 300, 1000));
  CHECK(a.min_bucket_reso == 256);   // 300 - 300 % 64
  CHECK(a.max_bucket_reso == 1024);  // 1000 + 64 - 1000 % 64
  CHECK_THROWS_WITH_AS(BucketSelector(on({200, 512})), doctest::Contains("min_bucket_reso"), std::invalid_argument);
  CHECK_THROWS_WITH_AS(BucketSelector(on({1536, 512})), doctest::Contains("max_bucket_reso"), std::invalid_argument);
  // Without bucketing min/max are not looked at.
  BucketSettings off;
  off.resolution = {1536, 1536};
  CHECK_NOTHROW(BucketSelector{off});
}

TEST_CASE("select: refusals") {
  BucketSelector sel(on({512, 512}, 256, 1024, 64, true));
  CHECK_THROWS_AS(sel.select({0, 10}), std::invalid_argument);
  CHECK_THROWS_WITH(sel.select({40, 300}), doctest::Contains("smaller than bucket_reso_steps"));
}

TEST_CASE("crop offsets: centre as kohya's trim // 2, random within [0, trim]") {
  std::mt19937_64 rng(1);
  auto c = crop_offset({597, 448}, {576, 448}, false, rng);
  CHECK(c.left == 10);  // 21 // 2
  CHECK(c.top == 0);
  c = crop_offset({768, 1365}, {768, 1344}, false, rng);
  CHECK(c.left == 0);
  CHECK(c.top == 10);
  std::set<int> seen;
  for (int i = 0; i < 400; ++i) {
    auto r = crop_offset({597, 448}, {576, 448}, true, rng);
    CHECK(r.top == 0);
    REQUIRE(r.left >= 0);
    REQUIRE(r.left <= 21);
    seen.insert(r.left);
  }
  CHECK(seen.size() == 22);  // both ends reachable
  std::mt19937_64 a(7), b(7);
  CHECK(crop_offset({900, 700}, {512, 512}, true, a).left == crop_offset({900, 700}, {512, 512}, true, b).left);
  CHECK_THROWS(crop_offset({500, 500}, {512, 512}, false, rng));
}

TEST_CASE("sdxl_crop_ltrb as kohya's get_crop_ltrb") {
  // bucket 576x448 (1.2857) narrower than 1024x768 (1.3333): width matches, height 576 / 1.3333
  // = 432, top = (448 - 432) // 2 = 8.
  auto c = sdxl_crop_ltrb({576, 448}, {1024, 768});
  CHECK(c.left == 0);
  CHECK(c.top == 8);
  CHECK(c.right == 576);
  CHECK(c.bottom == 440);
  // bucket 640x384 vs 1920x1080: 640 / 1.7778 = 360, top = 12.
  c = sdxl_crop_ltrb({640, 384}, {1920, 1080});
  CHECK(c.top == 12);
  CHECK(c.bottom == 372);
  // bucket wider than the image: height matches, left = floor((1024 - 768 * 0.75) / 2) = 224.
  c = sdxl_crop_ltrb({1024, 768}, {600, 800});
  CHECK(c.left == 224);
  CHECK(c.right == 800);
}
