// CLIP text encoders of the three tiny models against transformers' outputs.
#include <doctest/doctest.h>

#include "nn/clip_text.h"
#include "nn_test_util.h"

using namespace sumi::nn;
using namespace sumi::nn::test;

namespace {

void check_encoder(const std::string& model, const std::string& folder, const std::string& g,
                   const std::string& ids_key) {
  auto config = ClipTextConfig::from_diffusers_json(fixture(model + "/" + folder + "/config.json"));
  ClipTextModel te(config);
  load_weights(te, load_f32(fixture(model + "/" + folder + "/model.safetensors")));
  te.eval();
  at::NoGradGuard no_grad;
  auto ids = golden(model, ids_key).to(at::kLong);
  auto out = te.forward(ids);
  const double tol = 1e-4;
  CAPTURE(model);
  CAPTURE(folder);
  CHECK(rel_err(out.last_hidden_state, golden(model, g + ".last_hidden_state")) < tol);
  const auto n = static_cast<int64_t>(out.hidden_states.size());
  REQUIRE(n == config.num_hidden_layers + 1);
  auto all = golden(model, g + ".hidden_states");
  for (int64_t i = 0; i < n; ++i) {
    CAPTURE(i);
    CHECK(rel_err(out.hidden_states[i], all[i]) < tol);
  }
  CHECK(rel_err(out.hidden_states[n - 2], golden(model, g + ".penultimate")) < tol);
  CHECK(rel_err(te.final_layer_norm(out.hidden_states[n - 2]), golden(model, g + ".penultimate_ln")) < tol);
  CHECK(rel_err(out.pooled, golden(model, g + ".pooled")) < tol);
  if (config.projection_dim > 0)
    CHECK(rel_err(out.text_embeds, golden(model, g + ".text_embeds")) < tol);
  else
    CHECK_FALSE(out.text_embeds.defined());
}

}  // namespace

TEST_CASE("clip: tiny-sd1 text encoder (OpenAI CLIP, quick_gelu) matches transformers") {
  check_encoder("tiny-sd1", "text_encoder", "te", "tok.ids_77");
}

TEST_CASE("clip: tiny-sd2v text encoder (OpenCLIP, gelu) matches transformers") {
  check_encoder("tiny-sd2v", "text_encoder", "te", "tok.ids_77");
}

TEST_CASE("clip: tiny-sdxl text encoders (te1 and te2 with projection) match transformers") {
  check_encoder("tiny-sdxl", "text_encoder", "te", "tok.ids_77");
  check_encoder("tiny-sdxl", "text_encoder_2", "te2", "tok2.ids_77");
}

TEST_CASE("clip: rejects ids longer than the position table") {
  ClipTextConfig c;
  c.hidden_size = 8;
  c.num_attention_heads = 2;
  c.intermediate_size = 16;
  c.num_hidden_layers = 1;
  c.vocab_size = 10;
  c.max_position_embeddings = 4;
  ClipTextModel te(c);
  CHECK_THROWS_WITH_AS(te.forward(at::zeros({1, 5}, at::kLong)), doctest::Contains("length <= 4"),
                       std::invalid_argument);
}
