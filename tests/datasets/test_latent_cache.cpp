// NumPy .npz files (kohya's latent cache format), the cache-file validity rules, the
// data-loader options and kohya's refusal of augmentations with latent caching.
#include <doctest/doctest.h>

#include "helpers.h"
#include "sumi/datasets/config.h"
#include "sumi/datasets/latent_cache.h"
#include "sumi/datasets/npz.h"

#include <cstring>
#include <fstream>
#include <iterator>

using namespace sumi::datasets;
using sumi::test::TempDir;
using sumi::test::write_text;

namespace {
std::string header_of(const std::vector<std::uint8_t>& npy) {
  const std::size_t len = npy[8] | (npy[9] << 8);
  return std::string(npy.begin() + 10, npy.begin() + 10 + static_cast<std::ptrdiff_t>(len));
}
}  // namespace

TEST_CASE(".npy bytes are NumPy's format 1.0 layout") {
  const auto a = NpyArray::of_floats({4, 8, 8}, std::vector<float>(256, 1.5f));
  const auto b = npy_bytes(a);
  REQUIRE(b.size() > 10);
  CHECK(std::memcmp(b.data(), "\x93NUMPY\x01\x00", 8) == 0);
  const std::string h = header_of(b);
  // NumPy: sorted keys, a trailing ", }", spaces, "\n"; the data starts 64-byte aligned.
  CHECK(h.rfind("{'descr': '<f4', 'fortran_order': False, 'shape': (4, 8, 8), }", 0) == 0);
  CHECK(h.back() == '\n');
  CHECK((10 + h.size()) % 64 == 0);
  CHECK(b.size() == 10 + h.size() + 256 * 4);
  CHECK(header_of(npy_bytes(NpyArray::of_int64({2}, {512, 768}))).find("'shape': (2,), }") != std::string::npos);
  CHECK(header_of(npy_bytes(NpyArray::of_doubles({}, {1.0}))).find("'shape': (), }") != std::string::npos);

  const NpyArray back = parse_npy(b, "x");
  CHECK(back.dtype == "<f4");
  CHECK(back.shape == std::vector<std::int64_t>{4, 8, 8});
  CHECK(back.to_floats() == std::vector<float>(256, 1.5f));
  // A NumPy 2.0-format header (4-byte length) with an int32 array, as NumPy may write.
  std::string h2 = "{'descr': '<i4', 'fortran_order': False, 'shape': (3,), }";
  h2 += std::string(64 - (12 + h2.size() + 1) % 64, ' ') + "\n";
  std::string raw = std::string("\x93NUMPY\x02\x00", 8) + static_cast<char>(h2.size()) + std::string(3, '\0') + h2;
  for (std::int32_t x : {7, -2, 40000}) raw.append(reinterpret_cast<const char*>(&x), 4);
  const std::vector<std::uint8_t> v2(raw.begin(), raw.end());
  CHECK(parse_npy(v2, "v2").to_doubles() == std::vector<double>{7, -2, 40000});
  // Damage is reported, naming the member.
  auto cut = b;
  cut.resize(cut.size() - 4);
  CHECK_THROWS_WITH_AS(parse_npy(cut, "m.npy"), doctest::Contains("m.npy"), NpzError);
  auto fortran = npy_bytes(a);
  const std::string f = "'fortran_order': False";
  auto at = std::search(fortran.begin(), fortran.end(), f.begin(), f.end());
  std::memcpy(&*(at + 17), "True ", 5);
  CHECK_THROWS_WITH_AS(parse_npy(fortran, "f"), doctest::Contains("Fortran"), NpzError);
}

TEST_CASE(".npz round trip, member order, and damaged files") {
  TempDir t;
  const auto p = t / "a.npz";
  std::vector<float> lat(4 * 2 * 3);
  for (std::size_t i = 0; i < lat.size(); ++i) lat[i] = static_cast<float>(i) * 0.25f - 1.f;
  write_npz(p, {{"latents", NpyArray::of_floats({4, 2, 3}, lat)}, {"original_size", NpyArray::of_int64({2}, {100, 60})}});
  CHECK_FALSE(std::filesystem::exists(p.string() + ".tmp"));
  const auto m = read_npz(p);
  REQUIRE(m.size() == 2);
  CHECK(m[0].first == "latents");
  CHECK(m[1].first == "original_size");
  CHECK(m[0].second.to_floats() == lat);
  CHECK(find_member(m, "original_size")->to_doubles() == std::vector<double>{100, 60});
  CHECK(find_member(m, "nope") == nullptr);
  // The zip's members are stored (np.savez) under "<name>.npy".
  std::ifstream in(p, std::ios::binary);
  const std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  CHECK(bytes.find("latents.npy") != std::string::npos);
  CHECK(bytes.find("{'descr': '<f4'") != std::string::npos);  // not compressed

  write_text(t / "junk.npz", "not a zip at all");
  CHECK_THROWS_WITH_AS(read_npz(t / "junk.npz"), doctest::Contains("junk.npz"), NpzError);
  write_text(t / "cut.npz", bytes.substr(0, bytes.size() / 2));
  CHECK_THROWS_WITH_AS(read_npz(t / "cut.npz"), doctest::Contains("cut.npz"), NpzError);
}

