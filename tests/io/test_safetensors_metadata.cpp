// set_safetensors_metadata: the header's __metadata__ is replaced while every tensor keeps its
// bytes, order and offsets; files from other writers (unpadded headers, trailing bytes) keep
// working; a malformed file is refused naming it and left untouched.
#include <doctest/doctest.h>

#include <sys/stat.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <set>

#include "sumi/io/safetensors.h"
#include "io_test_util.h"

using namespace sumi::io;
using sumi::test::ScratchDir;
namespace fs = std::filesystem;

namespace {

std::string read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

std::uint64_t header_len(const std::string& raw) {
  std::uint64_t n = 0;
  std::memcpy(&n, raw.data(), 8);
  return n;
}

// The files in `dir` other than the ones named: a failed or finished rewrite leaves no temporary.
std::vector<std::string> stray_files(const ScratchDir& dir, const std::set<std::string>& keep) {
  std::vector<std::string> out;
  for (const auto& e : fs::directory_iterator(dir.path()))
    if (!keep.count(e.path().filename().string())) out.push_back(e.path().filename().string());
  return out;
}

}  // namespace

TEST_CASE("set_safetensors_metadata replaces the metadata and keeps every tensor bit-identical") {
  ScratchDir dir;
  std::mt19937 rng(7);
  // Mixed dtypes and odd sizes, several MiB in all so the copy runs over more than one block.
  std::vector<std::vector<std::uint8_t>> payloads;
  std::vector<TensorView> views;
  const std::vector<std::pair<std::string, std::vector<std::int64_t>>> specs = {
      {"F32", {1024, 1030}}, {"F16", {3, 5, 7}}, {"I64", {9}}, {"U8", {13}}, {"BF16", {2, 1500, 1001}}, {"F64", {}}};
  for (std::size_t i = 0; i < specs.size(); ++i) {
    const auto& [dt, shape] = specs[i];
    std::size_t n = dtype_size(dt);
    for (auto d : shape) n *= static_cast<std::size_t>(d);
    std::vector<std::uint8_t> bytes(n);
    for (auto& b : bytes) b = static_cast<std::uint8_t>(rng());
    payloads.push_back(std::move(bytes));
    views.push_back({"model.t" + std::to_string(i), dt, shape, payloads.back().data(), payloads.back().size()});
  }
  views.push_back({"empty", "F32", {0, 3}, nullptr, 0});
  const std::string path = dir.file("model.safetensors");
  write_safetensors(path, views, {{"format", "pt"}});
  const std::string before = read_bytes(path);
  const auto old_file = SafetensorsFile::open(path);
  const std::uint64_t old_data_start = old_file->data_start();

  const std::map<std::string, std::string> meta = {
      {"modelspec.title", "my \"model\" ✓"},
      {"modelspec.architecture", "stable-diffusion-v1"},
      {"modelspec.description", std::string(1000, 'x')},  // the header grows a lot
  };
  set_safetensors_metadata(path, meta);

  const std::string after = read_bytes(path);
  auto f = SafetensorsFile::open(path);
  CHECK(f->metadata() == meta);  // replaced, not merged: "format" is gone
  CHECK(f->data_start() > old_data_start);
  CHECK(f->data_start() % 8 == 0);
  CHECK(header_len(after) % 8 == 0);
  // The data region is byte for byte the old one.
  REQUIRE(after.size() - f->data_start() == before.size() - old_data_start);
  CHECK(after.compare(f->data_start(), std::string::npos, before, old_data_start, std::string::npos) == 0);
  // Same tensors, same order, same offsets, same bytes.
  REQUIRE(f->tensors().size() == views.size());
  for (std::size_t k = 0; k < views.size(); ++k) {
    const auto& t = f->tensors()[k];
    const auto& o = old_file->tensors()[k];
    CAPTURE(t.name);
    CHECK(t.name == o.name);
    CHECK(t.dtype == o.dtype);
    CHECK(t.shape == o.shape);
    CHECK(t.offset == o.offset);
    CHECK(t.nbytes == views[k].nbytes);
    if (t.nbytes) CHECK(std::memcmp(f->data(t), views[k].data, t.nbytes) == 0);
  }
  CHECK(stray_files(dir, {"model.safetensors"}).empty());

  // Empty metadata drops the __metadata__ entry; the tensors still read back.
  set_safetensors_metadata(path, {});
  auto g = SafetensorsFile::open(path);
  CHECK(g->metadata().empty());
  CHECK(read_bytes(path).find("__metadata__") == std::string::npos);
  REQUIRE(g->tensors().size() == views.size());
  CHECK(std::memcmp(g->data(g->tensors()[0]), views[0].data, views[0].nbytes) == 0);
}

