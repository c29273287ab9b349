// The threaded batch loader: any number of workers (persistent or not) gives bitwise the same
// batches in plan order as loading on the calling thread, also when starting mid-epoch
// (resume); cached latents come back flipped with kohya's mirrored crop when flip_aug draws so.
#include <doctest/doctest.h>

#include "helpers.h"
#include "sumi/datasets/loader.h"

using namespace sumi::datasets;
using sumi::test::TempDir;
using sumi::test::write_image;
using sumi::test::write_text;

namespace {
Dataset augmented_dataset(const TempDir& t) {
  const int sizes[][2] = {{100, 100}, {128, 96}, {60, 120}, {90, 70}, {64, 64}, {120, 80}, {77, 99}};
  for (int i = 0; i < 7; ++i)
    write_image(t / ("train/2_x/img" + std::to_string(i) + (i % 2 ? ".png" : ".jpg")), sizes[i][0], sizes[i][1]);
  CliOptions cli{{"train_data_dir", (t / "train").string()}, {"resolution", std::string("64")}, {"enable_bucket", true},
                 {"min_bucket_reso", 32LL},  {"max_bucket_reso", 128LL}, {"bucket_reso_steps", 16LL},
                 {"train_batch_size", 2LL},  {"flip_aug", true},         {"color_aug", true},
                 {"random_crop", true}};
  return Dataset::build(config_from_arguments(cli).datasets.at(0));
}

bool same(const LoadedBatch& a, const LoadedBatch& b) {
  if (a.dataset != b.dataset || a.batch.items != b.batch.items || a.images.size() != b.images.size()) return false;
  for (std::size_t i = 0; i < a.images.size(); ++i) {
    const auto &x = a.images[i], &y = b.images[i];
    if (x.image.rgb != y.image.rgb || x.image.width != y.image.width || x.flipped != y.flipped ||
        x.crop.left != y.crop.left || x.crop.top != y.crop.top || x.crop_ltrb.left != y.crop_ltrb.left)
      return false;
  }
  return true;
}

std::vector<LoadedBatch> run(BatchLoader& l, const std::vector<Dataset>& data, int epoch, std::size_t first = 0) {
  l.start_epoch(epoch, group_epoch_plan(data, 5, epoch), first);
  std::vector<LoadedBatch> out;
  const std::size_t n = group_epoch_plan(data, 5, epoch).size();
  for (std::size_t i = first; i < n; ++i) out.push_back(l.next());
  return out;
}
}  // namespace

TEST_CASE("worker threads give bitwise the batches of the single-threaded loader, in plan order") {
  TempDir t;
  const std::vector<Dataset> data{augmented_dataset(t)};
  BatchLoader serial(data, 5, 0, false);
  BatchLoader persistent(data, 5, 3, true);
  BatchLoader per_epoch(data, 5, 2, false);
  CHECK(serial.workers() == 0);
  for (int epoch : {1, 2}) {
    const auto a = run(serial, data, epoch);
    const auto b = run(persistent, data, epoch);
    const auto c = run(per_epoch, data, epoch);
    REQUIRE(a.size() == group_epoch_plan(data, 5, epoch).size());
    REQUIRE(a.size() == b.size());
    REQUIRE(a.size() == c.size());
    bool any_flip = false;
    for (std::size_t i = 0; i < a.size(); ++i) {
      INFO("epoch " << epoch << " batch " << i);
      CHECK(a[i].batch.items == group_epoch_plan(data, 5, epoch)[i].batch.items);
      CHECK(same(a[i], b[i]));
      CHECK(same(a[i], c[i]));
      for (const auto& img : a[i].images) any_flip |= img.flipped;
    }
    CHECK(any_flip);  // the augmentations did run
    // Starting mid-epoch (a resumed run) gives the tail of the same epoch.
    const auto tail = run(persistent, data, epoch, 3);
    REQUIRE(tail.size() == a.size() - 3);
    for (std::size_t i = 0; i < tail.size(); ++i) CHECK(same(tail[i], a[i + 3]));
  }
  // Another epoch draws other augmentations.
  const auto e1 = run(serial, data, 1), e3 = run(serial, data, 3);
  bool differs = false;
  for (std::size_t i = 0; i < e1.size(); ++i) differs |= !same(e1[i], e3[i]);
  CHECK(differs);
  // Abandoning an epoch half-way and starting another is fine (a run that stops early).
  persistent.start_epoch(1, group_epoch_plan(data, 5, 1), 0);
  persistent.next();
  CHECK(same(run(persistent, data, 2)[0], run(serial, data, 2)[0]));
  CHECK_THROWS_AS(serial.next(), std::logic_error);
}

TEST_CASE("a worker's error reaches the caller for its batch") {
  TempDir t;
  std::vector<Dataset> data{augmented_dataset(t)};
  for (const auto& it : data[0].items()) write_text(it.path, "destroyed after the check");
  BatchLoader l(data, 5, 2, true);
  l.start_epoch(1, group_epoch_plan(data, 5, 1), 0);
  CHECK_THROWS_AS(l.next(), ImageError);
}

TEST_CASE("cached latents: flip picks latents_flipped and mirrors the crop; sizes come from the cache") {
  TempDir t;
  write_image(t / "train/1_x/a.png", 96, 64);
  const CliOptions cli{{"train_data_dir", (t / "train").string()}, {"resolution", std::string("64")}, {"flip_aug", true}};
  const std::vector<Dataset> data{Dataset::build(config_from_arguments(cli).datasets.at(0))};
  LatentStore store({data[0].items().size()});
  auto c = std::make_shared<CachedLatents>();
  c->shape = {4, 8, 8};
  c->latents.assign(256, 1.f);
  c->flipped.assign(256, -1.f);
  c->original = {96, 64};
  c->crop_ltrb = sdxl_crop_ltrb({64, 64}, {96, 64});
  store.at(0, 0).memory = c;
  BatchLoader l(data, 11, 0, false, &store);
  int flips = 0, plain = 0;
  for (int epoch = 1; epoch <= 24; ++epoch) {
    l.start_epoch(epoch, group_epoch_plan(data, 11, epoch), 0);
    const LoadedBatch b = l.next();
    REQUIRE(b.latents.size() == 1);
    CHECK(b.latent_shape == std::vector<std::int64_t>{4, 8, 8});
    const auto& img = b.images[0];
    CHECK(img.image.rgb.empty());
    CHECK(img.image.width == 64);
    CHECK(img.original == Size{96, 64});
    if (img.flipped) {
      ++flips;
      CHECK((*b.latents[0])[0] == -1.f);
      CHECK(img.crop_ltrb.left == doctest::Approx(64 - c->crop_ltrb.right));
    } else {
      ++plain;
      CHECK((*b.latents[0])[0] == 1.f);
      CHECK(img.crop_ltrb.left == doctest::Approx(c->crop_ltrb.left));
    }
  }
  CHECK(flips > 0);
  CHECK(plain > 0);
}
