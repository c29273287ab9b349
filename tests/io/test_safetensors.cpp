// safetensors reader/writer: bit-exact round trips, lazy mapping, and clear rejection of
// malformed files.
#include <doctest/doctest.h>

#include <fcntl.h>
#include <signal.h>
#include <sys/resource.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>

#include "sumi/io/safetensors.h"
#include "io_test_util.h"

using namespace sumi::io;
using sumi::test::ScratchDir;
namespace fs = std::filesystem;

namespace {

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

// A raw safetensors file: 8-byte length (overridable), header text, data bytes.
void write_raw(const std::string& path, const std::string& header, const std::string& data,
               std::int64_t len_override = -1) {
  std::ofstream out(path, std::ios::binary);
  std::uint64_t len = len_override >= 0 ? static_cast<std::uint64_t>(len_override) : header.size();
  out.write(reinterpret_cast<const char*>(&len), 8);
  out << header << data;
}

std::string open_error(const std::string& path) {
  try {
    SafetensorsFile::open(path);
  } catch (const FormatError& e) {
    return e.what();
  }
  return "<no FormatError>";
}

}  // namespace

TEST_CASE("safetensors round trip: every dtype, metadata, bit-exact") {
  ScratchDir dir;
  const std::vector<std::string> dtypes = {"F64", "F32", "F16", "BF16", "I64", "I32",
                                           "I16", "I8",  "U8",  "BOOL", "F8_E4M3", "F8_E5M2"};
  std::mt19937 rng(1234);
  std::vector<std::vector<std::uint8_t>> payloads;
  std::vector<TensorView> views;
  int i = 0;
  for (const auto& dt : dtypes) {
    // Odd sizes put narrow dtypes between wide ones in the input order.
    std::vector<std::int64_t> shape = {3, 1 + i % 4, 5};
    std::size_t n = 15 * static_cast<std::size_t>(1 + i % 4) * dtype_size(dt);
    std::vector<std::uint8_t> bytes(n);
    for (auto& b : bytes) b = static_cast<std::uint8_t>(rng());
    if (dt == "BOOL")
      for (auto& b : bytes) b &= 1;
    payloads.push_back(std::move(bytes));
    views.push_back({"t." + dt, dt, shape, payloads.back().data(), payloads.back().size()});
    ++i;
  }
  // A scalar and an empty tensor.
  double scalar = 3.25;
  views.push_back({"scalar", "F64", {}, &scalar, sizeof scalar});
  views.push_back({"empty", "F32", {0, 7}, nullptr, 0});
  const std::map<std::string, std::string> meta = {{"format", "pt"}, {"ss_note", "héllo \"x\""}};

  const std::string path = dir.file("all.safetensors");
  write_safetensors(path, views, meta);

  auto f = SafetensorsFile::open(path);
  CHECK(f->path() == path);
  CHECK(f->metadata() == meta);
  REQUIRE(f->tensors().size() == views.size());
  for (std::size_t k = 0; k < views.size(); ++k) {
    const TensorInfo& t = f->tensors()[k];
    CHECK(t.name == views[k].name);  // header keeps the caller's order
    CHECK(t.dtype == views[k].dtype);
    CHECK(t.shape == views[k].shape);
    CHECK(t.nbytes == views[k].nbytes);
    CHECK(f->find(t.name) == &t);
    const std::uint8_t* p = f->data(t);
    CHECK(reinterpret_cast<std::uintptr_t>(p) % dtype_size(t.dtype) == 0);
    if (t.nbytes) CHECK(std::memcmp(p, views[k].data, t.nbytes) == 0);
  }
  CHECK(f->find("missing") == nullptr);
  CHECK(f->find("scalar")->numel() == 1);
  CHECK(f->find("empty")->numel() == 0);

  // The header is padded to a multiple of 8 with spaces, as the reference writer does.
  std::string raw = read_file(path);
  std::uint64_t hlen = 0;
  std::memcpy(&hlen, raw.data(), 8);
  CHECK(hlen % 8 == 0);
  CHECK(raw.size() == 8 + hlen + [&] {
          std::size_t s = 0;
          for (auto& v : views) s += v.nbytes;
          return s;
        }());

  // Writing again over an existing file replaces it.
  write_safetensors(path, {views[0]}, {});
  auto g = SafetensorsFile::open(path);
  CHECK(g->tensors().size() == 1);
  CHECK(g->metadata().empty());
}

