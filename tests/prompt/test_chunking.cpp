// Token weights and 75-token chunks with the real CLIP tokenizer, checked against the layout
// sd-scripts builds (get_prompts_with_weights, pad_tokens_and_weights, and the per-chunk BOS/EOS
// fix-ups of get_unweighted_text_embeddings), for SD1 (pad = EOS) and SD2 (pad = "!").
#include <doctest/doctest.h>

#include <stdexcept>
#include <string>
#include <vector>

#include "sd_common/tokenizer/clip_tokenizer.h"
#include "sd_common/prompt/chunking.h"

using namespace sumi::prompt;
using sumi::sd::ClipTokenizer;

namespace {

constexpr int kBos = 49406;
constexpr int kEos = 49407;

TokenizerSpec spec_for(const ClipTokenizer& tok) {
  TokenizerSpec s;
  s.tokenize = [&tok](std::string_view text) { return tok.encode(text); };
  s.bos = tok.bos();
  s.eos = tok.eos();
  s.pad = tok.pad_id();
  return s;
}

std::vector<int> slice(const std::vector<int>& v, size_t a, size_t b) {
  return {v.begin() + static_cast<std::ptrdiff_t>(a), v.begin() + static_cast<std::ptrdiff_t>(b)};
}

std::vector<int> concat(std::initializer_list<std::vector<int>> parts) {
  std::vector<int> out;
  for (const auto& p : parts) out.insert(out.end(), p.begin(), p.end());
  return out;
}

// An 86+-token prompt without brackets: its ids are the tokenizer's ids of the whole text.
const std::string kLong =
    "a highly detailed oil painting of a lighthouse on a rocky cliff at dusk, crashing waves, "
    "stormy sky with dramatic clouds, seagulls, warm light from the lamp, reflections on wet "
    "stones, cinematic composition, volumetric fog, by a famous maritime painter, trending on "
    "artstation, masterpiece, best quality, ultra sharp focus, intricate textures, rich colors, "
    "a small wooden boat in the foreground, a red flag, distant mountains under moonlight";

}  // namespace

TEST_CASE("chunking: a short prompt is one 77-token chunk") {
  const auto& tok = ClipTokenizer::instance();
  auto framed = encode_pair("a photo of a cat", "", spec_for(tok));
  REQUIRE(framed.size() == 2);
  const auto& p = framed[0];
  CHECK(p.chunks == 1);
  std::vector<int> want(77, kEos);
  want[0] = kBos;
  std::vector<int> ids{320, 1125, 539, 320, 2368};
  std::copy(ids.begin(), ids.end(), want.begin() + 1);
  CHECK(p.chunk_ids == want);
  CHECK(p.sequence == want);
  CHECK(p.weights == std::vector<double>(77, 1.0));
  // The empty negative prompt: BOS then EOS padding.
  std::vector<int> empty(77, kEos);
  empty[0] = kBos;
  CHECK(framed[1].chunk_ids == empty);
}

TEST_CASE("chunking: a long prompt is split into framed 75-token chunks (SD1)") {
  const auto& tok = ClipTokenizer::instance();
  const std::vector<int> ids = tok.encode(kLong);
  REQUIRE(ids.size() >= 86);
  REQUIRE(ids.size() <= 150);
  const size_t n = ids.size();

  WeightedTokens wt = tokenize_weighted(kLong, spec_for(tok));
  CHECK(wt.ids == ids);
  CHECK(wt.weights == std::vector<double>(n, 1.0));
  CHECK_FALSE(wt.truncated);

  auto framed = frame({wt}, spec_for(tok));
  REQUIRE(framed.size() == 1);
  const auto& f = framed[0];
  CHECK(f.chunks == 2);
  // The whole sequence: BOS, ids, EOS, padding (EOS) to 75 * 2 + 2.
  std::vector<int> seq = concat({{kBos}, ids, {kEos}});
  seq.resize(152, kEos);
  CHECK(f.sequence == seq);
  // Chunk 0: BOS + ids[0:75] + EOS (the EOS overwrites ids[75]).
  std::vector<int> c0 = concat({{kBos}, slice(ids, 0, 75), {kEos}});
  // Chunk 1: BOS + ids[75:] + EOS + EOS padding to 77.
  std::vector<int> c1 = concat({{kBos}, slice(ids, 75, n), {kEos}});
  c1.resize(77, kEos);
  CHECK(f.chunk_ids == concat({c0, c1}));
  CHECK(f.weights == std::vector<double>(154, 1.0));
}

