// Building datasets from folders / metadata / ControlNet pairs, kohya's regularization
// matching, bucket contents, per-epoch plans, and the up-front file check.
#include <doctest/doctest.h>

#include <algorithm>
#include <map>

#include "helpers.h"
#include "sumi/datasets/dataset.h"

using namespace sumi::datasets;
using sumi::test::TempDir;
using sumi::test::write_image;
using sumi::test::write_text;

namespace {
DatasetConfig dreambooth(const TempDir& t, bool buckets = true) {
  // train/10_sks dog: 3 images; reg/1_dog: 2 images.
  write_image(t / "train/10_sks dog/a.png", 100, 100);
  write_image(t / "train/10_sks dog/b.jpg", 128, 96);
  write_image(t / "train/10_sks dog/c.webp", 60, 120);
  write_text(t / "train/10_sks dog/a.txt", "sks dog, on grass\nignored second line");
  write_image(t / "reg/1_dog/r1.png", 64, 64);
  write_image(t / "reg/1_dog/r2.png", 64, 64);
  CliOptions cli{{"train_data_dir", (t / "train").string()},
                 {"reg_data_dir", (t / "reg").string()},
                 {"resolution", std::string("64")},
                 {"caption_extension", std::string(".txt")},
                 {"train_batch_size", 2LL}};
  if (buckets) {
    cli["enable_bucket"] = true;
    cli["min_bucket_reso"] = 32LL;
    cli["max_bucket_reso"] = 128LL;
    cli["bucket_reso_steps"] = 16LL;
  }
  return config_from_arguments(cli).datasets.at(0);
}
}  // namespace

TEST_CASE("match_reg_repeats follows kohya's loop") {
  // First pass takes each image's repeats; later passes add one each until the count is met.
  CHECK(match_reg_repeats({1, 1}, 30) == std::vector<int>{15, 15});
  CHECK(match_reg_repeats({1, 1, 1}, 4) == std::vector<int>{2, 1, 1});
  CHECK(match_reg_repeats({5, 5, 5}, 7) == std::vector<int>{5, 5, 0});  // third never reached
  CHECK(match_reg_repeats({2}, 5) == std::vector<int>{5});
  CHECK(match_reg_repeats({3, 1}, 0) == std::vector<int>{0, 0});
}

TEST_CASE("DreamBooth folders: captions, class tokens, reg matching, buckets") {
  TempDir t;
  BuildReport report;
  const auto ds = Dataset::build(dreambooth(t), {}, &report);
  REQUIRE(ds.items().size() == 5);
  const auto& a = ds.items()[0];
  CHECK(a.path.filename() == "a.png");
  CHECK(a.caption == "sks dog, on grass");
  CHECK(ds.items()[1].caption == "sks dog");  // no caption file: class tokens from the folder
  CHECK(a.num_repeats == 10);
  CHECK_FALSE(a.is_reg);
  CHECK(report.num_train_images == 30);
  CHECK(report.num_reg_images == 2);
  CHECK(ds.items()[3].is_reg);
  CHECK(ds.items()[3].num_repeats == 15);  // 2 reg images matched to 30 training samples
  CHECK(ds.items()[4].num_repeats == 15);
  CHECK(ds.items()[3].caption == "dog");
  CHECK(ds.loss_weight(3, 0.5) == 0.5);
  CHECK(ds.loss_weight(0, 0.5) == 1.0);
  CHECK(std::any_of(report.warnings.begin(), report.warnings.end(),
                    [](const std::string& w) { return w.find("without a .txt file") != std::string::npos; }));

  // Buckets at 64x64, steps 16, sizes 32..128 (make_bucket_resolutions, area 4096):
  //   32x96 32x112 32x128 48x80 64x64 80x48 96x32 112x32 128x32.
  // 100x100 and the reg 64x64 -> 64x64. 128x96 (ar 1.3333): 64x64 is off by 0.33333333333333326,
  // 80x48 by 0.3333333333333335 in doubles -> 64x64, resized 85x64 (64 / 96 * 128 = 85.3).
  // 60x120 (0.5): 48x80 (0.6, error 0.1) beats 32x96 (0.333) -> resized 48x96.
  CHECK(ds.items()[1].bucket.bucket == Size{64, 64});
  CHECK(ds.items()[1].bucket.resized == Size{85, 64});
  CHECK(ds.items()[2].bucket.bucket == Size{48, 80});
  CHECK(ds.items()[2].bucket.resized == Size{48, 96});
  REQUIRE(ds.bucket_resolutions().size() == 2);
  CHECK(ds.bucket_resolutions()[0] == Size{48, 80});
  CHECK(ds.bucket_resolutions()[1] == Size{64, 64});
  CHECK(ds.buckets()[0].size() == 10);       // c.webp x 10
  CHECK(ds.buckets()[1].size() == 20 + 30);  // a, b x 10 + reg 2 x 15
  CHECK(ds.batches_per_epoch() == 5 + 25);

  std::mt19937_64 rng(1);
  auto img = ds.image(2, rng);
  CHECK(img.image.width == 48);
  CHECK(img.image.height == 80);
}