TEST_CASE("safetensors reader is lazy and never writes to the file") {
  ScratchDir dir;
  const std::string path = dir.file("lazy.safetensors");
  std::vector<float> a(1024, 1.0f), b(1024, 2.0f);
  write_safetensors(path, {{"a", "F32", {1024}, a.data(), 4096}, {"b", "F32", {1024}, b.data(), 4096}});
  auto f = SafetensorsFile::open(path);
  const TensorInfo* tb = f->find("b");
  REQUIRE(tb);

  // Change b's bytes on disk after open: the reader sees them, so open() copied no data.
  std::vector<float> b2(1024, 7.0f);
  int fd = ::open(path.c_str(), O_WRONLY);
  REQUIRE(fd >= 0);
  const auto data_start = f->file_size() - 8192;
  REQUIRE(::pwrite(fd, b2.data(), 4096, static_cast<off_t>(data_start + tb->offset)) == 4096);
  ::close(fd);
  float got = 0;
  std::memcpy(&got, f->data(*tb) + 4 * 100, 4);
  CHECK(got == 7.0f);

  // Writes through the mapping stay private (copy-on-write).
  auto* pa = const_cast<std::uint8_t*>(f->data(*f->find("a")));
  float nine = 9.0f;
  std::memcpy(pa, &nine, 4);
  auto g = SafetensorsFile::open(path);
  float first = 0;
  std::memcpy(&first, g->data(*g->find("a")), 4);
  CHECK(first == 1.0f);
}

TEST_CASE("safetensors reader rejects malformed files with clear messages") {
  ScratchDir dir;
  const std::string p = dir.file("bad.safetensors");
  const std::string data16(16, '\0');

  SUBCASE("shorter than the length field") {
    std::ofstream(p, std::ios::binary) << "abc";
    auto msg = open_error(p);
    CHECK(msg.find(p) != std::string::npos);
    CHECK(msg.find("at least the 8-byte") != std::string::npos);
  }
  SUBCASE("header length past end of file") {
    write_raw(p, R"({"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}})", data16, 5000);
    auto msg = open_error(p);
    CHECK(msg.find("header length field says 5000") != std::string::npos);
    CHECK(msg.find("truncated") != std::string::npos);
  }
  SUBCASE("absurd header length") {
    write_raw(p, "{}", "", std::int64_t(1) << 40);
    CHECK(open_error(p).find("100 MiB") != std::string::npos);
  }
  SUBCASE("bad JSON") {
    write_raw(p, R"({"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]})", data16);
    auto msg = open_error(p);
    CHECK(msg.find(p) != std::string::npos);
    CHECK(msg.find("not valid JSON") != std::string::npos);
  }
  SUBCASE("offsets out of range") {
    write_raw(p, R"({"a":{"dtype":"F32","shape":[8],"data_offsets":[0,32]}})", data16);
    auto msg = open_error(p);
    CHECK(msg.find("tensor 'a'") != std::string::npos);
    CHECK(msg.find("outside the data region of 16 bytes") != std::string::npos);
  }
  SUBCASE("truncated data of a real file") {
    std::vector<float> v(64, 1.0f);
    write_safetensors(p, {{"w", "F32", {64}, v.data(), 256}});
    fs::resize_file(p, fs::file_size(p) - 10);
    auto msg = open_error(p);
    CHECK(msg.find("tensor 'w'") != std::string::npos);
    CHECK(msg.find("outside the data region") != std::string::npos);
  }
  SUBCASE("overlapping tensors") {
    write_raw(p,
              R"({"a":{"dtype":"F32","shape":[3],"data_offsets":[0,12]},)"
              R"("b":{"dtype":"F32","shape":[2],"data_offsets":[8,16]}})",
              data16);
    auto msg = open_error(p);
    CHECK(msg.find("'a'") != std::string::npos);
    CHECK(msg.find("'b'") != std::string::npos);
    CHECK(msg.find("overlap") != std::string::npos);
  }
  SUBCASE("size mismatch") {
    write_raw(p, R"({"a":{"dtype":"F16","shape":[2,3],"data_offsets":[0,16]}})", data16);
    auto msg = open_error(p);
    CHECK(msg.find("tensor 'a'") != std::string::npos);
    CHECK(msg.find("needs 12 bytes but data_offsets span 16") != std::string::npos);
  }
  SUBCASE("unknown dtype") {
    write_raw(p, R"({"a":{"dtype":"F12","shape":[4],"data_offsets":[0,16]}})", data16);
    auto msg = open_error(p);
    CHECK(msg.find("tensor 'a'") != std::string::npos);
    CHECK(msg.find("unknown dtype 'F12'") != std::string::npos);
  }
  SUBCASE("negative shape") {
    write_raw(p, R"({"a":{"dtype":"F32","shape":[-4],"data_offsets":[0,16]}})", data16);
    CHECK(open_error(p).find("non-negative") != std::string::npos);
  }
  SUBCASE("non-string metadata") {
    write_raw(p, R"({"__metadata__":{"epoch":3},"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}})",
              data16);
    auto msg = open_error(p);
    CHECK(msg.find("__metadata__ value of 'epoch' must be a string") != std::string::npos);
  }
  SUBCASE("duplicate tensor name") {
    write_raw(p,
              R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
              R"("a":{"dtype":"F32","shape":[2],"data_offsets":[8,16]}})",
              data16);
    CHECK(open_error(p).find("lists 'a' twice") != std::string::npos);
  }
  SUBCASE("header is not an object") {
    write_raw(p, "[1, 2]  ", "");
    CHECK(open_error(p).find("does not start with '{'") != std::string::npos);
  }
  SUBCASE("missing file is an I/O error, not a format error") {
    CHECK_THROWS_WITH_AS(SafetensorsFile::open(dir.file("nope.safetensors")),
                         doctest::Contains("cannot open"), std::runtime_error);
  }
}