TEST_CASE("chunking: SD2 pads with '!' and closes each chunk as the reference does") {
  const auto& tok = ClipTokenizer::instance_pad_bang();
  REQUIRE(tok.pad_id() == 0);
  const std::vector<int> ids = tok.encode(kLong);
  const size_t n = ids.size();
  auto f = frame({tokenize_weighted(kLong, spec_for(tok))}, spec_for(tok))[0];
  CHECK(f.chunks == 2);
  std::vector<int> seq = concat({{kBos}, ids, {kEos}});
  seq.resize(152, 0);
  CHECK(f.sequence == seq);
  // Chunk 0 ends in text (ids[75]), which becomes EOS; chunk 1 keeps its EOS and "!" padding.
  std::vector<int> c0 = concat({{kBos}, slice(ids, 0, 75), {kEos}});
  std::vector<int> c1 = concat({{kBos}, slice(ids, 75, n), {kEos}});
  c1.resize(77, 0);
  CHECK(f.chunk_ids == concat({c0, c1}));
}

TEST_CASE("chunking: weighted runs are tokenized on their own and carry their weight") {
  const auto& tok = ClipTokenizer::instance();
  const std::string prompt = "a (red:1.3) cat, [blurry] ((sharp))";
  WeightedTokens wt = tokenize_weighted(prompt, spec_for(tok));
  const auto a = tok.encode("a ");
  const auto red = tok.encode("red");
  const auto cat = tok.encode(" cat, ");
  const auto blurry = tok.encode("blurry");
  const auto space = tok.encode(" ");
  const auto sharp = tok.encode("sharp");
  CHECK(space.empty());
  CHECK(wt.ids == concat({a, red, cat, blurry, sharp}));
  std::vector<double> w;
  w.insert(w.end(), a.size(), 1.0);
  w.insert(w.end(), red.size(), 1.3);
  w.insert(w.end(), cat.size(), 1.0);
  w.insert(w.end(), blurry.size(), 1 / 1.1);
  w.insert(w.end(), sharp.size(), 1.1 * 1.1);
  CHECK(wt.weights == w);

  auto f = frame({wt}, spec_for(tok))[0];
  CHECK(f.chunks == 1);
  std::vector<double> fw{1.0};
  fw.insert(fw.end(), w.begin(), w.end());
  fw.resize(77, 1.0);
  CHECK(f.weights == fw);
}

TEST_CASE("chunking: per-chunk weights follow the chunk layout; no_boseos_middle follows the sequence") {
  const auto& tok = ClipTokenizer::instance();
  const std::string prompt = "(" + kLong + ":1.25)";
  WeightedTokens wt = tokenize_weighted(prompt, spec_for(tok));
  const size_t n = wt.ids.size();
  CHECK(wt.ids == tok.encode(kLong));
  CHECK(wt.weights == std::vector<double>(n, 1.25));

  auto f = frame({wt}, spec_for(tok))[0];
  std::vector<double> want;
  want.push_back(1.0);
  want.insert(want.end(), 75, 1.25);
  want.push_back(1.0);
  want.push_back(1.0);
  want.insert(want.end(), n - 75, 1.25);
  want.resize(154, 1.0);
  CHECK(f.weights == want);

  ChunkOptions middle;
  middle.no_boseos_middle = true;
  auto g = frame({wt}, spec_for(tok), middle)[0];
  CHECK(g.chunk_ids == f.chunk_ids);  // same tokens; only the weights' layout differs
  std::vector<double> flat{1.0};
  flat.insert(flat.end(), n, 1.25);
  flat.resize(152, 1.0);
  CHECK(g.weights == flat);
}

TEST_CASE("chunking: prompts encoded together share the chunk count of the longest") {
  for (const ClipTokenizer* tok : {&ClipTokenizer::instance(), &ClipTokenizer::instance_pad_bang()}) {
    const int pad = tok->pad_id();
    CAPTURE(pad);
    auto framed = encode_pair("a cat", kLong, spec_for(*tok));
    REQUIRE(framed.size() == 2);
    CHECK(framed[0].chunks == 2);
    CHECK(framed[1].chunks == 2);
    const auto cat = tok->encode("a cat");
    std::vector<int> c0 = concat({{kBos}, cat, {kEos}});
    c0.resize(77, pad);
    // The second chunk of the short prompt holds only padding: BOS, then EOS when padding
    // differs from EOS (SD2), then padding.
    std::vector<int> c1(77, pad);
    c1[0] = kBos;
    c1[1] = kEos;
    CHECK(framed[0].chunk_ids == concat({c0, c1}));
    CHECK(framed[0].weights == std::vector<double>(154, 1.0));
  }
}

