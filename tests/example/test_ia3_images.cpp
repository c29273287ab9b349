// Checks the images test_example_plugin made with the out-of-tree (IA)^3 network
// (examples/ia3-network), trained and loaded by the installed sumi: merging the network
// (weight_delta and bias_delta) gives the runtime image within 1/255, and the network changes
// the image.
#include "app/image_io.h"

#include <ATen/ATen.h>
#include <doctest/doctest.h>

#include <filesystem>

namespace {

at::Tensor only_image(const std::string& dir) {
  namespace fs = std::filesystem;
  std::vector<fs::path> files;
  for (const auto& e : fs::directory_iterator(fs::path(SUMI_EXAMPLE_WORK) / dir))
    if (e.path().extension() == ".png") files.push_back(e.path());
  REQUIRE(files.size() == 1);
  return sumi::app::read_image(files[0].string()).to(at::kInt);
}

}  // namespace

TEST_CASE("the example (IA)^3 network: merged == runtime within 1/255, and it changes the image") {
  const at::Tensor base = only_image("img-base");
  const at::Tensor runtime = only_image("img-runtime");
  const at::Tensor merged = only_image("img-merged");
  REQUIRE(runtime.sizes() == merged.sizes());
  const int64_t merged_off = (runtime - merged).abs().max().item<int64_t>();
  const int64_t network_effect = (runtime - base).abs().max().item<int64_t>();
  CAPTURE(merged_off);
  CAPTURE(network_effect);
  CHECK(merged_off <= 1);
  CHECK(network_effect > 4);
}