TEST_CASE("safetensors writer validates input and never damages an existing file") {
  ScratchDir dir;
  const std::string path = dir.file("keep.safetensors");
  std::vector<float> v(16, 0.5f);
  write_safetensors(path, {{"orig", "F32", {16}, v.data(), 64}}, {{"k", "v"}});
  const std::string before = read_file(path);

  auto only_original_left = [&] {
    CHECK(read_file(path) == before);
    std::size_t n = 0;
    for (auto& e : fs::directory_iterator(dir.path())) {
      (void)e;
      ++n;
    }
    CHECK(n == 1);  // no stray temporary file
  };

  SUBCASE("duplicate names") {
    CHECK_THROWS_WITH_AS(write_safetensors(path, {{"x", "F32", {16}, v.data(), 64},
                                                  {"x", "F32", {16}, v.data(), 64}}),
                         doctest::Contains("'x' appears twice"), std::invalid_argument);
    only_original_left();
  }
  SUBCASE("nbytes does not match the shape") {
    CHECK_THROWS_WITH_AS(write_safetensors(path, {{"x", "F32", {4, 5}, v.data(), 64}}),
                         doctest::Contains("needs 80 bytes, got 64"), std::invalid_argument);
    only_original_left();
  }
  SUBCASE("unknown dtype") {
    CHECK_THROWS_AS(write_safetensors(path, {{"x", "F24", {16}, v.data(), 64}}),
                    std::invalid_argument);
    only_original_left();
  }
  SUBCASE("I/O failure while writing") {
    // A file-size limit makes write() fail part way through the data (EFBIG).
    std::vector<std::uint8_t> big(1 << 20, 3);
    struct rlimit old {};
    REQUIRE(::getrlimit(RLIMIT_FSIZE, &old) == 0);
    auto old_handler = ::signal(SIGXFSZ, SIG_IGN);
    struct rlimit lim = old;
    lim.rlim_cur = 64 * 1024;
    REQUIRE(::setrlimit(RLIMIT_FSIZE, &lim) == 0);
    bool threw = false;
    try {
      write_safetensors(path, {{"big", "U8", {1 << 20}, big.data(), big.size()}});
    } catch (const std::runtime_error& e) {
      threw = true;
      CHECK(std::string(e.what()).find("failed") != std::string::npos);
    }
    ::setrlimit(RLIMIT_FSIZE, &old);
    ::signal(SIGXFSZ, old_handler);
    CHECK(threw);
    only_original_left();
  }
}

TEST_CASE("tiny-sd1 fixture loads and matches its key list") {
  const std::string dir = SUMI_TEST_DATA "/fixtures/";
  auto f = SafetensorsFile::open(dir + "tiny-sd1.safetensors");
  std::ifstream keys(dir + "tiny-sd1.keys.txt");
  REQUIRE(keys);
  std::string line;
  std::size_t n = 0;
  while (std::getline(keys, line)) {
    if (line.empty()) continue;
    std::istringstream in(line);
    std::string name, dtype, shape_text;
    std::getline(in, name, '\t');
    std::getline(in, dtype, '\t');
    std::getline(in, shape_text);
    const TensorInfo* t = f->find(name);
    REQUIRE_MESSAGE(t, name);
    CHECK(dtype == "float16");
    CHECK(t->dtype == "F16");
    std::string got = "[";
    for (std::size_t i = 0; i < t->shape.size(); ++i)
      got += (i ? ", " : "") + std::to_string(t->shape[i]);
    got += "]";
    CHECK_MESSAGE(got == shape_text, name);
    ++n;
  }
  CHECK(n == f->tensors().size());
  CHECK(n == 980);
}