TEST_CASE("epoch plans: whole buckets per batch, every sample once, seeded and per-epoch") {
  TempDir t;
  const auto ds = Dataset::build(dreambooth(t));
  const auto p1 = ds.epoch_plan(42, 1);
  CHECK(p1.size() == ds.batches_per_epoch());
  std::map<std::size_t, int> seen;
  for (const auto& b : p1) {
    CHECK(b.items.size() >= 1);
    CHECK(b.items.size() <= 2);
    for (auto i : b.items) {
      CHECK(ds.items()[i].bucket.bucket == b.resolution);
      ++seen[i];
    }
  }
  for (std::size_t i = 0; i < ds.items().size(); ++i) CHECK(seen[i] == ds.items()[i].num_repeats);
  auto same = [](const std::vector<Batch>& x, const std::vector<Batch>& y) {
    if (x.size() != y.size()) return false;
    for (std::size_t i = 0; i < x.size(); ++i)
      if (x[i].items != y[i].items || x[i].bucket != y[i].bucket) return false;
    return true;
  };
  CHECK(same(p1, ds.epoch_plan(42, 1)));
  CHECK_FALSE(same(p1, ds.epoch_plan(42, 2)));
  CHECK_FALSE(same(p1, ds.epoch_plan(43, 1)));
  const auto g = group_epoch_plan({ds, ds}, 42, 1);
  CHECK(g.size() == 2 * p1.size());
}

TEST_CASE("enable_bucket off: one fixed bucket") {
  TempDir t;
  const auto ds = Dataset::build(dreambooth(t, false));
  REQUIRE(ds.bucket_resolutions().size() == 1);
  CHECK(ds.bucket_resolutions()[0] == Size{64, 64});
  CHECK(ds.items()[2].bucket.resized == Size{64, 128});  // 60x120 scaled to cover 64x64
}

