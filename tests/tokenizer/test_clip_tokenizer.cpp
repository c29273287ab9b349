// Unit cases of the CLIP tokenizer: edge inputs, the pre-tokenizer's rules, the text clean-up
// that stands in for ftfy, padding and framing, and errors.
#include <doctest/doctest.h>

#include <stdexcept>
#include <string>
#include <vector>

#include "sd_common/tokenizer/clip_tokenizer.h"
#include "text_clean.h"
#include "unicode.h"

using sumi::sd::ClipTokenizer;

namespace {

std::vector<std::string> tokens(const ClipTokenizer& tok, const std::string& text) {
  std::vector<std::string> out;
  for (int id : tok.encode(text)) out.push_back(tok.id_to_token(id));
  return out;
}

using Strings = std::vector<std::string>;

}  // namespace

TEST_CASE("vocabulary and special ids") {
  const auto& tok = ClipTokenizer::instance();
  CHECK(tok.vocab_size() == 49408);
  CHECK(tok.bos() == 49406);
  CHECK(tok.eos() == 49407);
  CHECK(tok.pad_id() == 49407);
  CHECK(ClipTokenizer::instance_pad_bang().pad_id() == 0);
  CHECK(tok.token_to_id("cat</w>") == 2368);
  CHECK(tok.token_to_id("no-such-token") == -1);
  CHECK(tok.id_to_token(0) == "!");
  CHECK_THROWS_AS(tok.id_to_token(49408), std::out_of_range);
}

TEST_CASE("empty and whitespace-only text give no ids") {
  const auto& tok = ClipTokenizer::instance();
  CHECK(tok.encode("").empty());
  CHECK(tok.encode(" \t\n\r\f\v \xC2\xA0\xE3\x80\x80 ").empty());  // includes NBSP, ideographic space
  std::vector<int> want(77, 49407);
  want[0] = 49406;
  CHECK(tok.encode_padded("") == want);
  want.assign(77, 0);
  want[0] = 49406;
  want[1] = 49407;
  CHECK(ClipTokenizer::instance_pad_bang().encode_padded("   ") == want);
}

TEST_CASE("lower-casing and whitespace collapsing") {
  const auto& tok = ClipTokenizer::instance();
  CHECK(tok.encode("  A   Photo\tOF\na CAT ") == tok.encode("a photo of a cat"));
  CHECK(tok.encode("a photo of a cat") == std::vector<int>{320, 1125, 539, 320, 2368});
}

TEST_CASE("apostrophe contractions are their own pieces") {
  const auto& tok = ClipTokenizer::instance();
  CHECK(tokens(tok, "it's") == Strings{"it</w>", "'s</w>"});
  CHECK(tokens(tok, "don't") == Strings{"don</w>", "'t</w>"});
  CHECK(tokens(tok, "we're they've i'm we'll he'd") ==
        Strings{"we</w>", "'re</w>", "they</w>", "'ve</w>", "i</w>", "'m</w>", "we</w>", "'ll</w>",
                "he</w>", "'d</w>"});
  CHECK(tokens(tok, "IT'S") == tokens(tok, "it's"));  // lower-cased before matching
  // A curly apostrophe is straightened by the clean-up first.
  CHECK(tok.encode("it\xE2\x80\x99s") == tok.encode("it's"));
  // The regex is case-insensitive: the long s (U+017F) still makes "'s" a contraction, so the
  // apostrophe is not word-final there.
  CHECK(tok.encode("'\xC5\xBF") == std::vector<int>{6, 129, 379});
  // Not a contraction: the apostrophe joins the punctuation run.
  CHECK(tokens(tok, "!'s") == Strings{"!'</w>", "s</w>"});
}

TEST_CASE("numbers split into single digits") {
  const auto& tok = ClipTokenizer::instance();
  CHECK(tok.encode("2024") == std::vector<int>{273, 271, 273, 275});
  CHECK(tokens(tok, "8k") == Strings{"8</w>", "k</w>"});
  CHECK(tokens(tok, "1.5") == Strings{"1</w>", ".</w>", "5</w>"});
}

