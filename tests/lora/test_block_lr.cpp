// kohya's block-wise learning-rate weights of networks/lora.py (down_lr_weight, mid_lr_weight,
// up_lr_weight, block_lr_zero_threshold): the lora plugin puts each U-Net block's modules in a
// group "unet_blockNN" and gives the host the block's weight as the group's lr scale.
#include <doctest/doctest.h>

#include "../common/kohya_blocks.h"
#include "lora_test_util.h"

#include "core/error.h"

#include <map>
#include <regex>
#include <stdexcept>

using sumi::test::attach_lora;
using sumi::test::tiny_sd;

namespace {

using sumi::test::kohya_block;

// The group of every registered U-Net parameter and the lr scale the registry holds for it.
struct Seen {
  std::map<std::string, double> scale;        // group -> scale
  std::map<std::string, std::string> group_of; // parameter name -> group
};

Seen groups(const std::map<std::string, std::string>& config) {
  auto cfg = config;
  cfg["conv_dim"] = "2";  // C3Lier: every block 1..24 of tiny-sd1 has modules
  auto a = attach_lora(tiny_sd("tiny-sd1"), cfg);
  Seen s;
  for (const auto& e : a->registry.entries()) {
    if (!e.trainable) continue;
    s.group_of[e.name] = e.group;
    s.scale[e.group] = a->registry.lr_scale("network", e.group);
  }
  return s;
}

// Block -> the scale of its group, checking every U-Net module of that block is in "unet_blockNN".
std::map<int, double> block_scales(const Seen& s) {
  std::map<int, double> out;
  for (const auto& [name, group] : s.group_of) {
    if (name.rfind("lora_unet_", 0) != 0) {
      CHECK(group == "text_encoder");
      continue;
    }
    const int b = kohya_block(name);
    REQUIRE(b >= 1);
    char want[32];
    std::snprintf(want, sizeof want, "unet_block%02d", b);
    CAPTURE(name);
    CHECK(group == want);
    out[b] = s.scale.at(group);
  }
  return out;
}

// Python's values of kohya's get_list (math.sin / i / 11), printed with repr.
const std::vector<double> kCosine = {1.0, 0.9898214418809327, 0.9594929736144974, 0.9096319953545183, 0.8412535328311811, 0.7557495743542583,
                                     0.654860733945285, 0.5406408174555976, 0.4154150130018864, 0.28173255684142967, 0.14231483827328514, 0.0};
const std::vector<double> kSinePlusHalf = {0.5, 0.6423148382732852, 0.7817325568414297, 0.9154150130018863, 1.0406408174555977, 1.154860733945285,
                                           1.2557495743542582, 1.341253532831181, 1.4096319953545184, 1.4594929736144975, 1.4898214418809328, 1.5};
const std::vector<double> kLinear = {0.0, 0.09090909090909091, 0.18181818181818182, 0.2727272727272727, 0.36363636363636365, 0.45454545454545453,
                                     0.5454545454545454, 0.6363636363636364, 0.7272727272727273, 0.8181818181818182, 0.9090909090909091, 1.0};
const std::vector<double> kReverseLinearPlusQuarter = {1.25, 1.1590909090909092, 1.0681818181818183, 0.9772727272727273, 0.8863636363636364, 0.7954545454545454,
                                                       0.7045454545454546, 0.6136363636363636, 0.5227272727272727, 0.4318181818181818, 0.34090909090909094, 0.25};

void check_side(const std::map<int, double>& scales, int first_block, const std::vector<double>& want) {
  // down: list index = block number (index 0 has no modules); up: index = block - 13.
  for (const auto& [b, scale] : scales) {
    const int i = b - first_block;
    if (i < 0 || i >= 12 || (first_block == 0 && b >= 12)) continue;
    CAPTURE(b);
    CHECK(scale == doctest::Approx(want[static_cast<size_t>(i)]).epsilon(1e-14));
  }
}

}  // namespace

TEST_CASE("lora block lr weights: no weights, one U-Net group as before") {
  const Seen s = groups({});
  CHECK(s.scale.size() == 2);
  CHECK(s.scale.count("unet"));
  CHECK(s.scale.count("text_encoder"));
  CHECK(s.scale.at("unet") == 1.0);
}

