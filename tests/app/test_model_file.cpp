// Family detection from names/layout only, and A1111's model hash.
#include <doctest/doctest.h>

#include "../common/test_data.h"

#include "app/model_file.h"
#include "core/error.h"

#include <cstdio>
#include <filesystem>
#include <fstream>

namespace {
using sumi::test::fixture;
}  // namespace

TEST_CASE("family detection from single files and diffusers folders") {
  CHECK(sumi::app::detect_family(fixture("tiny-sd1.safetensors")) == "sd1");
  CHECK(sumi::app::detect_family(fixture("tiny-sd2v.safetensors")) == "sd2");
  CHECK(sumi::app::detect_family(fixture("tiny-sdxl.safetensors")) == "sdxl");
  CHECK(sumi::app::detect_family(fixture("tiny-sd1")) == "sd1");
  CHECK(sumi::app::detect_family(fixture("tiny-sd2v")) == "sd2");
  CHECK(sumi::app::detect_family(fixture("tiny-sdxl")) == "sdxl");
  CHECK(sumi::app::detect_family(fixture("tiny-sd1.lora.safetensors")) == "");
  CHECK_THROWS_WITH_AS(sumi::app::detect_family(fixture("clip-tokenizer")), doctest::Contains("without model_index.json"),
                       sumi::host::UserError);
}

TEST_CASE("A1111 model hash is the first 10 hex digits of SHA-256") {
  const auto path = (std::filesystem::temp_directory_path() / "sumi_hash_test.bin").string();
  {
    std::ofstream f(path, std::ios::binary);
    f << "abc";
  }
  // sha256("abc") = ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad
  CHECK(sumi::app::a1111_hash(path) == "ba7816bf8f");
  std::filesystem::remove(path);
  CHECK(sumi::app::a1111_hash(fixture("tiny-sd1")) == "");
}
