// The model plugin's prompt_weighting mode (gen_img's long, weighted prompts) on the fixtures:
// a plain short prompt is encoded exactly as without it, long prompts become several 77-token
// chunks side by side, emphasis changes the conditioning and a weight of 1 does not.
#include <doctest/doctest.h>

#include <cmath>
#include <string>
#include <utility>
#include <vector>

#include "models_test_util.h"
#include "sd_model.h"

using namespace sumi::test;

namespace {

const std::map<std::string, std::string> kWeighted = {{"prompt_weighting", "true"}};

// About 6 tokens per repetition: 20 of them are more than 75 tokens and less than 150.
std::string long_prompt(const std::string& tail) {
  std::string p;
  for (int i = 0; i < 20; ++i) p += "a photo of a cat, ";
  return p + tail;
}

at::Tensor max_abs_diff(const at::Tensor& a, const at::Tensor& b) { return (a - b).abs().max(); }

bool same(const at::Tensor& a, const at::Tensor& b) {
  return a.sizes() == b.sizes() && max_abs_diff(a, b).item<double>() <= 1e-6;
}

}  // namespace

TEST_CASE("prompt weighting: a plain short prompt is encoded exactly as without it") {
  const std::vector<std::pair<std::string, std::string>> models = {
      {"sd1", "tiny-sd1.safetensors"}, {"sd2", "tiny-sd2v.safetensors"}, {"sdxl", "tiny-sdxl.safetensors"}};
  for (const auto& model : models) {
    const std::string& family = model.first;
    CAPTURE(family);
    auto plain = load_model(family, fixture(model.second));
    auto weighted = load_model(family, fixture(model.second), kWeighted);
    at::NoGradGuard no_grad;
    const std::vector<std::string> prompts = {"a photo of a cat", "a dog, sitting on grass", ""};
    auto [pc, pp] = plain->encode_text(prompts);
    auto [wc, wp] = weighted->encode_text(prompts);
    CHECK(pc.sizes() == wc.sizes());
    CHECK(same(pc, wc));
    CHECK(pp.defined() == wp.defined());
    if (pp.defined()) CHECK(same(pp, wp));
  }
}

TEST_CASE("prompt weighting: sd1 long prompts are two chunks and the tokens past 75 count") {
  auto plain = load_model("sd1", fixture("tiny-sd1.safetensors"));
  auto weighted = load_model("sd1", fixture("tiny-sd1.safetensors"), kWeighted);
  at::NoGradGuard no_grad;
  auto [pc, pp] = plain->encode_text({long_prompt("a red hat")});
  auto [wc, wp] = weighted->encode_text({long_prompt("a red hat")});
  const int64_t channels = pc.size(2);
  CHECK(pc.sizes() == at::IntArrayRef({1, 77, channels}));  // plain mode still truncates
  CHECK(wc.sizes() == at::IntArrayRef({1, 154, channels}));
  CHECK_FALSE(wp.defined());
  // Chunk 0 is BOS + the first 75 tokens + EOS, the ids the plain encoding truncates to; with
  // every weight 1 the rescale is exactly 1, so the first 77 positions are the plain encoding.
  CHECK(same(wc.narrow(1, 0, 77), pc));
  // The second chunk carries the tail: a different tail changes it, not the first chunk.
  auto [other, unused] = weighted->encode_text({long_prompt("a blue bird")});
  // This prompt's conditioning has a mean of exactly 0 on this fixture (the rescale once made it NaN).
  CHECK_FALSE(other.isnan().any().item<bool>());
  CHECK(same(other.narrow(1, 0, 77), wc.narrow(1, 0, 77)));
  CHECK(max_abs_diff(other.narrow(1, 77, 77), wc.narrow(1, 77, 77)).item<double>() > 1e-4);

  // One chunk count for all the prompts of a call.
  auto [batch, unused2] = weighted->encode_text({"a cat", long_prompt("a red hat")});
  CHECK(batch.sizes() == at::IntArrayRef({2, 154, channels}));
  CHECK(rel_err(batch.narrow(0, 1, 1), wc) < 1e-5);

  // no_boseos_middle drops chunk 0's EOS and chunk 1's BOS: 75 * 2 + 2 positions.
  auto nbm = load_model("sd1", fixture("tiny-sd1.safetensors"), {{"prompt_weighting", "true"}, {"no_boseos_middle", "true"}});
  auto [nc, unused3] = nbm->encode_text({long_prompt("a red hat")});
  CHECK(nc.sizes() == at::IntArrayRef({1, 152, channels}));
  CHECK(same(nc.narrow(1, 0, 76), wc.narrow(1, 0, 76)));
  CHECK(same(nc.narrow(1, 76, 76), wc.narrow(1, 78, 76)));
}

