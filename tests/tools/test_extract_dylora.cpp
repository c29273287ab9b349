// `sumi extract_lora_from_dylora` against sd-scripts v0.7.0's extract_lora_from_dylora.py
// --unit 2 on the tiny-sd1 DyLoRA (fixtures/networks): the rank-4 file equals kohya's tensor for
// tensor (a cut of F16 rows is exact) and in its metadata, hashes included; the ranks written
// and the refusals.
#include <doctest/doctest.h>

#include "../common/test_data.h"

#include "app/tools/tools.h"
#include "sumi/io/safetensors.h"
#include "sumi/io/safetensors_torch.h"

#include <ATen/ATen.h>

#include <filesystem>
#include <iostream>
#include <sstream>

namespace fs = std::filesystem;
using sumi::test::fixture;

namespace {

fs::path work() {
  const fs::path dir = fs::path(SUMI_BUILD_DIR) / "tests" / "tools" / "dylora";
  fs::remove_all(dir);
  fs::create_directories(dir);
  return dir;
}

// Runs the tool in-process; returns {rc, or -1 when it threw; stdout + the error message}.
std::pair<int, std::string> run(std::vector<std::string> args) {
  struct Capture {
    std::ostringstream out;
    std::streambuf* old = std::cout.rdbuf(out.rdbuf());
    ~Capture() { std::cout.rdbuf(old); }
  } capture;
  int rc = -1;
  bool found = false;
  std::string err;
  try {
    found = sumi::app::tools::run_tool("extract_lora_from_dylora", args, rc);
  } catch (const std::exception& e) {
    err = e.what();
  }
  if (!found && err.empty()) err = "no tool extract_lora_from_dylora";
  return {rc, capture.out.str() + err};
}

std::map<std::string, at::Tensor> tensors(const std::string& path) {
  std::map<std::string, at::Tensor> out;
  for (auto& [k, t] : sumi::io::load_all(path)) out[k] = t;
  return out;
}

std::map<std::string, std::string> metadata(const std::string& path) { return sumi::io::SafetensorsFile::open(path)->metadata(); }

}  // namespace

TEST_CASE("extract_lora_from_dylora --unit 2 writes kohya's rank 2, 4, 6 files; rank 4 equals kohya's") {
  const fs::path dir = work();
  const std::string src = fixture("networks/tiny-sd1.dylora.safetensors");
  const auto [rc, text] = run({"--model", src, "--save_to", (dir / "cut.safetensors").string(), "--unit", "2"});
  INFO(text);
  REQUIRE(rc == 0);
  CHECK(text.find("Max rank: 8\n") != std::string::npos);
  CHECK(text.find("Splitting rank 6\n") != std::string::npos);
  for (const char* f : {"cut-0002.safetensors", "cut-0004.safetensors", "cut-0006.safetensors"}) CHECK(fs::exists(dir / f));
  CHECK_FALSE(fs::exists(dir / "cut-0008.safetensors"));

  const auto got = tensors((dir / "cut-0004.safetensors").string());
  const auto want = tensors(fixture("networks/tiny-sd1.dylora-0004.safetensors"));
  REQUIRE(got.size() == want.size());
  REQUIRE(got.size() == 630);
  for (const auto& [k, w] : want) {
    CAPTURE(k);
    REQUIRE(got.count(k));
    const at::Tensor& g = got.at(k);
    CHECK((g.scalar_type() == at::kHalf));  // dtype kept
    CHECK(g.sizes().vec() == w.sizes().vec());
    CHECK(at::equal(g, w));
  }
  // Metadata as kohya writes it, its (previous split's) hashes included.
  CHECK(metadata((dir / "cut-0004.safetensors").string()) == metadata(fixture("networks/tiny-sd1.dylora-0004.safetensors")));
  // The first split carries the source's hashes; alpha is copied, not rescaled.
  const auto first = metadata((dir / "cut-0002.safetensors").string());
  CHECK(first.at("sshs_model_hash") == metadata(src).at("sshs_model_hash"));
  CHECK(first.at("ss_network_dim") == "2");
  CHECK(first.at("ss_training_comment") == "split from DyLoRA, rank 8 to 2; ");
  const auto two = tensors((dir / "cut-0002.safetensors").string());
  const auto full = tensors(src);
  const std::string m = "lora_unet_down_blocks_0_attentions_0_proj_in";
  CHECK(two.at(m + ".lora_down.weight").size(0) == 2);
  CHECK(at::equal(two.at(m + ".lora_up.weight"), full.at(m + ".lora_up.weight").slice(1, 0, 2)));
  CHECK(at::equal(two.at(m + ".alpha"), full.at(m + ".alpha")));
}

TEST_CASE("extract_lora_from_dylora refuses what would write nothing or the wrong thing") {
  const fs::path dir = work();
  const std::string src = fixture("networks/tiny-sd1.dylora.safetensors");
  const std::string out = (dir / "cut.safetensors").string();
  CHECK(run({"--model", src, "--save_to", out}).second.find("--unit is required") != std::string::npos);
  CHECK(run({"--model", src, "--save_to", out, "--unit", "8"}).second.find("leaves no rank below the file's rank 8") != std::string::npos);
  CHECK(run({"--model", src, "--save_to", out, "--unit", "0"}).second.find("at least 1") != std::string::npos);
  CHECK(run({"--model", src, "--save_to", (dir / "cut.ckpt").string(), "--unit", "2"}).second.find(".safetensors") != std::string::npos);
  CHECK(run({"--model", fixture("networks/tiny-sd1.oft.safetensors"), "--save_to", out, "--unit", "2"}).second.find("no lora_down") !=
        std::string::npos);
  CHECK(run({"--model", (dir / "missing.safetensors").string(), "--save_to", out, "--unit", "2"}).second.find("does not exist") !=
        std::string::npos);
  CHECK(fs::is_empty(dir));
}
