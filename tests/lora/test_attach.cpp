// Which modules the lora network wraps and the tensors it creates, against the key lists that
// sd-scripts' own networks/lora.py produced for the tiny fixture models.
#include <doctest/doctest.h>

#include "lora_test_util.h"

#include "core/error.h"

#include <algorithm>

using sumi::test::Attached;
using sumi::test::attach_lora;
using sumi::test::fixture;
using sumi::test::read_key_list;
using sumi::test::saved_key_list;

namespace {

std::vector<std::string> expected(const std::string& file, const std::string& only_prefix = "") {
  auto keys = read_key_list(fixture(file));
  if (!only_prefix.empty())
    keys.erase(std::remove_if(keys.begin(), keys.end(), [&](const std::string& k) { return k.rfind(only_prefix, 0) != 0; }),
               keys.end());
  std::sort(keys.begin(), keys.end());
  return keys;
}

void check_same(const std::vector<std::string>& got, const std::vector<std::string>& want) {
  CHECK(got.size() == want.size());
  for (size_t i = 0; i < std::min(got.size(), want.size()); ++i) {
    if (got[i] != want[i]) {
      CHECK_MESSAGE(got[i] == want[i], "first difference at line " << i);
      return;
    }
  }
}

int64_t count_selected(const Attached& a) { return std::count(a.selected.begin(), a.selected.end(), 1); }

const sumi::host::RegistryEntry* entry(const Attached& a, const std::string& name) {
  return a.registry.find("network", name);
}

std::string attach_error(const sumi::test::ModuleList& modules, const std::map<std::string, std::string>& cfg) {
  try {
    attach_lora(modules, cfg);
  } catch (const std::exception& e) {
    return e.what();
  }
  return "";
}

std::string join(const std::vector<int>& v) {
  std::string s;
  for (size_t i = 0; i < v.size(); ++i) s += (i ? "," : "") + std::to_string(v[i]);
  return s;
}

}  // namespace

TEST_CASE("lora: LierLa and C3Lier keys of tiny-sd1 and tiny-sd2v equal sd-scripts' lists") {
  for (const std::string model : {"tiny-sd1", "tiny-sd2v"}) {
    CAPTURE(model);
    auto& mods = sumi::test::tiny_sd(model);
    auto lierla = attach_lora(mods, {{"dim", "4"}, {"alpha", "2"}});
    check_same(saved_key_list(*lierla), expected(model + ".lora_keys.lierla.txt"));
    CHECK(count_selected(*lierla) == 210);

    auto c3lier = attach_lora(mods, {{"dim", "4"}, {"alpha", "2"}, {"conv_dim", "4"}, {"conv_alpha", "1"}});
    check_same(saved_key_list(*c3lier), expected(model + ".lora_keys.c3lier.txt"));
  }
}

TEST_CASE("lora: SDXL (SGM U-Net names, two text encoders) equals sd-scripts' lists") {
  auto& mods = sumi::test::tiny_sdxl();
  auto lierla = attach_lora(mods, {{"dim", "4"}, {"alpha", "2"}});
  check_same(saved_key_list(*lierla), expected("tiny-sdxl.lora_keys.lierla.txt"));
  auto c3lier = attach_lora(mods, {{"dim", "4"}, {"alpha", "2"}, {"conv_dim", "4"}, {"conv_alpha", "1"}});
  check_same(saved_key_list(*c3lier), expected("tiny-sdxl.lora_keys.c3lier.txt"));
  // conv_in, conv_out and the time/label embeddings stay unwrapped even in C3Lier.
  for (const char* name : {"lora_unet_input_blocks_0_0", "lora_unet_out_2", "lora_unet_time_embed_0", "lora_unet_label_emb_0_0"})
    CHECK_MESSAGE(!c3lier->selected[mods.index(name)], name);
  // kohya's creation order: text encoder 1, text encoder 2, U-Net (the model listed the U-Net first).
  auto entries = c3lier->registry.entries();
  REQUIRE(!entries.empty());
  CHECK(entries.front().name.rfind("lora_te1_", 0) == 0);
  CHECK(entries.back().name.rfind("lora_unet_", 0) == 0);
  auto first_te2 = std::find_if(entries.begin(), entries.end(), [](auto& e) { return e.name.rfind("lora_te2_", 0) == 0; });
  CHECK(std::none_of(first_te2, entries.end(), [](auto& e) { return e.name.rfind("lora_te1_", 0) == 0; }));
}