TEST_CASE("lora block lr weights: presets with and without +offset equal kohya's lists") {
  {
    const auto scales = block_scales(groups({{"down_lr_weight", "cosine"}, {"up_lr_weight", "sine+0.5"}}));
    REQUIRE(scales.size() == 24);
    check_side(scales, 0, kCosine);
    check_side(scales, 13, kSinePlusHalf);
    CHECK(scales.at(12) == 1.0);  // mid not given: 1
  }
  {
    // kohya's threshold cuts values not above it; linear's first values are 0 and 1/11 — use the
    // default threshold 0, so only exact 0 is cut (block 0 has no modules).
    const auto scales = block_scales(groups({{"down_lr_weight", "linear"}, {"up_lr_weight", "reverse_linear+0.25"}, {"mid_lr_weight", "0.75"}}));
    check_side(scales, 0, kLinear);
    check_side(scales, 13, kReverseLinearPlusQuarter);
    CHECK(scales.at(12) == 0.75);
  }
  {
    const auto scales = block_scales(groups({{"up_lr_weight", "zeros+0.3"}}));
    for (int b = 1; b <= 12; ++b) CHECK(scales.at(b) == 1.0);  // down and mid not given
    for (int b = 13; b <= 24; ++b) CHECK(scales.at(b) == doctest::Approx(0.3).epsilon(1e-15));
  }
}

TEST_CASE("lora block lr weights: lists (empty entries 0, short lists filled with 1) and block_lr_zero_threshold") {
  const auto scales = block_scales(groups({{"down_lr_weight", "0.5,,2"},
                                           {"mid_lr_weight", "0.25"},
                                           {"up_lr_weight", "0.1, 0.2, 0.3"},
                                           {"block_lr_zero_threshold", "0.2"}}));
  CHECK(scales.at(1) == 0.0);  // '' -> 0
  CHECK(scales.at(2) == 2.0);
  for (int b = 3; b <= 11; ++b) CHECK(scales.at(b) == 1.0);
  CHECK(scales.at(12) == 0.25);
  CHECK(scales.at(13) == 0.0);  // 0.1 <= 0.2
  CHECK(scales.at(14) == 0.0);  // 0.2 is not above 0.2
  CHECK(scales.at(15) == 0.3);
  for (int b = 16; b <= 24; ++b) CHECK(scales.at(b) == 1.0);
  // the mid weight is cut by the threshold too
  CHECK(block_scales(groups({{"mid_lr_weight", "0.2"}, {"block_lr_zero_threshold", "0.2"}})).at(12) == 0.0);
}

TEST_CASE("lora block lr weights: bad values are refused naming the key") {
  auto refused = [](const std::map<std::string, std::string>& cfg, const std::string& part) {
    try {
      groups(cfg);
      FAIL("accepted");
    } catch (const std::exception& e) {
      CAPTURE(e.what());
      CHECK(std::string(e.what()).find(part) != std::string::npos);
    }
  };
  refused({{"down_lr_weight", "wave"}}, "down_lr_weight is 'wave'");
  refused({{"up_lr_weight", "0.5"}}, "up_lr_weight is '0.5'");  // one value needs a comma, as in kohya
  refused({{"up_lr_weight", "sine+x"}}, "up_lr_weight (the +offset)");
  refused({{"down_lr_weight", "1,1,1,1,1,1,1,1,1,1,1,1,1"}}, "down_lr_weight has 13 values");
  refused({{"mid_lr_weight", "half"}}, "mid_lr_weight");
  refused({{"block_lr_zero_threshold", "0.1"}}, "block_lr_zero_threshold is given without");
  refused({{"down_lr_weight", "sine"}, {"train_text_encoder_only", "true"}}, "train_text_encoder_only");
}

TEST_CASE("lora block lr weights: refused on SDXL, whose names have no kohya LoRA block numbers") {
  try {
    attach_lora(sumi::test::tiny_sdxl(), {{"down_lr_weight", "sine"}});
    FAIL("accepted");
  } catch (const std::exception& e) {
    CHECK(std::string(e.what()).find("SDXL") != std::string::npos);
  }
}
