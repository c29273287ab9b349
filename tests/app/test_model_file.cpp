// Which model component loads a file (asked of the model plugins' probe slot), and A1111's model hash.
#include <doctest/doctest.h>

#include "../common/test_data.h"

#include "app/model_file.h"
#include "core/error.h"
#include "core/plugin_manager.h"

#include <cstdio>
#include <filesystem>
#include <fstream>

namespace {
using sumi::test::fixture;
}  // namespace

TEST_CASE("the model plugins' probe picks the component for single files, checkpoints and diffusers folders") {
  sumi::host::PluginManager pm;
  pm.add_search_dir(SUMI_PLUGIN_DIR);
  CHECK(sumi::app::find_model_component(pm, fixture("tiny-sd1.safetensors")) == "sd1");
  CHECK(sumi::app::find_model_component(pm, fixture("tiny-sd2v.safetensors")) == "sd2");
  CHECK(sumi::app::find_model_component(pm, fixture("tiny-sdxl.safetensors")) == "sdxl");
  CHECK(sumi::app::find_model_component(pm, fixture("tiny-sd1")) == "sd1");
  CHECK(sumi::app::find_model_component(pm, fixture("tiny-sd2v")) == "sd2");
  CHECK(sumi::app::find_model_component(pm, fixture("tiny-sdxl")) == "sdxl");
  // kohya's family flags must name the component that loads the file (the model plugin lists
  // them in its probe answer; the host knows no family).
  CHECK(sumi::app::find_model_component(pm, fixture("tiny-sd2v.safetensors"), {"v2"}) == "sd2");
  CHECK(sumi::app::find_model_component(pm, fixture("tiny-sdxl"), {"sdxl"}) == "sdxl");
  CHECK_THROWS_WITH_AS(sumi::app::find_model_component(pm, fixture("tiny-sd1.safetensors"), {"v2"}),
                       doctest::Contains("--v2 was given, but the file is loaded by model component 'sd1'"),
                       sumi::host::UserError);
  CHECK_THROWS_WITH_AS(sumi::app::find_model_component(pm, fixture("tiny-sd2v"), {"sdxl"}),
                       doctest::Contains("kohya's --v2 names; drop --sdxl"), sumi::host::UserError);
  // Not a model: every component's answer is in the message.
  try {
    sumi::app::find_model_component(pm, fixture("tiny-sd1.lora.safetensors"));
    FAIL("a LoRA file was taken for a model");
  } catch (const sumi::host::UserError& e) {
    const std::string m = e.what();
    CHECK(m.find("tiny-sd1.lora.safetensors: no model plugin loads it") != std::string::npos);
    CHECK(m.find("sd1: ") != std::string::npos);
    CHECK(m.find("sdxl: ") != std::string::npos);
  }
  CHECK_THROWS_WITH_AS(sumi::app::find_model_component(pm, fixture("clip-tokenizer")),
                       doctest::Contains("without model_index.json"), sumi::host::UserError);
  CHECK_THROWS_WITH_AS(sumi::app::find_model_component(pm, fixture("nope.safetensors")),
                       doctest::Contains("nope.safetensors: no such file or folder"), sumi::host::UserError);
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
