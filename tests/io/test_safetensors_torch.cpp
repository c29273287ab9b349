// ATen glue for safetensors: zero-copy loads that keep the file alive, dtype conversion,
// float8 decoding, and save/load round trips of strided tensors.
#include <doctest/doctest.h>

#include <ATen/ATen.h>

#include <cmath>
#include <fstream>
#include <sstream>

#include "sumi/io/safetensors_torch.h"
#include "io_test_util.h"

using namespace sumi::io;
using sumi::test::ScratchDir;

TEST_CASE("dtype strings map to scalar types both ways") {
  for (const char* d : {"F64", "F32", "F16", "BF16", "I64", "I32", "I16", "I8", "U8", "BOOL"})
    CHECK(dtype_from_scalar_type(scalar_type_from_dtype(d)) == d);
  CHECK((scalar_type_from_dtype("F16") == at::kHalf));
  CHECK((scalar_type_from_dtype("BF16") == at::kBFloat16));
  CHECK_THROWS_AS(scalar_type_from_dtype("Q4"), std::invalid_argument);
  CHECK_THROWS_AS(dtype_from_scalar_type(at::kComplexFloat), std::invalid_argument);
}

TEST_CASE("save_tensors / load_all round trip, strided and non-CPU-layout inputs") {
  ScratchDir dir;
  const std::string path = dir.file("rt.safetensors");
  at::manual_seed(7);
  NamedTensors in = {
      {"f32_t", at::randn({4, 6}).t()},  // non-contiguous
      {"f16", at::randn({3, 5}).to(at::kHalf)},
      {"bf16", at::randn({7}).to(at::kBFloat16)},
      {"f64", at::randn({2, 2, 2}, at::kDouble)},
      {"i64", at::arange(10, at::kLong)},
      {"i32", at::arange(-5, 5, at::kInt)},
      {"i16", at::arange(3, at::kShort)},
      {"i8", at::arange(-3, 3, at::kChar)},
      {"u8", at::arange(250, 256, at::kByte)},
      {"bool", at::arange(6) % 2 == 0},
      {"slice", at::arange(20, at::kFloat).slice(0, 5, 15, 2)},  // storage offset + stride
      {"scalar", at::scalar_tensor(1.5)},
      {"empty", at::empty({0, 3})},
  };
  save_tensors(path, in, {{"note", "x"}});
  NamedTensors out = load_all(path);
  REQUIRE(out.size() == in.size());
  for (std::size_t i = 0; i < in.size(); ++i) {
    CAPTURE(in[i].first);
    CHECK(out[i].first == in[i].first);
    CHECK((out[i].second.scalar_type() == in[i].second.scalar_type()));
    CHECK((out[i].second.sizes() == in[i].second.sizes()));
    CHECK(at::equal(out[i].second, in[i].second));
  }
  CHECK(SafetensorsFile::open(path)->metadata().at("note") == "x");

  // load_all converts floating tensors only.
  NamedTensors f = load_all(path, at::kFloat);
  for (std::size_t i = 0; i < in.size(); ++i) {
    CAPTURE(in[i].first);
    if (at::isFloatingType(in[i].second.scalar_type())) {
      CHECK((f[i].second.scalar_type() == at::kFloat));
      CHECK(at::equal(f[i].second, in[i].second.to(at::kFloat)));
    } else {
      CHECK((f[i].second.scalar_type() == in[i].second.scalar_type()));
    }
  }

  CHECK_THROWS_WITH_AS(save_tensors(path, {{"c", at::zeros({2}, at::kComplexFloat)}}),
                       doctest::Contains("tensor 'c'"), std::invalid_argument);
}

TEST_CASE("load_tensor is zero-copy and keeps the file mapped") {
  ScratchDir dir;
  const std::string path = dir.file("zc.safetensors");
  at::Tensor src = at::arange(12, at::kFloat).reshape({3, 4});
  save_tensors(path, {{"w", src}});
  at::Tensor view;
  {
    auto file = SafetensorsFile::open(path);
    const TensorInfo* info = file->find("w");
    REQUIRE(info);
    view = load_tensor(file, *info);
    CHECK(view.data_ptr() == static_cast<const void*>(file->data(*info)));
    at::Tensor converted = load_tensor(file, *info, at::kHalf);
    CHECK((converted.scalar_type() == at::kHalf));
    CHECK(converted.data_ptr() != view.data_ptr());
    CHECK(at::equal(converted, src.to(at::kHalf)));
  }
  // The SafetensorsFile handle is gone; the tensor still reads valid data.
  CHECK(at::equal(view, src));
  // In-place writes land in private pages, never in the file.
  view.mul_(2);
  CHECK(at::equal(load_all(path)[0].second, src));
}

TEST_CASE("float8 tensors decode to the right values") {
  ScratchDir dir;
  const std::string path = dir.file("f8.safetensors");
  const std::vector<std::uint8_t> e4m3 = {0x38, 0x40, 0x01, 0xB8, 0x7E, 0x00};
  const std::vector<std::uint8_t> e5m2 = {0x3C, 0x40, 0x01, 0xBC, 0x7C, 0x7B};
  write_safetensors(path, {{"a", "F8_E4M3", {6}, e4m3.data(), 6}, {"b", "F8_E5M2", {6}, e5m2.data(), 6}});
  auto file = SafetensorsFile::open(path);
  at::Tensor a = load_tensor(file, *file->find("a"), at::kFloat);
  at::Tensor b = load_tensor(file, *file->find("b"), at::kFloat);
  const std::vector<float> want_a = {1.0f, 2.0f, std::ldexp(1.0f, -9), -1.0f, 448.0f, 0.0f};
  const std::vector<float> want_b = {1.0f, 2.0f, std::ldexp(1.0f, -16), -1.0f, INFINITY, 57344.0f};
  for (int i = 0; i < 6; ++i) {
    CHECK(a[i].item<float>() == want_a[static_cast<std::size_t>(i)]);
    CHECK(b[i].item<float>() == want_b[static_cast<std::size_t>(i)]);
  }
}

TEST_CASE("tiny-sd1 fixture loads as float32 tensors with the listed shapes") {
  const std::string dir = SUMI_TEST_DATA "/fixtures/";
  NamedTensors all = load_all(dir + "tiny-sd1.safetensors", at::kFloat);
  std::ifstream keys(dir + "tiny-sd1.keys.txt");
  std::map<std::string, std::string> want;
  std::string line;
  while (std::getline(keys, line)) {
    auto t1 = line.find('\t'), t2 = line.rfind('\t');
    if (t1 != std::string::npos) want[line.substr(0, t1)] = line.substr(t2 + 1);
  }
  REQUIRE(all.size() == want.size());
  for (const auto& [name, t] : all) {
    CAPTURE(name);
    CHECK((t.scalar_type() == at::kFloat));
    std::ostringstream s;
    s << t.sizes();
    REQUIRE(want.count(name));
    CHECK(s.str() == want[name]);
    CHECK(at::isfinite(t).all().item<bool>());
  }
}