TEST_CASE("a cached latent file is used only when bucket, original size, crop and flip match") {
  TempDir t;
  const auto img = t / "x.png";
  CHECK(latents_npz_path(img) == t / "x.npz");
  CHECK(latents_npz_path(t / "a.b.JPG") == t / "a.b.npz");
  CachedLatents c;
  c.shape = {4, 8, 12};  // bucket 96x64
  c.latents.assign(4 * 8 * 12, 0.5f);
  c.original = {150, 100};
  c.crop_ltrb = sdxl_crop_ltrb({96, 64}, {150, 100});
  write_cached_latents(latents_npz_path(img), c);
  const LatentKey key{{96, 64}, {150, 100}, sdxl_crop_ltrb({96, 64}, {150, 100}), false};
  std::string why;
  auto got = read_cached_latents(latents_npz_path(img), key, &why);
  REQUIRE(got);
  CHECK(got->latents == c.latents);
  CHECK(got->original == Size{150, 100});
  CHECK(got->crop_ltrb.left == doctest::Approx(c.crop_ltrb.left));

  auto other = key;
  other.bucket = {64, 64};
  CHECK_FALSE(read_cached_latents(latents_npz_path(img), other, &why));
  CHECK(why.find("bucket") != std::string::npos);
  other = key;
  other.original = {151, 100};
  CHECK_FALSE(read_cached_latents(latents_npz_path(img), other, &why));
  other = key;
  other.crop_ltrb.left += 1;
  CHECK_FALSE(read_cached_latents(latents_npz_path(img), other, &why));
  CHECK(why.find("crop") != std::string::npos);
  other = key;
  other.flip = true;
  CHECK_FALSE(read_cached_latents(latents_npz_path(img), other, &why));
  CHECK(why.find("latents_flipped") != std::string::npos);
  c.flipped.assign(c.latents.size(), -0.5f);
  write_cached_latents(latents_npz_path(img), c);
  got = read_cached_latents(latents_npz_path(img), other, &why);
  REQUIRE(got);
  CHECK(got->flipped == c.flipped);

  CHECK_FALSE(read_cached_latents(t / "none.npz", key, &why));
  CHECK(why == "no file");
  write_text(t / "bad.npz", "garbage");
  CHECK_FALSE(read_cached_latents(t / "bad.npz", key, &why));
  CHECK(why.find("bad.npz") != std::string::npos);
  c.latents[3] = std::nanf("");
  write_cached_latents(t / "nan.npz", c);
  CHECK_FALSE(read_cached_latents(t / "nan.npz", key, &why));
  CHECK(why.find("NaN") != std::string::npos);
}

TEST_CASE("data-loader options: kohya's names, cache_latents_to_disk implies cache_latents, bad values") {
  auto o = data_loader_options({});
  CHECK_FALSE(o.cache_latents);
  CHECK(o.workers == 8);
  CHECK(o.vae_batch_size == 1);
  o = data_loader_options({{"cache_latents_to_disk", true}, {"vae_batch_size", 4LL}, {"max_data_loader_n_workers", 0LL},
                           {"persistent_data_loader_workers", true}});
  CHECK(o.cache_latents);
  CHECK(o.cache_latents_to_disk);
  CHECK(o.vae_batch_size == 4);
  CHECK(o.workers == 0);
  CHECK(o.persistent_workers);
  CHECK_THROWS_WITH_AS(data_loader_options({{"vae_batch_size", 0LL}}), doctest::Contains("vae_batch_size"), ConfigError);
  CHECK_THROWS_WITH_AS(data_loader_options({{"max_data_loader_n_workers", -1LL}}), doctest::Contains("max_data_loader_n_workers"),
                       ConfigError);
  CHECK_THROWS_WITH_AS(data_loader_options({{"cache_latents", std::string("yes")}}), doctest::Contains("cache_latents"), ConfigError);
}