TEST_CASE("the pad token '!' is a special token only for the SD2 / SDXL-2 tokenizer") {
  const auto& eos_pad = ClipTokenizer::instance();
  const auto& bang_pad = ClipTokenizer::instance_pad_bang();
  CHECK(tokens(eos_pad, "ArtStation!!").back() == "!!</w>");
  const auto ids = bang_pad.encode("ArtStation!!");
  REQUIRE(ids.size() >= 2);
  CHECK(ids[ids.size() - 1] == 0);
  CHECK(ids[ids.size() - 2] == 0);
  CHECK(std::vector<int>(ids.begin(), ids.end() - 2) == eos_pad.encode("ArtStation"));
  CHECK(bang_pad.encode("!!") == std::vector<int>{0, 0});
  CHECK(eos_pad.encode("!!") == std::vector<int>{748});
  // A bare "!" is id 0 for both, but "wow!" only splits with the "!" pad.
  CHECK(eos_pad.encode("wow!").back() == eos_pad.token_to_id("!</w>"));
  CHECK(bang_pad.encode("wow!").back() == 0);
  // Explicit construction behaves like the shared instance.
  const ClipTokenizer own("!");
  CHECK(own.encode("hi!! there!") == bang_pad.encode("hi!! there!"));
}

TEST_CASE("special token strings in the text") {
  const auto& tok = ClipTokenizer::instance();
  CHECK(tok.encode("<|startoftext|>a cat<|endoftext|>") == std::vector<int>{49406, 320, 2368, 49407});
  // Not split as an added token (that match is case-sensitive), but the pre-tokenizer regex
  // still recognises it after lower-casing.
  CHECK(tok.encode("<|EndOfText|>") == std::vector<int>{49407});
}

TEST_CASE("text clean-up stands in for ftfy") {
  const auto& tok = ClipTokenizer::instance();
  SUBCASE("NFC: decomposed accents compose") {
    CHECK(tok.encode("cafe\xCC\x81") == tok.encode("caf\xC3\xA9"));
    CHECK(tok.encode("cafe\xCC\x81") != tok.encode("cafe"));
  }
  SUBCASE("HTML entities are decoded unless the text has a '<'") {
    CHECK(tok.encode("salt &amp; pepper") == tok.encode("salt & pepper"));
    CHECK(tok.encode("&quot;hi&quot; &#39;x&#x27;") == tok.encode("\"hi\" 'x'"));
    CHECK(tok.encode("&EACUTE;t&eacute;") == tok.encode("\xC3\x89t\xC3\xA9"));
    CHECK(tok.encode("a &amp; b <c>") != tok.encode("a & b <c>"));
    CHECK(tok.encode("&#59; &bogus;") == tok.encode("&#59; &bogus;"));
  }
  SUBCASE("fullwidth forms, ligatures, curly quotes, controls") {
    CHECK(tok.encode("\xEF\xBC\xA1\xEF\xBC\xA2\xEF\xBC\xA3\xEF\xBC\x81") == tok.encode("abc!"));
    CHECK(tok.encode("\xEF\xAC\x81ne") == tok.encode("fine"));
    CHECK(tok.encode("\xE2\x80\x9Cquoted\xE2\x80\x9D") == tok.encode("\"quoted\""));
    CHECK(tok.encode("a\x01\x7F b\xEF\xBB\xBF") == tok.encode("a b"));
    CHECK(tok.encode("\x1B[36mblue\x1B[0m") == tok.encode("blue"));
  }
  SUBCASE("Python's lower(): final sigma and dotted capital I") {
    using sumi::sd::unicode::decode_utf8;
    using sumi::sd::unicode::encode_utf8;
    CHECK(encode_utf8(sumi::sd::clean_text(decode_utf8("\xCE\x9F\xCE\x94\xCE\x9F\xCE\xA3 \xCE\xA3\xCE\x91"))) ==
          "\xCE\xBF\xCE\xB4\xCE\xBF\xCF\x82 \xCF\x83\xCE\xB1");  // ΟΔΟΣ ΣΑ -> οδος σα
    CHECK(encode_utf8(sumi::sd::clean_text(decode_utf8("\xC4\xB0"))) == "i\xCC\x87");
  }
}

TEST_CASE("non-ASCII letters, CJK and emoji") {
  const auto& tok = ClipTokenizer::instance();
  // From the fixtures' non-ASCII prompt: letters with accents stay in their word, each CJK run
  // is one letter piece, the emoji is a punctuation piece.
  CHECK(tok.encode("caf\xC3\xA9") == std::vector<int>{15304});
  CHECK(tok.encode("\xF0\x9F\x90\xB1") == std::vector<int>{22979});
}

