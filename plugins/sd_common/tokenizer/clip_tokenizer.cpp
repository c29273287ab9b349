#include "sd_common/tokenizer/clip_tokenizer.h"

#include <algorithm>
#include <array>
#include <cstdint>
#include <limits>
#include <mutex>
#include <stdexcept>
#include <unordered_map>
#include <utility>

#include "embedded_data.h"
#include "text_clean.h"
#include "unicode.h"

namespace sumi::sd {

// The vocabulary and merge ranks, loaded once from the embedded files and shared by all instances.
struct detail::ClipVocab {
  std::vector<std::string> tokens;  // id -> token as written in vocab.json (byte-level unicode)
  std::unordered_map<std::string, int> ids;
  std::array<int, 256> byte_id{};      // token of a lone byte inside a word
  std::array<int, 256> byte_end_id{};  // the same byte ending a word ("x</w>")
  std::array<char32_t, 256> byte_char{};
  std::unordered_map<char32_t, unsigned char> char_byte;
  // (left id, right id) -> (merge rank, merged id); BPE works on ids throughout.
  std::unordered_map<std::uint64_t, std::pair<int, int>> merges;
};

struct detail::ClipBpeCache {
  static constexpr std::size_t kMaxEntries = 1 << 16;
  std::mutex mutex;
  std::unordered_map<std::string, std::vector<int>> words;
};

namespace {

constexpr std::size_t kVocabSize = 49408;
// The reference reads merges.txt lines [1, 49152 - 256 - 2 + 1): at most this many merges.
constexpr std::size_t kMaxMerges = 49152 - 256 - 2;

std::uint64_t pair_key(int a, int b) {
  return (static_cast<std::uint64_t>(static_cast<std::uint32_t>(a)) << 32) | static_cast<std::uint32_t>(b);
}

[[noreturn]] void bad_data(const std::string& file, const std::string& what) {
  throw std::runtime_error("CLIP tokenizer: the embedded " + file + " is invalid: " + what +
                           " (rebuild sumi_clip_tokenizer from plugins/sd_common/tokenizer/data/)");
}

// GPT-2/CLIP byte-level mapping: printable Latin-1 bytes stand for themselves, the other bytes
// for U+0100 onwards in byte order, so every byte is a visible character in the vocabulary.
std::array<char32_t, 256> bytes_to_unicode() {
  std::array<char32_t, 256> map{};
  char32_t next = 256;
  for (int b = 0; b < 256; ++b) {
    const bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
    map[static_cast<std::size_t>(b)] = printable ? static_cast<char32_t>(b) : next++;
  }
  return map;
}

// vocab.json is one flat JSON object of token -> id. A small strict reader keeps a JSON library
// (and its compile time) out of this target.
template <typename OnEntry>
void parse_vocab_json(std::string_view json, OnEntry&& on_entry) {
  std::size_t i = 0;
  auto fail = [&](const std::string& what) { bad_data("vocab.json", what + " at byte " + std::to_string(i)); };
  auto skip_ws = [&] {
    while (i < json.size() && (json[i] == ' ' || json[i] == '\n' || json[i] == '\r' || json[i] == '\t')) ++i;
  };
  auto hex4 = [&]() -> char32_t {
    if (i + 4 > json.size()) fail("truncated \\u escape");
    char32_t v = 0;
    for (int k = 0; k < 4; ++k) {
      const char c = json[i++];
      v <<= 4;
      if (c >= '0' && c <= '9') v |= static_cast<char32_t>(c - '0');
      else if (c >= 'a' && c <= 'f') v |= static_cast<char32_t>(c - 'a' + 10);
      else if (c >= 'A' && c <= 'F') v |= static_cast<char32_t>(c - 'A' + 10);
      else fail("bad \\u escape");
    }
    return v;
  };
  auto string = [&]() -> std::string {
    if (i >= json.size() || json[i] != '"') fail("expected a string");
    ++i;
    std::string out;
    while (true) {
      if (i >= json.size()) fail("unterminated string");
      const char c = json[i++];
      if (c == '"') return out;
      if (static_cast<unsigned char>(c) < 0x20) fail("control character in string");
      if (c != '\\') {
        out.push_back(c);
        continue;
      }
      if (i >= json.size()) fail("unterminated escape");
      const char e = json[i++];
      switch (e) {
        case '"': out.push_back('"'); break;
        case '\\': out.push_back('\\'); break;
        case '/': out.push_back('/'); break;
        case 'b': out.push_back('\b'); break;
        case 'f': out.push_back('\f'); break;
        case 'n': out.push_back('\n'); break;
        case 'r': out.push_back('\r'); break;
        case 't': out.push_back('\t'); break;
        case 'u': {
          char32_t cp = hex4();
          if (cp >= 0xD800 && cp <= 0xDBFF) {
            if (i + 2 > json.size() || json[i] != '\\' || json[i + 1] != 'u') fail("lone surrogate");
            i += 2;
            const char32_t lo = hex4();
            if (lo < 0xDC00 || lo > 0xDFFF) fail("bad surrogate pair");
            cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
          } else if (cp >= 0xDC00 && cp <= 0xDFFF) {
            fail("lone surrogate");
          }
          unicode::append_utf8(out, cp);
          break;
        }
        default: fail("bad escape");
      }
    }
  };
  skip_ws();
  if (i >= json.size() || json[i] != '{') fail("expected '{'");
  ++i;
  skip_ws();
  if (i < json.size() && json[i] == '}') return;
  while (true) {
    skip_ws();
    const std::size_t at = i;
    std::string token = string();
    skip_ws();
    if (i >= json.size() || json[i] != ':') fail("expected ':'");
    ++i;
    skip_ws();
    const bool negative = i < json.size() && json[i] == '-';
    if (negative) ++i;
    if (i >= json.size() || json[i] < '0' || json[i] > '9') fail("expected an integer id");
    long long id = 0;
    while (i < json.size() && json[i] >= '0' && json[i] <= '9') {
      id = id * 10 + (json[i++] - '0');
      if (id > (1LL << 40)) fail("id too large");
    }
    on_entry(std::move(token), negative ? -id : id, at);
    skip_ws();
    if (i < json.size() && json[i] == ',') {
      ++i;
      continue;
    }
    if (i < json.size() && json[i] == '}') break;
    fail("expected ',' or '}'");
  }
  ++i;
  skip_ws();
  if (i != json.size()) fail("trailing characters");
}

std::shared_ptr<const detail::ClipVocab> load_vocab() {
  auto v = std::make_shared<detail::ClipVocab>();

  const std::string_view json = detail::embedded_vocab_json();
  v->tokens.resize(kVocabSize);
  v->ids.reserve(kVocabSize);
  std::size_t count = 0;
  parse_vocab_json(json, [&](std::string&& token, long long id, std::size_t at) {
    if (id < 0 || id >= static_cast<long long>(kVocabSize) || !v->tokens[static_cast<std::size_t>(id)].empty())
      bad_data("vocab.json", "id " + std::to_string(id) + " at byte " + std::to_string(at) +
                                 " is out of range or repeated");
    v->ids.emplace(token, static_cast<int>(id));
    v->tokens[static_cast<std::size_t>(id)] = std::move(token);
    ++count;
  });
  if (count != kVocabSize || v->ids.size() != kVocabSize)
    bad_data("vocab.json", "expected " + std::to_string(kVocabSize) + " distinct tokens, found " +
                               std::to_string(v->ids.size()));

  v->byte_char = bytes_to_unicode();
  for (int b = 0; b < 256; ++b) {
    std::string ch;
    unicode::append_utf8(ch, v->byte_char[static_cast<std::size_t>(b)]);
    v->char_byte.emplace(v->byte_char[static_cast<std::size_t>(b)], static_cast<unsigned char>(b));
    const auto a = v->ids.find(ch);
    const auto e = v->ids.find(ch + "</w>");
    if (a == v->ids.end() || e == v->ids.end()) bad_data("vocab.json", "byte token \"" + ch + "\" is missing");
    v->byte_id[static_cast<std::size_t>(b)] = a->second;
    v->byte_end_id[static_cast<std::size_t>(b)] = e->second;
  }

  const std::string_view merges = detail::embedded_merges_txt();
  std::size_t pos = 0;
  std::size_t line_no = 0;
  int rank = 0;
  v->merges.reserve(kMaxMerges);
  while (pos < merges.size() && static_cast<std::size_t>(rank) < kMaxMerges) {
    std::size_t eol = merges.find('\n', pos);
    if (eol == std::string_view::npos) eol = merges.size();
    std::string_view line = merges.substr(pos, eol - pos);
    pos = eol + 1;
    if (line_no++ == 0) continue;  // "#version: 0.2"
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    if (line.empty()) continue;
    const std::size_t space = line.find(' ');
    if (space == std::string_view::npos || line.find(' ', space + 1) != std::string_view::npos)
      bad_data("merges.txt", "line " + std::to_string(line_no) + " is not two tokens");
    const std::string left(line.substr(0, space));
    const std::string right(line.substr(space + 1));
    const auto l = v->ids.find(left);
    const auto r = v->ids.find(right);
    const auto m = v->ids.find(left + right);
    if (l == v->ids.end() || r == v->ids.end() || m == v->ids.end())
      bad_data("merges.txt", "line " + std::to_string(line_no) + " uses a token missing from vocab.json");
    // A repeated pair takes its later rank, as the reference's dict does.
    v->merges.insert_or_assign(pair_key(l->second, r->second), std::make_pair(rank++, m->second));
  }
  return v;
}

std::shared_ptr<const detail::ClipVocab> shared_vocab() {
  static const std::shared_ptr<const detail::ClipVocab> vocab = load_vocab();
  return vocab;
}

// Case-insensitive compare of the (already lower-cased) text with an ASCII literal, as the
// reference's regex does with re.IGNORECASE: U+017F (long s) folds to 's'; no other character
// folds onto a letter of these literals.
bool matches_at(std::u32string_view text, std::size_t i, std::string_view literal) {
  if (text.size() - i < literal.size()) return false;
  for (std::size_t k = 0; k < literal.size(); ++k) {
    const char32_t c = text[i + k];
    const auto want = static_cast<char32_t>(literal[k]);
    if (c == want) continue;
    if (want == 's' && c == 0x17F) continue;
    return false;
  }
  return true;
}

// The reference's pre-tokenizer regex, over cleaned text:
//   <|startoftext|>|<|endoftext|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+
// Alternatives are tried in order at each position; whitespace is skipped.
std::vector<std::u32string_view> pre_tokenize(std::u32string_view text) {
  static constexpr std::string_view kFixed[] = {"<|startoftext|>", "<|endoftext|>", "'s", "'t",
                                                "'re", "'ve", "'m", "'ll", "'d"};
  std::vector<std::u32string_view> pieces;
  std::size_t i = 0;
  while (i < text.size()) {
    const char32_t c = text[i];
    std::size_t len = 0;
    for (std::string_view lit : kFixed) {
      if (matches_at(text, i, lit)) {
        len = lit.size();
        break;
      }
    }
    if (len == 0) {
      if (unicode::is_letter(c)) {
        len = 1;
        while (i + len < text.size() && unicode::is_letter(text[i + len])) ++len;
      } else if (unicode::is_number(c)) {
        len = 1;
      } else if (unicode::is_space(c)) {
        ++i;
        continue;
      } else {
        len = 1;
        while (i + len < text.size()) {
          const char32_t d = text[i + len];
          if (unicode::is_space(d) || unicode::is_letter(d) || unicode::is_number(d)) break;
          ++len;
        }
      }
    }
    pieces.push_back(text.substr(i, len));
    i += len;
  }
  return pieces;
}

}  // namespace

const ClipTokenizer& ClipTokenizer::instance() {
  static const ClipTokenizer tokenizer(kEndOfText);
  return tokenizer;
}

const ClipTokenizer& ClipTokenizer::instance_pad_bang() {
  static const ClipTokenizer tokenizer(kBangPad);
  return tokenizer;
}

ClipTokenizer::ClipTokenizer(std::string_view pad_token)
    : vocab_(shared_vocab()), cache_(std::make_unique<detail::ClipBpeCache>()), pad_token_(pad_token) {
  bos_ = token_to_id(kStartOfText);
  eos_ = token_to_id(kEndOfText);
  pad_id_ = token_to_id(pad_token);
  if (pad_id_ < 0)
    throw std::invalid_argument("CLIP tokenizer: pad token \"" + pad_token_ +
                                "\" is not in the vocabulary; use \"<|endoftext|>\" (SD1, SDXL "
                                "text encoder 1) or \"!\" (SD2, SDXL text encoder 2)");
  pad_is_added_token_ = pad_token != kStartOfText && pad_token != kEndOfText;
  added_.push_back({unicode::decode_utf8(kStartOfText), bos_});
  added_.push_back({unicode::decode_utf8(kEndOfText), eos_});
  if (pad_is_added_token_) added_.push_back({unicode::decode_utf8(pad_token), pad_id_});
  std::stable_sort(added_.begin(), added_.end(),
                   [](const AddedToken& a, const AddedToken& b) { return a.text.size() > b.text.size(); });
}

ClipTokenizer::~ClipTokenizer() = default;

std::size_t ClipTokenizer::vocab_size() const { return vocab_->tokens.size(); }

std::size_t ClipTokenizer::size() const { return vocab_->tokens.size() + user_tokens_.size(); }

int ClipTokenizer::token_to_id(std::string_view token) const {
  const auto it = vocab_->ids.find(std::string(token));
  if (it != vocab_->ids.end()) return it->second;
  for (std::size_t i = 0; i < user_tokens_.size(); ++i)
    if (user_tokens_[i] == token) return static_cast<int>(vocab_->tokens.size() + i);
  return -1;
}

const std::string& ClipTokenizer::id_to_token(int id) const {
  if (id < 0 || static_cast<std::size_t>(id) >= size())
    throw std::out_of_range("CLIP tokenizer: token id " + std::to_string(id) + " is outside [0, " +
                            std::to_string(size()) + ")");
  const auto i = static_cast<std::size_t>(id);
  return i < vocab_->tokens.size() ? vocab_->tokens[i] : user_tokens_[i - vocab_->tokens.size()];
}

std::vector<int> ClipTokenizer::add_embedding_token(std::string_view token, int n_vectors) {
  if (token.empty()) throw std::invalid_argument("CLIP tokenizer: an added token cannot be empty");
  if (n_vectors < 1)
    throw std::invalid_argument("CLIP tokenizer: token '" + std::string(token) + "' needs at least one vector, got " +
                                std::to_string(n_vectors));
  std::vector<std::string> strings{std::string(token)};
  for (int i = 1; i < n_vectors; ++i) strings.push_back(std::string(token) + std::to_string(i));
  for (const auto& t : strings)
    if (token_to_id(t) >= 0)
      throw std::invalid_argument("CLIP tokenizer: '" + t +
                                  "' is already a token (of the vocabulary or added before); choose another "
                                  "token string (for an embedding file: rename the file)");
  std::vector<int> ids;
  for (auto& t : strings) {
    ids.push_back(static_cast<int>(size()));
    added_.push_back({unicode::decode_utf8(t), ids.back()});
    user_tokens_.push_back(std::move(t));
  }
  std::stable_sort(added_.begin(), added_.end(),
                   [](const AddedToken& a, const AddedToken& b) { return a.text.size() > b.text.size(); });
  if (n_vectors > 1) expansions_.push_back({ids.front(), ids});
  return ids;
}

std::vector<int> ClipTokenizer::encode(std::string_view text) const {
  const std::u32string u = unicode::decode_utf8(text);
  std::vector<int> ids;

  // The reference first splits the raw text on its added tokens (case-sensitive, leftmost,
  // longest first); each of them is one id. With pad "!" every "!" becomes the pad id.
  const std::u32string_view all(u);
  std::size_t piece_start = 0;
  std::size_t i = 0;
  while (i < all.size()) {
    const AddedToken* hit = nullptr;
    for (const AddedToken& a : added_) {
      if (all.compare(i, a.text.size(), a.text) == 0) {
        hit = &a;
        break;
      }
    }
    if (!hit) {
      ++i;
      continue;
    }
    encode_piece(all.substr(piece_start, i - piece_start), ids);
    ids.push_back(hit->id);
    i += hit->text.size();
    piece_start = i;
  }
  encode_piece(all.substr(piece_start), ids);
  if (expansions_.empty()) return ids;
  // gen_img's token replacement: a multi-vector token stands for all of its vectors.
  std::vector<int> out;
  out.reserve(ids.size());
  for (int id : ids) {
    const auto e = std::find_if(expansions_.begin(), expansions_.end(), [id](const Expansion& x) { return x.first == id; });
    if (e == expansions_.end()) out.push_back(id);
    else out.insert(out.end(), e->ids.begin(), e->ids.end());
  }
  return out;
}

void ClipTokenizer::encode_piece(std::u32string_view piece, std::vector<int>& out) const {
  if (piece.empty()) return;
  const std::u32string clean = clean_text(piece);
  for (std::u32string_view word : pre_tokenize(clean)) {
    // The reference's BPE cache starts with the two special strings, so the regex's own
    // special alternatives (e.g. "<|ENDOFTEXT|>" once lower-cased) give their ids.
    if (word.size() == kStartOfText.size() && std::equal(word.begin(), word.end(), kStartOfText.begin())) {
      out.push_back(bos_);
    } else if (word.size() == kEndOfText.size() && std::equal(word.begin(), word.end(), kEndOfText.begin())) {
      out.push_back(eos_);
    } else {
      bpe_word(unicode::encode_utf8(word), out);
    }
  }
}

void ClipTokenizer::bpe_word(const std::string& bytes, std::vector<int>& out) const {
  {
    std::lock_guard<std::mutex> lock(cache_->mutex);
    const auto it = cache_->words.find(bytes);
    if (it != cache_->words.end()) {
      out.insert(out.end(), it->second.begin(), it->second.end());
      return;
    }
  }

  const detail::ClipVocab& v = *vocab_;
  std::vector<int> word;
  word.reserve(bytes.size());
  for (std::size_t k = 0; k < bytes.size(); ++k) {
    const auto b = static_cast<unsigned char>(bytes[k]);
    word.push_back(k + 1 == bytes.size() ? v.byte_end_id[b] : v.byte_id[b]);
  }

  // Repeatedly merge the lowest-ranked adjacent pair, every occurrence left to right.
  std::vector<int> next;
  while (word.size() > 1) {
    int best_rank = std::numeric_limits<int>::max();
    int left = -1, right = -1, merged = -1;
    for (std::size_t k = 0; k + 1 < word.size(); ++k) {
      const auto it = v.merges.find(pair_key(word[k], word[k + 1]));
      if (it != v.merges.end() && it->second.first < best_rank) {
        best_rank = it->second.first;
        left = word[k];
        right = word[k + 1];
        merged = it->second.second;
      }
    }
    if (merged < 0) break;
    next.clear();
    for (std::size_t k = 0; k < word.size();) {
      if (k + 1 < word.size() && word[k] == left && word[k + 1] == right) {
        next.push_back(merged);
        k += 2;
      } else {
        next.push_back(word[k++]);
      }
    }
    word.swap(next);
  }

  out.insert(out.end(), word.begin(), word.end());
  std::lock_guard<std::mutex> lock(cache_->mutex);
  if (cache_->words.size() >= detail::ClipBpeCache::kMaxEntries) cache_->words.clear();
  cache_->words.emplace(bytes, std::move(word));
}

std::vector<int> ClipTokenizer::frame(const std::vector<int>& ids, int max_length, int pad_id) const {
  if (max_length < 2)
    throw std::invalid_argument("CLIP tokenizer: max_length " + std::to_string(max_length) +
                                " leaves no room for BOS and EOS; it must be at least 2 (SD uses 77)");
  const int pad = pad_id < 0 ? pad_id_ : pad_id;
  std::vector<int> out;
  out.reserve(static_cast<std::size_t>(max_length));
  out.push_back(bos_);
  const std::size_t keep = std::min(ids.size(), static_cast<std::size_t>(max_length - 2));
  out.insert(out.end(), ids.begin(), ids.begin() + static_cast<std::ptrdiff_t>(keep));
  out.push_back(eos_);
  out.resize(static_cast<std::size_t>(max_length), pad);
  return out;
}

std::vector<int> ClipTokenizer::encode_padded(std::string_view text, int max_length, int pad_id) const {
  if (max_length < 2) return frame({}, max_length, pad_id);  // throws with the explanation
  return frame(encode(text), max_length, pad_id);
}

std::string ClipTokenizer::decode(const std::vector<int>& ids, bool skip_special) const {
  const detail::ClipVocab& v = *vocab_;
  std::string text;
  for (int id : ids) {
    if (skip_special && (id == bos_ || id == eos_ || (pad_is_added_token_ && id == pad_id_))) continue;
    const std::string& token = id_to_token(id);
    if (static_cast<std::size_t>(id) >= vocab_->tokens.size()) {  // an added token: its own text
      text += token + " ";
      continue;
    }
    std::string_view body = token;
    const bool end_of_word = body.size() >= 4 && body.substr(body.size() - 4) == "</w>";
    if (end_of_word) body.remove_suffix(4);
    if (id == bos_ || id == eos_) {
      text += token;
      continue;
    }
    for (char32_t c : unicode::decode_utf8(body)) {
      const auto it = v.char_byte.find(c);
      if (it != v.char_byte.end()) text.push_back(static_cast<char>(it->second));
    }
    if (end_of_word) text.push_back(' ');
  }
  while (!text.empty() && text.back() == ' ') text.pop_back();
  return text;
}

}  // namespace sumi::sd