TEST_CASE("chunking: prompts beyond max_embeddings_multiples are truncated with a warning") {
  const auto& tok = ClipTokenizer::instance();
  const std::string prompt = kLong + ", " + kLong + ", " + kLong;
  const auto all = tok.encode(prompt);
  REQUIRE(all.size() > 225);
  std::vector<std::string> warnings;
  Warn warn = [&](const std::string& w) { warnings.push_back(w); };

  WeightedTokens wt = tokenize_weighted(prompt, spec_for(tok), {}, warn);
  CHECK(wt.truncated);
  CHECK(wt.ids == slice(all, 0, 225));
  REQUIRE(warnings.size() == 1);
  CHECK(warnings[0].find("truncated to 225 tokens") != std::string::npos);
  auto f = frame({wt}, spec_for(tok))[0];
  CHECK(f.chunks == 3);
  CHECK(f.chunk_ids.size() == 231);
  CHECK(slice(f.chunk_ids, 154, 231) == concat({{kBos}, slice(all, 150, 225), {kEos}}));

  ChunkOptions one;
  one.max_embeddings_multiples = 1;
  auto single = frame({tokenize_weighted(prompt, spec_for(tok), one)}, spec_for(tok), one)[0];
  CHECK(single.chunks == 1);
  CHECK(single.chunk_ids == concat({{kBos}, slice(all, 0, 75), {kEos}}));
  // Tokens made with a larger limit do not fit a smaller frame.
  CHECK_THROWS_AS(frame({wt}, spec_for(tok), one), std::invalid_argument);
}

TEST_CASE("chunking: BREAK pads to the next multiple of 77 tokens, as gen_img does") {
  const auto& tok1 = ClipTokenizer::instance();
  const int a = tok1.encode("a ")[0];
  const int b = tok1.encode(" b")[0];
  WeightedTokens wt = tokenize_weighted("a BREAK b", spec_for(tok1));
  std::vector<int> ids{a};
  ids.insert(ids.end(), 76, kEos);
  ids.push_back(b);
  CHECK(wt.ids == ids);
  auto f = frame({wt}, spec_for(tok1))[0];
  CHECK(f.chunks == 2);
  std::vector<int> c0(77, kEos);
  c0[0] = kBos;
  c0[1] = a;
  std::vector<int> c1(77, kEos);
  c1[0] = kBos;
  c1[3] = b;  // two pad tokens spill into the second chunk before "b"
  CHECK(f.chunk_ids == concat({c0, c1}));

  // SD2: the pad is "!" (0); chunk 0 ends in padding and gets no EOS, chunk 1 starts with
  // padding, which becomes EOS.
  const auto& tok2 = ClipTokenizer::instance_pad_bang();
  auto g = frame({tokenize_weighted("a BREAK b", spec_for(tok2))}, spec_for(tok2))[0];
  std::vector<int> d0(77, 0);
  d0[0] = kBos;
  d0[1] = a;
  std::vector<int> d1(77, 0);
  d1[0] = kBos;
  d1[1] = kEos;
  d1[3] = b;
  d1[4] = kEos;
  CHECK(g.chunk_ids == concat({d0, d1}));

  // Without BREAK support the word is just text.
  ChunkOptions lpw;
  lpw.parse.break_keyword = false;
  CHECK(tokenize_weighted("a BREAK b", spec_for(tok1), lpw).ids == tok1.encode("a BREAK b"));
}

TEST_CASE("chunking: bad options are rejected") {
  const auto& tok = ClipTokenizer::instance();
  ChunkOptions zero;
  zero.max_embeddings_multiples = 0;
  CHECK_THROWS_AS(tokenize_weighted("a", spec_for(tok), zero), std::invalid_argument);
  TokenizerSpec none;
  CHECK_THROWS_AS(tokenize_weighted("a", none), std::invalid_argument);
  WeightedTokens bad;
  bad.ids = {1, 2};
  bad.weights = {1.0};
  CHECK_THROWS_AS(frame({bad}, spec_for(tok)), std::invalid_argument);
}
