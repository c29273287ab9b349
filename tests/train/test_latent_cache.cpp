// Latent caching on tiny-sd1 (kohya's --cache_latents / --cache_latents_to_disk): cached latents
// are exactly a fresh VAE encoding (posterior sample) of the processed image, flipped ones of
// the flipped image; the .npz beside each image is reused, and rebuilt when the bucket changes
// or the file is damaged; training runs from the cache; augmentations are refused with it.
#include <doctest/doctest.h>

#include "../common/plugin_test.h"
#include "app/train/latent_cache.h"
#include "app/train/trainer.h"

#include <sumi/datasets/npz.h>

#include "batch_tensor.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <filesystem>
#include <fstream>

namespace fs = std::filesystem;
namespace ds = sumi::datasets;

namespace {

fs::path circles(const std::string& name, int images) {
  const fs::path root = fs::temp_directory_path() / ("sumi_latcache_" + name);
  fs::remove_all(root);
  fs::create_directories(root / "2_sks circle");
  const fs::path src = fs::path(SUMI_SOURCE_DIR) / "examples" / "dataset" / "10_sks circle";
  for (int i = 0; i < images; ++i) {
    const std::string n = "circle_0" + std::to_string(i);
    fs::copy_file(src / (n + ".png"), root / "2_sks circle" / (n + ".png"));
    fs::copy_file(src / (n + ".txt"), root / "2_sks circle" / (n + ".txt"));
  }
  return root;
}

std::vector<ds::Dataset> build(const fs::path& root, ds::CliOptions extra = {}) {
  ds::CliOptions cli{{"train_data_dir", root.string()}, {"resolution", std::string("64")},
                     {"caption_extension", std::string(".txt")}};
  for (auto& [k, v] : extra) cli[k] = v;
  std::vector<ds::Dataset> out;
  for (const auto& d : ds::config_from_arguments(cli).datasets) out.push_back(ds::Dataset::build(d));
  return out;
}

struct Vae {
  sumi::host::Registry reg;
  std::unique_ptr<sumi::host::Component> model = sumi::test::make(SUMI_KIND_MODEL, "sd1", reg, {}, "model");
  Vae() {
    const std::string path = std::string(SUMI_TEST_DATA) + "/fixtures/tiny-sd1.safetensors";
    model->check(model->vtable<sumi_model_vtable>().load(model->self(), path.c_str()), "load");
  }
  sumi::app::LatentEncoder encoder() { return sumi::app::model_latent_encoder(*model, sumi::app::model_latent_scale(*model), false); }
};

at::Tensor as_tensor(const std::vector<float>& v, const std::vector<int64_t>& shape) {
  return at::from_blob(const_cast<float*>(v.data()), shape, at::kFloat).clone();
}

std::string file_bytes(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

}  // namespace

TEST_CASE("cached latents are the VAE's posterior sample of the processed image, flipped ones of the flipped image") {
  at::set_num_threads(2);
  const auto root = circles("memory", 3);
  const auto data = build(root, {{"flip_aug", true}});
  Vae vae;
  const auto enc = vae.encoder();
  ds::DataLoaderOptions o;
  o.cache_latents = true;
  ds::LatentStore store({data[0].items().size()});
  at::manual_seed(7);
  const std::string line = sumi::app::cache_latents(data, o, enc, store);
  CHECK(line.find("3 encoded") != std::string::npos);

  // The same draws in kohya's order (one image per VAE call, its flipped twin right after).
  at::manual_seed(7);
  for (std::size_t i = 0; i < data[0].items().size(); ++i) {
    CAPTURE(i);
    const auto img = ds::latent_source_image(data[0], i);
    CHECK(img.image.width == 64);
    CHECK(img.original == data[0].items()[i].size);
    const at::Tensor x = ds::images_to_tensor({&img.image});
    const at::Tensor z = enc(x), zf = enc(x.flip({3}));
    const auto& c = store.at(0, i).memory;
    REQUIRE(c);
    CHECK(c->shape == std::vector<int64_t>{4, 8, 8});
    CHECK(at::equal(as_tensor(c->latents, c->shape), z[0]));
    CHECK(at::equal(as_tensor(c->flipped, c->shape), zf[0]));
    CHECK(c->original == data[0].items()[i].size);
    CHECK(c->crop_ltrb.left == doctest::Approx(img.crop_ltrb.left));
  }
  // A sample, not the mean: another seed gives other latents.
  at::manual_seed(8);
  const auto img0 = ds::latent_source_image(data[0], 0);
  CHECK_FALSE(at::equal(enc(ds::images_to_tensor({&img0.image}))[0], as_tensor(store.at(0, 0).memory->latents, {4, 8, 8})));

  // The batch source caches the same way (same seed, same order) and hands the latents out
  // scaled by SD's 0.18215, as kohya's training loop does; flipped ones when the flip is drawn.
  at::manual_seed(7);
  sumi::app::BatchSource src(data, {{"cache_latents", true}, {"max_data_loader_n_workers", 2LL}}, 3, 0.18215, enc);
  for (int epoch = 1; epoch <= 2; ++epoch) {
    const auto plan = ds::group_epoch_plan(data, 3, epoch);
    src.start_epoch(epoch, plan, 0);
    for (const auto& gb : plan) {
      const auto b = src.next();
      REQUIRE(b.latents.size(0) == 1);
      const auto& c = store.at(0, gb.batch.items[0]).memory;
      CHECK(b.images[0].image.rgb.empty());
      CHECK(b.images[0].image.width == 64);
      CHECK(b.images[0].original == c->original);
      const at::Tensor want = as_tensor(b.images[0].flipped ? c->flipped : c->latents, c->shape) * 0.18215;
      CHECK(at::equal(b.latents[0], want));
    }
  }
  fs::remove_all(root);
}

TEST_CASE("disk cache: <stem>.npz reused while it matches, rebuilt for another bucket or a damaged file") {
  at::set_num_threads(2);
  const auto root = circles("disk", 2);
  Vae vae;
  const auto enc = vae.encoder();
  ds::DataLoaderOptions o = ds::data_loader_options({{"cache_latents_to_disk", true}});
  REQUIRE(o.cache_latents);
  auto data = build(root);
  const fs::path npz0 = root / "2_sks circle" / "circle_00.npz", npz1 = root / "2_sks circle" / "circle_01.npz";
  {
    ds::LatentStore store({data[0].items().size()});
    const auto line = sumi::app::cache_latents(data, o, enc, store);
    CHECK(line.find("2 encoded") != std::string::npos);
    CHECK_FALSE(store.at(0, 0).memory);  // kohya does not hold the disk cache in memory
    REQUIRE(fs::exists(npz0));
    REQUIRE(fs::exists(npz1));
    const auto m = ds::read_npz(npz0);
    REQUIRE(ds::find_member(m, "latents"));
    CHECK(ds::find_member(m, "latents")->shape == std::vector<int64_t>{4, 8, 8});
    CHECK(ds::find_member(m, "original_size")->to_doubles() == std::vector<double>{96, 64});
    CHECK(ds::find_member(m, "crop_ltrb")->to_doubles().size() == 4);
    CHECK_FALSE(ds::find_member(m, "latents_flipped"));
    // Read back through the store: what was written.
    CHECK(store.get(0, 0)->latents == ds::find_member(m, "latents")->to_floats());
  }
  const std::string first = file_bytes(npz0);
  {
    ds::LatentStore store({data[0].items().size()});
    const auto line = sumi::app::cache_latents(data, o, enc, store);
    CHECK(line.find("0 encoded") != std::string::npos);
    CHECK(line.find("2 reused") != std::string::npos);
    CHECK(file_bytes(npz0) == first);
  }
  // flip_aug needs latents_flipped: rebuilt with them.
  {
    const auto flipped = build(root, {{"flip_aug", true}});
    ds::LatentStore store({flipped[0].items().size()});
    const auto line = sumi::app::cache_latents(flipped, o, enc, store);
    CHECK(line.find("2 encoded") != std::string::npos);
    CHECK(ds::find_member(ds::read_npz(npz0), "latents_flipped"));
  }
  // Another resolution, so another bucket: rebuilt at the new size.
  {
    const auto bigger = build(root, {{"resolution", std::string("128")}});
    ds::LatentStore store({bigger[0].items().size()});
    const auto line = sumi::app::cache_latents(bigger, o, enc, store);
    CHECK(line.find("2 encoded") != std::string::npos);
    CHECK(ds::find_member(ds::read_npz(npz0), "latents")->shape == std::vector<int64_t>{4, 16, 16});
  }
  // A damaged file is rebuilt (with a warning), the intact one reused.
  {
    std::ofstream(npz1, std::ios::binary | std::ios::trunc) << "PK\x03\x04 damaged";
    ds::LatentStore store({data[0].items().size()});
    const auto line = sumi::app::cache_latents(data, o, enc, store);
    CHECK(line.find("2 encoded") != std::string::npos);  // both: the 128 files do not fit 64
    std::ofstream(npz1, std::ios::binary | std::ios::trunc) << "garbage";
    ds::LatentStore again({data[0].items().size()});
    const auto line2 = sumi::app::cache_latents(data, o, enc, again);
    CHECK(line2.find("1 encoded") != std::string::npos);
    CHECK(line2.find("1 reused") != std::string::npos);
    CHECK(line2.find("1 stale or damaged") != std::string::npos);
    CHECK(ds::read_npz(npz1).size() == 3);
  }
  fs::remove_all(root);
}

TEST_CASE("training from cached latents, and kohya's refusals") {
  at::set_num_threads(2);
  const auto root = circles("train", 2);
  const fs::path out = fs::temp_directory_path() / "sumi_latcache_train_out";
  fs::remove_all(out);
  sumi::app::TrainSettings s;
  s.model_path = std::string(SUMI_TEST_DATA) + "/fixtures/tiny-sd1.safetensors";
  s.family = "sd1";
  s.network_type = "lora";
  s.network_params = {{"dim", "4"}, {"alpha", "2"}};
  s.optimizer_type = "adamw";
  s.learning_rate = 1e-3;
  s.max_train_steps = 4;
  s.seed = 5;
  s.dataset_args = {{"train_data_dir", root.string()}, {"caption_extension", std::string(".txt")},
                    {"resolution", std::string("64")}, {"train_batch_size", 2LL},
                    {"cache_latents_to_disk", true},     {"flip_aug", true}};
  s.output_dir = out.string();
  const auto r = sumi::app::train_network(s, {SUMI_PLUGIN_DIR}, false);
  REQUIRE(r.losses.size() == 4);
  for (double l : r.losses) CHECK(std::isfinite(l));
  CHECK(fs::exists(root / "2_sks circle" / "circle_00.npz"));
  // Every latent cached and nothing decodes: the VAE was freed (release_part), which changes no
  // number — a run that keeps it (a prompt file, though never sampled at these settings) trains alike.
  CHECK(r.vae_released);
  {
    auto keep = s;
    const fs::path prompts = out / "prompts.txt";
    fs::create_directories(out);
    std::ofstream(prompts) << "a circle --w 64 --h 64 --s 2\n";
    keep.sample.prompts = prompts.string();
    // Encoding draws from the posterior (the global RNG): encode again, as the first run did.
    std::vector<fs::path> cached;
    for (const auto& e : fs::recursive_directory_iterator(root))
      if (e.path().extension() == ".npz") cached.push_back(e.path());
    REQUIRE_FALSE(cached.empty());
    for (const auto& f : cached) fs::remove(f);
    const auto k = sumi::app::train_network(keep, {SUMI_PLUGIN_DIR}, false);
    CHECK_FALSE(k.vae_released);
    CHECK(k.losses == r.losses);
  }

  for (const char* aug : {"color_aug", "random_crop"}) {
    auto bad = s;
    bad.dataset_args[aug] = true;
    CHECK_THROWS_WITH(sumi::app::train_network(bad, {SUMI_PLUGIN_DIR}, false), doctest::Contains(aug));  // before the model loads
  }
  fs::remove_all(out);
  fs::remove_all(root);
}
