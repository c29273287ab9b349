// Caption reading and kohya's process_caption operations, deterministic under a seed.
#include <doctest/doctest.h>

#include <set>

#include "helpers.h"
#include "sumi/datasets/caption.h"
#include "sumi/datasets/random.h"

using namespace sumi::datasets;
using sumi::test::TempDir;
using sumi::test::write_text;

namespace {
std::string run(const std::string& cap, const CaptionOptions& o, std::uint64_t seed, CaptionStep at = {}) {
  std::mt19937_64 rng(seed);
  return process_caption(cap, o, at, rng);
}
std::vector<std::string> tokens(const std::string& s) {
  std::vector<std::string> out;
  std::size_t start = 0;
  for (;;) {
    auto p = s.find(", ", start);
    out.push_back(s.substr(start, p - start));
    if (p == std::string::npos) break;
    start = p + 2;
  }
  return out;
}
}  // namespace

TEST_CASE("read_caption_file: first line, extension with or without dot, face-crop fallback") {
  TempDir t;
  write_text(t / "a.txt", "  a cat, sitting  \nsecond line\n");
  CHECK(read_caption_file(t / "a.png", ".txt") == std::optional<std::string>("a cat, sitting"));
  CHECK(read_caption_file(t / "a.png", "txt") == std::optional<std::string>("a cat, sitting"));
  CHECK_FALSE(read_caption_file(t / "a.png", ".caption").has_value());
  // "img_1_2_3_4" is a face-crop of "img": its caption is used when it has none of its own.
  write_text(t / "img.txt", "original");
  CHECK(read_caption_file(t / "img_1_2_3_4.png", ".txt") == std::optional<std::string>("original"));
  write_text(t / "bom.txt", "\xEF\xBB\xBFwith bom");
  CHECK(*read_caption_file(t / "bom.jpg", ".txt") == "with bom");
}

TEST_CASE("read_caption_file: empty or non-UTF-8 files are errors naming the file") {
  TempDir t;
  write_text(t / "e.txt", "");
  const std::string path = (t / "e.txt").string();
  CHECK_THROWS_WITH(read_caption_file(t / "e.png", ".txt"), doctest::Contains(path.c_str()));
  write_text(t / "bad.txt", "caf\xE9 latin-1");
  CHECK_THROWS_WITH(read_caption_file(t / "bad.png", ".txt"), doctest::Contains("not valid UTF-8"));
}

TEST_CASE("prefix, suffix and no-op captions") {
  CaptionOptions o;
  CHECK(run("a, b", o, 1) == "a, b");  // nothing enabled: untouched (no re-joining)
  o.prefix = "masterpiece";
  o.suffix = "by sumi";
  CHECK(run("a, b", o, 1) == "masterpiece a, b by sumi");
}

TEST_CASE("shuffle keeps keep_tokens in front, and repeats under a seed") {
  CaptionOptions o;
  o.shuffle = true;
  o.keep_tokens = 2;
  const std::string cap = "sks, dog, red, blue, green, yellow, purple, white";
  const auto a = run(cap, o, 42), b = run(cap, o, 42);
  CHECK(a == b);
  const auto t = tokens(a);
  REQUIRE(t.size() == 8);
  CHECK(t[0] == "sks");
  CHECK(t[1] == "dog");
  CHECK(std::multiset<std::string>(t.begin(), t.end()) == std::multiset<std::string>(
                                                              {"sks", "dog", "red", "blue", "green", "yellow", "purple", "white"}));
  std::set<std::string> orders;
  for (std::uint64_t s = 0; s < 40; ++s) orders.insert(run(cap, o, s));
  CHECK(orders.size() > 20);  // 720 possible orders of the 6 flexible tokens
  // Whitespace is normalised to ", " once the caption is split.
  o.keep_tokens = 0;
  o.shuffle = false;
  o.tag_dropout_rate = 1e-12;
  CHECK(run("a ,b,  c", o, 3) == "a, b, c");
}

TEST_CASE("keep_tokens_separator: fixed | flexible | fixed suffix") {
  CaptionOptions o;
  o.shuffle = true;
  o.keep_tokens = 5;  // ignored when the separator is present
  o.keep_tokens_separator = "|||";
  for (std::uint64_t s = 0; s < 20; ++s) {
    const auto t = tokens(run("sks, dog ||| a, b, c, d ||| best, end", o, s));
    REQUIRE(t.size() == 8);
    CHECK(t[0] == "sks");
    CHECK(t[1] == "dog");
    CHECK(t[6] == "best");
    CHECK(t[7] == "end");
  }
}

TEST_CASE("caption dropout: rate and every n epochs") {
  CaptionOptions o;
  o.dropout_rate = 0.5;
  int dropped = 0;
  for (std::uint64_t s = 0; s < 1000; ++s) dropped += run("a, b", o, s).empty();
  CHECK(dropped > 430);
  CHECK(dropped < 570);
  o.dropout_rate = 0;
  o.dropout_every_n_epochs = 3;
  CHECK(run("a", o, 1, {1, 0, 0}) == "a");
  CHECK(run("a", o, 1, {3, 0, 0}).empty());
  CHECK(run("a", o, 1, {6, 0, 0}).empty());
  CHECK(run("a", o, 1, {7, 0, 0}) == "a");
}