TEST_CASE("lora: parameters, groups, alpha state and initialisation") {
  at::manual_seed(7);
  auto& mods = sumi::test::tiny_sd("tiny-sd1");
  auto a = attach_lora(mods, {{"dim", "4"}, {"alpha", "2"}, {"conv_dim", "8"}, {"conv_alpha", "3"}});
  const auto* te_down = entry(*a, "lora_te_text_model_encoder_layers_0_mlp_fc1.lora_down.weight");
  const auto* te_alpha = entry(*a, "lora_te_text_model_encoder_layers_0_mlp_fc1.alpha");
  const auto* un_up = entry(*a, "lora_unet_down_blocks_0_attentions_0_proj_in.lora_up.weight");
  const auto* conv_down = entry(*a, "lora_unet_down_blocks_0_resnets_0_conv1.lora_down.weight");
  const auto* conv_alpha = entry(*a, "lora_unet_down_blocks_0_resnets_0_conv1.alpha");
  const auto* temb_alpha = entry(*a, "lora_unet_down_blocks_0_resnets_0_time_emb_proj.alpha");
  REQUIRE((te_down && te_alpha && un_up && conv_down && conv_alpha && temb_alpha));
  CHECK(te_down->group == "text_encoder");
  CHECK(te_down->trainable);
  CHECK(un_up->group == "unet");
  CHECK(!te_alpha->trainable);
  CHECK(te_alpha->tensor.dim() == 0);
  CHECK(te_alpha->tensor.item<double>() == 2.0);
  CHECK(conv_alpha->tensor.item<double>() == 3.0);
  CHECK(temb_alpha->tensor.item<double>() == 2.0);  // Linear inside a ResNet block: network dim/alpha
  CHECK(conv_down->tensor.sizes() == at::IntArrayRef({8, 32, 3, 3}));
  // lora_up starts at zero; lora_down is kaiming_uniform(a=sqrt(5)): U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
  CHECK(un_up->tensor.abs().max().item<double>() == 0.0);
  for (const auto* e : {te_down, conv_down}) {
    const auto& w = e->tensor;
    const double bound = 1.0 / std::sqrt(static_cast<double>(w.numel() / w.size(0)));
    CHECK(w.abs().max().item<double>() <= bound);
    CHECK(w.abs().max().item<double>() > 0.8 * bound);
    // U(-b, b) has standard deviation b / sqrt(3).
    CHECK(w.std().item<double>() == doctest::Approx(bound / std::sqrt(3.0)).epsilon(0.2));
  }
}

TEST_CASE("lora: alpha 0 means alpha = rank") {
  auto a = attach_lora(sumi::test::tiny_sd("tiny-sd1"), {{"dim", "4"}, {"alpha", "0"}});
  CHECK(entry(*a, "lora_te_text_model_encoder_layers_0_mlp_fc1.alpha")->tensor.item<double>() == 4.0);
}

TEST_CASE("lora: train_unet_only and train_text_encoder_only") {
  auto& mods = sumi::test::tiny_sd("tiny-sd1");
  auto unet = attach_lora(mods, {{"dim", "4"}, {"alpha", "2"}, {"train_unet_only", "true"}});
  check_same(saved_key_list(*unet), expected("tiny-sd1.lora_keys.lierla.txt", "lora_unet_"));
  auto te = attach_lora(mods, {{"dim", "4"}, {"alpha", "2"}, {"train_text_encoder_only", "true"}});
  check_same(saved_key_list(*te), expected("tiny-sd1.lora_keys.lierla.txt", "lora_te_"));
  CHECK(attach_error(mods, {{"train_unet_only", "true"}, {"train_text_encoder_only", "true"}}).find("both") !=
        std::string::npos);
}