TEST_CASE("the up-front check refuses corrupt images naming them, or skips them when told") {
  TempDir t;
  auto cfg = dreambooth(t);
  write_text(t / "train/10_sks dog/z_broken.png", "garbage bytes, not an image");
  const std::string broken = (t / "train/10_sks dog/z_broken.png").string();
  CHECK_THROWS_WITH_AS(Dataset::build(cfg), doctest::Contains(broken.c_str()), DatasetError);
  BuildReport report;
  const auto ds = Dataset::build(cfg, {true, true}, &report);
  CHECK(ds.items().size() == 5);
  REQUIRE(report.skipped.size() == 1);
  CHECK(report.skipped[0].path == t / "train/10_sks dog/z_broken.png");
  // The check runs on several threads; the result does not depend on how many.
  for (unsigned threads : {1u, 3u, 8u}) {
    BuildReport r;
    const auto d = Dataset::build(cfg, {true, true, threads}, &r);
    REQUIRE(d.items().size() == ds.items().size());
    for (std::size_t i = 0; i < d.items().size(); ++i) {
      CHECK(d.items()[i].path == ds.items()[i].path);
      CHECK(d.items()[i].size == ds.items()[i].size);
    }
    CHECK(r.skipped.size() == 1);
  }
  // Header-only checking does not see that the file is garbage either way: it cannot open it.
  CHECK_THROWS_WITH_AS(Dataset::build(cfg, {false, false}), doctest::Contains(broken.c_str()), DatasetError);
  // A caption that cannot be read (not UTF-8) is named too.
  write_text(t / "train/10_sks dog/b.txt", "caf\xE9");
  const std::string cap = (t / "train/10_sks dog/b.txt").string();
  CHECK_THROWS_WITH(Dataset::build(cfg), doctest::Contains(cap.c_str()));
  report = {};
  const auto ds2 = Dataset::build(cfg, {true, true}, &report);
  CHECK(ds2.items().size() == 4);  // b.jpg goes with its caption
  CHECK(report.skipped.size() == 2);
}

TEST_CASE("fine-tuning metadata: caption + tags, keys by stem or path, missing images reported") {
  TempDir t;
  write_image(t / "imgs/one.png", 64, 64);
  write_image(t / "imgs/two.jpg", 64, 64);
  write_image(t / "elsewhere/three.png", 64, 64);
  const std::string three = (t / "elsewhere/three.png").string();
  write_text(t / "meta.json", R"({"one": {"caption": "a photo", "tags": "red, blue"},
    "two": {"tags": "only tags"}, ")" + three + R"(": {"caption": "by path"}})");
  auto g = config_from_arguments({{"train_data_dir", (t / "imgs").string()},
                                  {"in_json", (t / "meta.json").string()},
                                  {"resolution", 64LL},
                                  {"dataset_repeats", 2LL}});
  const auto ds = Dataset::build(g.datasets.at(0));
  REQUIRE(ds.items().size() == 3);
  std::map<std::string, std::string> caps;
  for (const auto& it : ds.items()) caps[it.path.filename().string()] = it.caption;
  CHECK(caps["one.png"] == "a photo,red, blue");  // kohya joins with caption_separator
  CHECK(caps["two.jpg"] == "only tags");
  CHECK(caps["three.png"] == "by path");
  CHECK(ds.items()[0].num_repeats == 2);
  write_text(t / "meta.json", R"({"missing": {"caption": "x"}, "one": {"caption": "y"}})");
  CHECK_THROWS_WITH(Dataset::build(g.datasets.at(0)), doctest::Contains("no image for metadata key \"missing\""));
  write_text(t / "meta.json", R"({"one": {"caption": 5}, "two": {"caption": "fine"}})");
  BuildReport r;
  const auto skipped = Dataset::build(g.datasets.at(0), {true, true}, &r);
  CHECK(skipped.items().size() == 1);
  REQUIRE(r.skipped.size() == 1);
  CHECK(r.skipped[0].message.find("\"one\".caption is not a string") != std::string::npos);
  write_text(t / "meta.json", "{not json");
  CHECK_THROWS_WITH_AS(Dataset::build(g.datasets.at(0)), doctest::Contains("invalid JSON"), ConfigError);
}