TEST_CASE("tag dropout drops flexible tokens only") {
  CaptionOptions o;
  o.keep_tokens = 1;
  o.tag_dropout_rate = 1.0;
  CHECK(run("sks, a, b, c", o, 5) == "sks");
  o.tag_dropout_rate = 0.5;
  CHECK(run("sks, a, b, c, d, e, f", o, 9) == run("sks, a, b, c, d, e, f", o, 9));
  std::size_t total = 0;
  for (std::uint64_t s = 0; s < 200; ++s) total += tokens(run("sks, a, b, c, d", o, s)).size() - 1;
  CHECK(total > 300);  // about 4 * 0.5 * 200 = 400
  CHECK(total < 500);
}

TEST_CASE("token warmup: floor(step * (n - min) / warmup) + min flexible tokens") {
  CaptionOptions o;
  o.token_warmup_min = 1;
  o.token_warmup_step = 10;
  const std::string cap = "t0, t1, t2, t3, t4, t5, t6, t7, t8, t9, t10";  // 11 tokens
  CHECK(run(cap, o, 1, {1, 0, 100}) == "t0");                          // floor(0) + 1
  CHECK(run(cap, o, 1, {1, 5, 100}) == "t0, t1, t2, t3, t4, t5");      // floor(5 * 1.0) + 1
  CHECK(run(cap, o, 1, {1, 9, 100}) == "t0, t1, t2, t3, t4, t5, t6, t7, t8, t9");
  CHECK(run(cap, o, 1, {1, 10, 100}) == cap);                          // warmup over
  // A fraction of max_train_steps: 0.1 * 100 = 10 steps, same as above.
  o.token_warmup_step = 0.1;
  CHECK(run(cap, o, 1, {1, 5, 100}) == "t0, t1, t2, t3, t4, t5");
  // keep_tokens stay on top of the warmup count.
  o.token_warmup_step = 10;
  o.keep_tokens = 2;
  CHECK(run(cap, o, 1, {1, 0, 100}) == "t0, t1, t2");
}

TEST_CASE("secondary separator and custom separator") {
  CaptionOptions o;
  o.shuffle = true;
  o.secondary_separator = ";;;";
  const auto c = run("a;;;b, c", o, 4);
  CHECK((c == "a,b, c" || c == "c, a,b"));  // "a;;;b" moves as one token, then becomes "a,b"
  o.separator = "|";
  o.secondary_separator.clear();
  o.shuffle = false;
  o.tag_dropout_rate = 1e-12;
  CHECK(run("x | y|z", o, 1) == "x, y, z");
}

TEST_CASE("random helpers are portable: fixed outputs for a fixed seed") {
  // mt19937_64's sequence is fixed by the standard, and so are these transforms.
  std::mt19937_64 rng(5489u);
  CHECK(rng() == 14514284786278117030ull);
  std::mt19937_64 a(1), b(1);
  std::vector<int> v{0, 1, 2, 3, 4, 5, 6, 7}, w = v;
  shuffle(v, a);
  shuffle(w, b);
  CHECK(v == w);
  auto d1 = derived_rng(1, 2, 3), d2 = derived_rng(1, 2, 3), d3 = derived_rng(1, 2, 4);
  CHECK(d1() == d2());
  CHECK(d1() != d3());
}

TEST_CASE("the caption stream is pinned: a seed gives these exact captions everywhere") {
  // Not kohya's output (Python's random differs); pinned so a change to the draw order or
  // the random helpers shows up instead of silently changing seeded runs.
  CaptionOptions o;
  o.shuffle = true;
  o.keep_tokens = 1;
  o.tag_dropout_rate = 0.3;
  CHECK(run("sks, a, b, c, d, e, f", o, 42) == "sks, b, f, e");
  CHECK(run("sks, a, b, c, d, e, f", o, 7) == "sks, b, e, a, d");
}

TEST_CASE("wildcards: a random line, {a|b} choices, {{ }} escapes") {
  TempDir t;
  write_text(t / "w.txt", "first {red|blue} cat\n\n  second {{literal}} line  \n");
  const auto all = read_caption_file(t / "w.png", ".txt", true);
  REQUIRE(all);
  CHECK(*all == "first {red|blue} cat\nsecond {{literal}} line");
  CaptionOptions o;
  o.enable_wildcard = true;
  std::set<std::string> seen;
  for (std::uint64_t s = 0; s < 60; ++s) seen.insert(run(*all, o, s));
  CHECK(seen == std::set<std::string>{"first red cat", "first blue cat", "second {literal} line"});
  // "{}" is not a choice; text outside braces is kept; the same seed gives the same pick.
  CHECK(run("a {} b {x|y|z}", o, 3) == run("a {} b {x|y|z}", o, 3));
  CHECK(run("a {} b {x}", o, 3) == "a {} b x");
  // Without wildcards a multi-line caption uses its first line.
  o.enable_wildcard = false;
  CHECK(run(*all, o, 1) == "first {red|blue} cat");
}