TEST_CASE("latent caching refuses color_aug and random_crop like kohya; the config layer passes loader keys") {
  TempDir t;
  write_text(t / "train" / "1_x" / "a.txt", "a");
  const CliOptions base{{"train_data_dir", (t / "train").string()}, {"resolution", std::string("64")},
                        {"cache_latents", true}, {"max_data_loader_n_workers", 2LL}};
  auto cfg = config_from_arguments(base);  // loader keys are not dataset options, and not errors
  CHECK_NOTHROW(check_latent_caching(cfg.datasets[0]));
  for (const char* aug : {"color_aug", "random_crop"}) {
    auto cli = base;
    cli[aug] = true;
    // Refused while reading the options (before any model loads), as kohya asserts.
    CHECK_THROWS_WITH_AS(config_from_arguments(cli), doctest::Contains(aug), ConfigError);
    cli["cache_latents"] = false;
    cfg = config_from_arguments(cli);
    CHECK_THROWS_WITH_AS(check_latent_caching(cfg.datasets[0]), doctest::Contains(aug), ConfigError);
  }
  const std::string toml = "[[datasets]]\nresolution = 64\n[[datasets.subsets]]\nimage_dir = \"" +
                           (t / "train" / "1_x").string() + "\"\nflip_aug = true\ncolor_aug = true\n";
  CHECK_THROWS_WITH_AS(parse_dataset_config(toml, "cfg.toml", {{"cache_latents_to_disk", true}}),
                       doctest::Contains("cfg.toml"), ConfigError);
  CHECK_NOTHROW(parse_dataset_config(toml, "cfg.toml", {}));
}

// Inputs found by the npz fuzz harness (tests/fuzz, docs/fuzzing.md).
namespace {
std::filesystem::path fuzz_regression(const std::string& name) {
  return std::filesystem::path(SUMI_SOURCE_DIR) / "tests/fuzz/regressions/npz" / name;
}
std::vector<std::uint8_t> file_bytes(const std::filesystem::path& p) {
  std::ifstream in(p, std::ios::binary);
  REQUIRE(in);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}
LatentKey key_64() {
  LatentKey k;
  k.bucket = {64, 64};
  k.original = {64, 64};
  k.crop_ltrb = {0, 0, 64, 64};
  return k;
}
}  // namespace

TEST_CASE("fuzz regression: a .npy shape whose element count wraps around 64 bits is refused") {
  // (2^62 + 1) x 4 float32 wrapped to 16 bytes, which the file then held.
  const auto b = file_bytes(fuzz_regression("npy-shape-overflow.npy"));
  CHECK_THROWS_WITH_AS(parse_npy(b, "o.npy"), doctest::Contains("too large"), NpzError);
  // Empty arrays stay fine, whatever their other dimensions.
  const auto empty = npy_bytes(NpyArray::of_floats({0, 3}, {}));
  CHECK(parse_npy(empty, "e").numel() == 0);
}

TEST_CASE("fuzz regression: cached latents whose shape wraps are not used") {
  // latents of shape (2^62 + 1, 8, 8) with 64 values: the cache handed a [2^62+1, 8, 8] shape
  // over 64 floats to the trainer.
  std::string why;
  CHECK_FALSE(read_cached_latents(fuzz_regression("latents-shape-overflow.npz"), key_64(), &why));
  CHECK(why.find("too large") != std::string::npos);
}

TEST_CASE("fuzz regression: an original_size out of int range is damage, not a conversion") {
  // original_size = [1e300, 64]: converting 1e300 to int is undefined behaviour.
  std::string why;
  CHECK_FALSE(read_cached_latents(fuzz_regression("latents-original-size-1e300.npz"), key_64(), &why));
  CHECK(why == "original_size is not an image size");
}

TEST_CASE("fuzz regression: a member whose recorded size is 4 GiB allocates as it decompresses") {
  // A 196-byte .npz whose zip entry claims 0xFFFFFF00 bytes: read_npz allocated all of it
  // before reading a byte.
  CHECK_THROWS_WITH_AS(read_npz(fuzz_regression("member-claims-4gib.npz")),
                       doctest::Contains("cannot read member latents"), NpzError);
}

TEST_CASE("fuzz regression: a shape dimension with a NUL byte in it is not a 0") {
  // shape (2,\0\x80): strtoll stopped at the NUL and the dimension read as 0.
  const auto b = file_bytes(fuzz_regression("npy-shape-nul-dimension.npy"));
  CHECK_THROWS_WITH_AS(parse_npy(b, "n.npy"), doctest::Contains("bad shape"), NpzError);
}