TEST_CASE("ControlNet: conditioning images pair by name") {
  TempDir t;
  write_image(t / "img/a.png", 64, 64);
  write_image(t / "img/b.png", 64, 64);
  write_image(t / "cond/a.jpg", 64, 64);
  write_text(t / "img/a.caption", "a caption");
  const auto cfg = parse_dataset_config("[general]\nresolution = 64\n[[datasets]]\n[[datasets.subsets]]\nimage_dir = \"" +
                                            (t / "img").string() + "\"\nconditioning_data_dir = \"" +
                                            (t / "cond").string() + "\"\n",
                                        "cn.toml")
                       .datasets.at(0);
  const std::string b = (t / "img/b.png").string();
  CHECK_THROWS_WITH(Dataset::build(cfg), doctest::Contains(b.c_str()));
  BuildReport r;
  const auto ds = Dataset::build(cfg, {true, true}, &r);
  REQUIRE(ds.items().size() == 1);
  CHECK(ds.items()[0].conditioning_path == t / "cond/a.jpg");
  CHECK(ds.items()[0].caption == "a caption");
  std::mt19937_64 rng(2);
  const auto ti = ds.image(0, rng);
  CHECK(ti.conditioning.width == 64);
  CHECK(ti.conditioning.height == 64);
  CHECK(std::abs(ti.conditioning.pixel(40, 3)[0] - 40) <= 40);  // same picture (jpeg)
  // A conditioning image of another size is named at build time.
  write_image(t / "cond/b.png", 32, 64);
  const std::string bc = (t / "cond/b.png").string();
  CHECK_THROWS_WITH(Dataset::build(cfg), doctest::Contains(bc.c_str()));
}

TEST_CASE("an image no bucket fits is a listed problem too") {
  TempDir t;
  write_image(t / "img/ok.png", 64, 64);
  write_image(t / "img/thin.png", 8, 64);  // bucket_no_upscale never enlarges: 8 < one step
  const auto cfg = parse_dataset_config("[general]\nresolution = 64\nenable_bucket = true\nbucket_no_upscale = true\n"
                                        "min_bucket_reso = 32\nmax_bucket_reso = 128\nbucket_reso_steps = 16\n"
                                        "[[datasets]]\n[[datasets.subsets]]\nimage_dir = \"" + (t / "img").string() + "\"\n",
                                        "nb.toml")
                       .datasets.at(0);
  const std::string thin = (t / "img/thin.png").string();
  CHECK_THROWS_WITH_AS(Dataset::build(cfg), doctest::Contains(thin.c_str()), DatasetError);
  BuildReport r;
  const auto ds = Dataset::build(cfg, {true, true}, &r);
  REQUIRE(ds.items().size() == 1);
  CHECK(ds.items()[0].bucket.bucket == Size{64, 64});
  CHECK(r.skipped.size() == 1);
}

TEST_CASE("missing folders are configuration errors") {
  TempDir t;
  const auto cfg = parse_dataset_config("[general]\nresolution = 64\n[[datasets]]\n[[datasets.subsets]]\nimage_dir = \"" +
                                            (t / "nope").string() + "\"\n",
                                        "x.toml")
                       .datasets.at(0);
  CHECK_THROWS_WITH_AS(Dataset::build(cfg), doctest::Contains("is not a directory"), ConfigError);
}

TEST_CASE("fine-tuning metadata with wildcards: tags on every caption line") {
  TempDir t;
  write_image(t / "imgs/one.png", 64, 64);
  write_text(t / "meta.json", R"({"one": {"caption": "line a\n\nline b", "tags": "x\ny"}})");
  const auto cfg = parse_dataset_config("[general]\nresolution = 64\nenable_wildcard = true\n[[datasets]]\n"
                                        "[[datasets.subsets]]\nmetadata_file = \"" + (t / "meta.json").string() +
                                            "\"\nimage_dir = \"" + (t / "imgs").string() + "\"\n",
                                        "ft.toml")
                       .datasets.at(0);
  const auto ds = Dataset::build(cfg);
  REQUIRE(ds.items().size() == 1);
  CHECK(ds.items()[0].caption == "line a,x,y\nline b,x,y");
  std::mt19937_64 rng(1);
  const auto c = ds.caption(0, {}, rng);
  CHECK((c == "line a,x,y" || c == "line b,x,y"));
}