TEST_CASE("prompt weighting: the emphasis rescale keeps the mean, and a zero mean gives no NaN") {
  using sumi::sd::apply_prompt_weights;
  // Row 0: any embeddings and weights; the mean over positions and channels is restored.
  at::Tensor emb0 = at::tensor({0.5, -0.25, 1.0, 2.0, -1.5, 0.75}, at::kFloat).view({1, 3, 2});
  at::Tensor w0 = at::tensor({1.0, 1.5, 0.5}, at::kDouble).view({1, 3});
  at::Tensor scaled = emb0 * w0.to(at::kFloat).unsqueeze(-1);
  at::Tensor want0 = scaled * (emb0.mean() / scaled.mean());
  at::Tensor got0 = apply_prompt_weights(emb0, w0);
  CHECK(same(got0, want0));
  CHECK(std::abs(got0.mean().item<double>() - emb0.mean().item<double>()) < 1e-6);
  // Row 1: a mean of exactly 0 with every weight 1 was 0 / 0: the embeddings come back as they are.
  at::Tensor emb1 = at::tensor({1.0, -1.0, 2.0, -2.0, 0.5, -0.5}, at::kFloat).view({1, 3, 2});
  at::Tensor ones = at::ones({1, 3}, at::kDouble);
  at::Tensor got1 = apply_prompt_weights(emb1, ones);
  CHECK(at::equal(got1, emb1));
  // A weighted mean of exactly 0 from a non-zero mean was x / 0 (inf): left as weighted.
  at::Tensor emb2 = at::tensor({3.0, 3.0, -1.0, -1.0, 0.0, 0.0}, at::kFloat).view({1, 3, 2});
  at::Tensor w2 = at::tensor({1.0, 3.0, 1.0}, at::kDouble).view({1, 3});
  CHECK(at::equal(apply_prompt_weights(emb2, w2), emb2 * w2.to(at::kFloat).unsqueeze(-1)));
  // Each prompt of a batch on its own: a zero-mean row does not touch the others.
  at::Tensor batch = apply_prompt_weights(at::cat({emb0, emb1}), at::cat({w0, ones}));
  CHECK_FALSE(batch.isnan().any().item<bool>());
  CHECK(same(batch.narrow(0, 0, 1), want0));
  CHECK(at::equal(batch.narrow(0, 1, 1), emb1));
}

TEST_CASE("prompt weighting: emphasis changes the conditioning, a weight of 1 does not") {
  auto m = load_model("sd1", fixture("tiny-sd1.safetensors"), kWeighted);
  at::NoGradGuard no_grad;
  auto base = m->encode_text({"a photo of a cat"}).first;
  CHECK(same(m->encode_text({"a photo of a (cat:1.0)"}).first, base));
  auto up = m->encode_text({"a photo of a (cat:1.5)"}).first;
  CHECK(up.sizes() == base.sizes());
  CHECK(max_abs_diff(up, base).item<double>() > 1e-3);
  // (The rescale formula is checked on SDXL below: this fixture's conditioning, a final layer
  // norm's output, has a mean of about 1e-8, which makes sd-scripts' mean ratio ill-conditioned.)
  CHECK(max_abs_diff(m->encode_text({"a photo of a [cat]"}).first, base).item<double>() > 1e-4);

  std::string error;
  try {
    m->encode_text({"a (cat:1.2.3)"});
  } catch (const std::exception& e) {
    error = e.what();
  }
  CHECK(error.find("a (cat:1.2.3)") != std::string::npos);  // names the prompt
}

TEST_CASE("prompt weighting: sd2 and sdxl long prompts, sdxl pooled from the first chunk") {
  {
    auto plain = load_model("sd2", fixture("tiny-sd2v.safetensors"));
    auto m = load_model("sd2", fixture("tiny-sd2v.safetensors"), kWeighted);
    at::NoGradGuard no_grad;
    auto pc = plain->encode_text({long_prompt("a red hat")}).first;
    auto wc = m->encode_text({long_prompt("a red hat")}).first;
    CHECK(wc.sizes() == at::IntArrayRef({1, 154, pc.size(2)}));
    CHECK(same(wc.narrow(1, 0, 77), pc));
  }
  auto plain = load_model("sdxl", fixture("tiny-sdxl.safetensors"));
  auto m = load_model("sdxl", fixture("tiny-sdxl.safetensors"), kWeighted);
  at::NoGradGuard no_grad;
  auto [pc, pp] = plain->encode_text({long_prompt("a red hat")});
  auto [wc, wp] = m->encode_text({long_prompt("a red hat")});
  CHECK(wc.sizes() == at::IntArrayRef({1, 154, pc.size(2)}));
  REQUIRE(wp.defined());
  CHECK(wp.sizes() == at::IntArrayRef({1, 24}));
  CHECK(same(wc.narrow(1, 0, 77), pc));
  CHECK(same(wp, pp));
  // Emphasis on SDXL: both encoders' halves change.
  auto base = m->encode_text({"a photo of a cat"}).first;
  auto up = m->encode_text({"a photo of a (cat:1.5)"}).first;
  CHECK(max_abs_diff(up, base).item<double>() > 1e-3);
  // The formula, per encoder: cat (position 5 after BOS a photo of a) times 1.5, then every
  // position times the ratio of the means before and after (emb_normalize_mode "original").
  const int64_t c1 = golden("tiny-sdxl", "te.penultimate").size(-1);
  at::Tensor w = at::ones({1, base.size(1), 1});
  w[0][5][0] = 1.5;
  for (auto [from, width] : {std::pair<int64_t, int64_t>{0, c1}, {c1, base.size(2) - c1}}) {
    const at::Tensor half = base.narrow(-1, from, width);
    const at::Tensor scaled = half * w;
    const at::Tensor expected = scaled * (half.mean() / scaled.mean());
    CHECK(rel_err(up.narrow(-1, from, width), expected) < 1e-4);
  }
}

TEST_CASE("prompt weighting: max_embeddings_multiples 1 truncates to 77 tokens") {
  auto plain = load_model("sd1", fixture("tiny-sd1.safetensors"));
  auto m = load_model("sd1", fixture("tiny-sd1.safetensors"),
                      {{"prompt_weighting", "true"}, {"max_embeddings_multiples", "1"}});
  at::NoGradGuard no_grad;
  auto pc = plain->encode_text({long_prompt("a red hat")}).first;
  auto wc = m->encode_text({long_prompt("a red hat")}).first;
  CHECK(wc.sizes() == pc.sizes());
  CHECK(same(wc, pc));
  CHECK(load_error("sd1", fixture("tiny-sd1.safetensors"), {{"prompt_weighting", "true"}, {"max_embeddings_multiples", "0"}})
            .find("max_embeddings_multiples") != std::string::npos);
}