TEST_CASE("set_safetensors_metadata keeps foreign layouts readable and the file's permissions") {
  ScratchDir dir;
  const std::string path = dir.file("foreign.safetensors");
  // Another writer's file: a header length that is no multiple of 8, tensors out of offset
  // order, trailing bytes after the last tensor.
  const std::string header =
      R"({"b":{"dtype":"F32","shape":[2],"data_offsets":[8,16]},"a":{"dtype":"I16","shape":[4],"data_offsets":[0,8]}})";
  REQUIRE(header.size() % 8 != 0);
  std::string data;
  for (int i = 0; i < 16; ++i) data.push_back(static_cast<char>(i * 7 + 1));
  data += "TRAILER";
  {
    std::ofstream out(path, std::ios::binary);
    const std::uint64_t len = header.size();
    out.write(reinterpret_cast<const char*>(&len), 8);
    out << header << data;
  }
  ::chmod(path.c_str(), 0640);
  set_safetensors_metadata(path, {{"k", "v"}});
  auto f = SafetensorsFile::open(path);
  CHECK(f->metadata().at("k") == "v");
  REQUIRE(f->tensors().size() == 2);
  CHECK(f->tensors()[0].name == "b");  // header order kept
  CHECK(f->tensors()[1].name == "a");
  CHECK(std::memcmp(f->data(*f->find("a")), data.data(), 8) == 0);
  CHECK(std::memcmp(f->data(*f->find("b")), data.data() + 8, 8) == 0);
  const std::string raw = read_bytes(path);
  CHECK(raw.substr(raw.size() - 7) == "TRAILER");
  CHECK((fs::status(path).permissions() & fs::perms::all) == (fs::perms::owner_read | fs::perms::owner_write | fs::perms::group_read));
  // update_safetensors_metadata keeps the file's entries and adds (or replaces) the given ones.
  update_safetensors_metadata(path, {{"k", "w"}, {"more", "x"}});
  update_safetensors_metadata(path, {{"last", "y"}});
  const std::map<std::string, std::string> want{{"k", "w"}, {"more", "x"}, {"last", "y"}};
  CHECK(SafetensorsFile::open(path)->metadata() == want);
  CHECK(read_bytes(path).substr(read_bytes(path).size() - 7) == "TRAILER");
}

TEST_CASE("set_safetensors_metadata refuses a malformed file, naming it, and leaves it as it was") {
  ScratchDir dir;
  const std::string path = dir.file("broken.safetensors");
  // A header that promises more bytes than the file has (a truncated download).
  const std::string header = R"({"w":{"dtype":"F32","shape":[100],"data_offsets":[0,400]}})";
  {
    std::ofstream out(path, std::ios::binary);
    const std::uint64_t len = header.size();
    out.write(reinterpret_cast<const char*>(&len), 8);
    out << header << std::string(40, '\0');
  }
  const std::string before = read_bytes(path);
  CHECK_THROWS_WITH_AS(set_safetensors_metadata(path, {{"k", "v"}}), doctest::Contains("broken.safetensors"), FormatError);
  CHECK(read_bytes(path) == before);
  CHECK(stray_files(dir, {"broken.safetensors"}).empty());

  const std::string junk = dir.file("junk.safetensors");
  std::ofstream(junk, std::ios::binary) << "not a safetensors file at all";
  CHECK_THROWS_WITH_AS(set_safetensors_metadata(junk, {}), doctest::Contains("junk.safetensors"), FormatError);
  CHECK_THROWS_WITH(set_safetensors_metadata(dir.file("missing.safetensors"), {}), doctest::Contains("missing.safetensors"));
}