TEST_CASE("lora: block_dims / block_alphas / conv_block_dims follow kohya's block numbering") {
  auto& mods = sumi::test::tiny_sd("tiny-sd1");
  // Blocks: 0 unused, 1-11 down (3 per level: two resnets/attentions + the downsampler),
  // 12 mid, 13-24 up.
  std::vector<int> dims(25, 4);
  dims[1] = 8;   // down_blocks_0 attentions_0 / resnets_0
  dims[12] = 0;  // the mid block: left out
  dims[24] = 2;  // up_blocks_3 attentions_2 / resnets_2
  std::string alphas = "1";
  for (int i = 1; i < 25; ++i) alphas += i == 1 ? ",5" : ",1";
  auto a = attach_lora(mods, {{"dim", "16"}, {"alpha", "2"}, {"block_dims", join(dims)}, {"block_alphas", alphas}});
  auto shape = [&](const std::string& n) { return entry(*a, n)->tensor.sizes().vec(); };
  CHECK(shape("lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight") == std::vector<int64_t>{8, 32, 1, 1});
  CHECK(entry(*a, "lora_unet_down_blocks_0_attentions_0_proj_in.alpha")->tensor.item<double>() == 5.0);
  CHECK(shape("lora_unet_down_blocks_0_attentions_1_proj_in.lora_down.weight") == std::vector<int64_t>{4, 32, 1, 1});
  CHECK(entry(*a, "lora_unet_down_blocks_0_attentions_1_proj_in.alpha")->tensor.item<double>() == 1.0);
  CHECK(shape("lora_unet_up_blocks_3_attentions_2_proj_out.lora_up.weight") == std::vector<int64_t>{32, 2, 1, 1});
  CHECK(entry(*a, "lora_unet_mid_block_attentions_0_proj_in.lora_down.weight") == nullptr);
  // Text encoders keep dim / alpha; no ResNet layers without a conv rank.
  CHECK(shape("lora_te_text_model_encoder_layers_0_mlp_fc1.lora_down.weight") == std::vector<int64_t>{16, 32});
  CHECK(entry(*a, "lora_unet_down_blocks_0_resnets_0_time_emb_proj.alpha") == nullptr);

  // conv_dim with block_dims gives every block conv_dim; conv_block_dims sets them one by one.
  auto c = attach_lora(mods, {{"block_dims", join(dims)}, {"conv_dim", "3"}});
  CHECK(entry(*c, "lora_unet_down_blocks_0_downsamplers_0_conv.lora_down.weight")->tensor.size(0) == 3);
  CHECK(entry(*c, "lora_unet_down_blocks_0_resnets_0_time_emb_proj.lora_down.weight")->tensor.size(0) == 8);
  std::vector<int> conv(25, 2);
  conv[3] = 0;  // down_blocks_0's downsampler
  conv[1] = 6;
  auto d = attach_lora(mods, {{"block_dims", join(dims)}, {"conv_block_dims", join(conv)}});
  CHECK(entry(*d, "lora_unet_down_blocks_0_downsamplers_0_conv.alpha") == nullptr);
  CHECK(entry(*d, "lora_unet_down_blocks_0_resnets_0_conv1.lora_down.weight")->tensor.size(0) == 6);
  CHECK(entry(*d, "lora_unet_down_blocks_0_resnets_0_conv1.alpha")->tensor.item<double>() == 1.0);  // conv_alpha default
  CHECK(entry(*d, "lora_unet_up_blocks_0_upsamplers_0_conv.lora_down.weight")->tensor.size(0) == 2);

  // Wrong lengths name the count the model needs.
  auto msg = attach_error(mods, {{"block_dims", "4,4,4"}});
  CHECK(msg.find("block_dims has 3 values") != std::string::npos);
  CHECK(msg.find("25") != std::string::npos);
  auto sdxl = attach_error(sumi::test::tiny_sdxl(), {{"block_dims", join(dims)}});
  CHECK(sdxl.find("needs 23") != std::string::npos);
}

TEST_CASE("lora: SDXL block_dims use the 23-block SGM numbering") {
  std::vector<int> dims(23, 4);
  dims[1 + 4] = 2;   // input_blocks_4
  dims[10 + 1] = 0;  // middle_block_1 (the transformer)
  auto a = attach_lora(sumi::test::tiny_sdxl(), {{"block_dims", join(dims)}});
  CHECK(entry(*a, "lora_unet_input_blocks_4_1_proj_in.lora_down.weight")->tensor.size(0) == 2);
  CHECK(entry(*a, "lora_unet_input_blocks_5_1_proj_in.lora_down.weight")->tensor.size(0) == 4);
  CHECK(entry(*a, "lora_unet_middle_block_1_proj_in.alpha") == nullptr);
}

TEST_CASE("lora: configuration errors say what is wrong") {
  auto& mods = sumi::test::tiny_sd("tiny-sd1");
  CHECK(attach_error(mods, {{"block_alphas", "1,2"}}).find("block_alphas is given without block_dims") != std::string::npos);
  CHECK(attach_error(mods, {{"conv_block_dims", "1,2"}}).find("conv_block_dims is given without block_dims") !=
        std::string::npos);
  CHECK(attach_error(mods, {{"rank_dropout", "1"}}).find("rank_dropout") != std::string::npos);
  CHECK(attach_error(mods, {{"dropout", "-0.1"}}).find("dropout") != std::string::npos);
  CHECK(attach_error(mods, {{"dim", "0"}}).find("dim is 0") != std::string::npos);
  CHECK(attach_error(mods, {{"conv_dim", "-3"}}).find("conv_dim") != std::string::npos);
}

TEST_CASE("lora: conv_dim 0 opens the ResNet blocks but wraps only their Linear / 1x1 layers, as kohya") {
  auto& mods = sumi::test::tiny_sd("tiny-sd1");
  auto a = attach_lora(mods, {{"dim", "4"}, {"alpha", "2"}, {"conv_dim", "0"}});
  CHECK(entry(*a, "lora_unet_down_blocks_0_resnets_0_time_emb_proj.lora_down.weight") != nullptr);
  CHECK(entry(*a, "lora_unet_up_blocks_1_resnets_0_conv_shortcut.lora_down.weight") != nullptr);
  CHECK(entry(*a, "lora_unet_down_blocks_0_resnets_0_conv1.lora_down.weight") == nullptr);
  CHECK(entry(*a, "lora_unet_down_blocks_0_downsamplers_0_conv.lora_down.weight") == nullptr);
  // Unset (the default) leaves them all alone.
  auto b = attach_lora(mods, {{"dim", "4"}});
  CHECK(entry(*b, "lora_unet_down_blocks_0_resnets_0_time_emb_proj.lora_down.weight") == nullptr);
  CHECK(!b->selected[mods.index("lora_unet_time_embedding_linear_1")]);
}