TEST_CASE("long prompts: raw ids are not truncated, padded rows are") {
  const auto& tok = ClipTokenizer::instance();
  std::string text;
  for (int i = 0; i < 100; ++i) text += "cat ";
  const auto raw = tok.encode(text);
  CHECK(raw.size() == 100);
  const auto row = tok.encode_padded(text);
  REQUIRE(row.size() == 77);
  CHECK(row.front() == 49406);
  CHECK(row[1] == 2368);
  CHECK(row[75] == 2368);
  CHECK(row.back() == 49407);
  // Chunking a long prompt: each 75-id chunk framed on its own.
  const std::vector<int> chunk2(raw.begin() + 75, raw.end());
  const auto framed = tok.frame(chunk2);
  CHECK(framed[0] == 49406);
  CHECK(framed[25] == 2368);
  CHECK(framed[26] == 49407);
  CHECK(framed[27] == 49407);
  CHECK(ClipTokenizer::instance_pad_bang().frame(chunk2)[27] == 0);
  CHECK(tok.frame(chunk2, 77, 0)[27] == 0);
  CHECK(tok.encode_padded("a cat", 4) == std::vector<int>{49406, 320, 2368, 49407});
  CHECK(tok.encode_padded("a cat", 3) == std::vector<int>{49406, 320, 49407});
}

TEST_CASE("decode joins the byte-level tokens back into text") {
  const auto& tok = ClipTokenizer::instance();
  CHECK(tok.decode(tok.encode("a photo of a cat")) == "a photo of a cat");
  CHECK(tok.decode(tok.encode("caf\xC3\xA9 \xE6\x9D\xB1\xE4\xBA\xAC")) == "caf\xC3\xA9 \xE6\x9D\xB1\xE4\xBA\xAC");
  CHECK(tok.decode(tok.encode_padded("a cat"), false).rfind("<|startoftext|>a cat <|endoftext|>", 0) == 0);
}

TEST_CASE("bad input is rejected with a message") {
  const auto& tok = ClipTokenizer::instance();
  CHECK_THROWS_WITH_AS(tok.encode("abc\xFF"), doctest::Contains("byte 3"), std::invalid_argument);
  CHECK_THROWS_AS(tok.encode("\xC3"), std::invalid_argument);
  CHECK_THROWS_AS(tok.encode("\xC0\x80"), std::invalid_argument);        // overlong
  CHECK_THROWS_AS(tok.encode("\xED\xA0\x80"), std::invalid_argument);    // surrogate
  CHECK_THROWS_AS(tok.encode_padded("a", 1), std::invalid_argument);
  CHECK_THROWS_WITH_AS(ClipTokenizer("<pad>"), doctest::Contains("not in the vocabulary"),
                       std::invalid_argument);
}

TEST_CASE("added embedding tokens: ids after the vocabulary, split out of the text, the first expands") {
  ClipTokenizer tok;
  const std::vector<int> ids = tok.add_embedding_token("myTok", 3);
  CHECK(ids == std::vector<int>{49408, 49409, 49410});
  CHECK(tok.size() == 49411);
  CHECK(tok.token_to_id("myTok2") == 49410);
  CHECK(tok.id_to_token(49409) == "myTok1");
  const int a = tok.encode("a").at(0);
  // gen_img's replacement: the token stands for all its vectors; "myTok1" alone is one id.
  CHECK(tok.encode("a myTok") == std::vector<int>{a, 49408, 49409, 49410});
  CHECK(tok.encode("myTok1") == std::vector<int>{49409});
  // Split out like the special tokens: inside a word too, case-sensitively.
  CHECK(tok.encode("amyTok") == std::vector<int>{a, 49408, 49409, 49410});
  CHECK(tok.encode("mytok") == ClipTokenizer::instance().encode("mytok"));
  CHECK(tok.decode(tok.encode("a myTok")) == "a myTok myTok1 myTok2");
  CHECK(tok.encode_padded("myTok").at(4) == tok.eos());
  // Taken strings are refused: vocabulary entries, earlier added tokens, and their numbered twins.
  CHECK_THROWS_WITH_AS(tok.add_embedding_token("cat</w>", 1), doctest::Contains("'cat</w>' is already a token"),
                       std::invalid_argument);
  CHECK_THROWS_WITH_AS(tok.add_embedding_token("myTok", 1), doctest::Contains("'myTok' is already a token"),
                       std::invalid_argument);
  CHECK_THROWS_AS(tok.add_embedding_token("", 1), std::invalid_argument);
  CHECK_THROWS_AS(tok.add_embedding_token("other", 0), std::invalid_argument);
  // The shared instances are not affected.
  CHECK(ClipTokenizer::instance().size() == 49408);
}
