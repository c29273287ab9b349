// parse_weights follows sd-scripts' parse_prompt_attention step by step: the same tokens (its
// regular expression, matched here by hand, alternatives in the same order), the same bracket
// stacks, the same multiplications in the same order (so the doubles are bit-identical) and
// the same merge of equal neighbours.
#include "sd_common/prompt/weighting.h"

#include <charconv>
#include <cstdint>
#include <limits>
#include <stdexcept>
#include <string>

namespace sumi::prompt {
namespace {

// First code point of each run of ten Unicode decimal digits (category Nd, Unicode 14 as in
// the reference's Python 3.11): Python's \d and float() accept all of them, so "(cat:１.５)"
// is a weight of 1.5 there.
constexpr char32_t kDigitZeros[] = {
    0x30,    0x660,   0x6f0,   0x7c0,   0x966,   0x9e6,   0xa66,   0xae6,   0xb66,   0xbe6,
    0xc66,   0xce6,   0xd66,   0xde6,   0xe50,   0xed0,   0xf20,   0x1040,  0x1090,  0x17e0,
    0x1810,  0x1946,  0x19d0,  0x1a80,  0x1a90,  0x1b50,  0x1bb0,  0x1c40,  0x1c50,  0xa620,
    0xa8d0,  0xa900,  0xa9d0,  0xa9f0,  0xaa50,  0xabf0,  0xff10,  0x104a0, 0x10d30, 0x11066,
    0x110f0, 0x11136, 0x111d0, 0x112f0, 0x11450, 0x114d0, 0x11650, 0x116c0, 0x11730, 0x118e0,
    0x11950, 0x11c50, 0x11d50, 0x11da0, 0x16a60, 0x16ac0, 0x16b50, 0x1d7ce, 0x1d7d8, 0x1d7e2,
    0x1d7ec, 0x1d7f6, 0x1e140, 0x1e2f0, 0x1e950, 0x1fbf0};

// Decimal value of a digit code point, or -1.
int digit_value(char32_t cp) {
  for (char32_t zero : kDigitZeros) {
    if (cp >= zero && cp < zero + 10) return static_cast<int>(cp - zero);
    if (cp < zero) break;
  }
  return -1;
}

// Decodes the UTF-8 sequence at text[pos]; returns its length (0 when malformed).
size_t decode_at(std::string_view text, size_t pos, char32_t& cp) {
  auto b = static_cast<unsigned char>(text[pos]);
  size_t len = b < 0x80 ? 1 : (b >> 5) == 0x6 ? 2 : (b >> 4) == 0xE ? 3 : (b >> 3) == 0x1E ? 4 : 0;
  if (len == 0 || pos + len > text.size()) return 0;
  cp = len == 1 ? b : len == 2 ? (b & 0x1F) : len == 3 ? (b & 0x0F) : (b & 0x07);
  for (size_t k = 1; k < len; ++k) {
    auto c = static_cast<unsigned char>(text[pos + k]);
    if ((c >> 6) != 0x2) return 0;
    cp = (cp << 6) | (c & 0x3F);
  }
  return len;
}

// Matches ":([+-]?[.\d]+)\)" at text[pos] (text[pos] == ':'). On success returns the match
// length and the captured number with its digits turned into ASCII; 0 otherwise.
size_t match_weight(std::string_view text, size_t pos, std::string& number) {
  size_t i = pos + 1;
  number.clear();
  if (i < text.size() && (text[i] == '+' || text[i] == '-')) number += text[i++];
  size_t body = 0;
  while (i < text.size()) {
    if (text[i] == '.') {
      number += '.';
      ++i;
      ++body;
      continue;
    }
    char32_t cp = 0;
    size_t len = decode_at(text, i, cp);
    int value = len ? digit_value(cp) : -1;
    if (value < 0) break;
    number += static_cast<char>('0' + value);
    i += len;
    ++body;
  }
  if (body == 0 || i >= text.size() || text[i] != ')') return 0;
  return i + 1 - pos;
}

// Python's float() on what match_weight captured: digits with at most one '.', at least one digit.
double to_double(const std::string& number, std::string_view prompt, size_t pos) {
  size_t start = (!number.empty() && (number[0] == '+' || number[0] == '-')) ? 1 : 0;
  size_t dots = 0, digits = 0;
  for (size_t k = start; k < number.size(); ++k) (number[k] == '.' ? dots : digits)++;
  if (dots <= 1 && digits > 0) {
    const char* first = number.data() + start;
    const char* last = number.data() + number.size();
    double value = 0.0;
    auto [ptr, ec] = std::from_chars(first, last, value);
    if (ec == std::errc::result_out_of_range) {
      // Python rounds these to inf or to 0.0 rather than failing: a non-zero integer part
      // means the number was too large, otherwise too small.
      size_t nonzero = std::string_view(first, last - first).find_first_not_of('0');
      bool huge = nonzero != std::string_view::npos && first[nonzero] != '.';
      value = huge ? std::numeric_limits<double>::infinity() : 0.0;
      ptr = last;
      ec = std::errc();
    }
    if (ec == std::errc() && ptr == last) return number[0] == '-' ? -value : value;
  }
  throw std::invalid_argument("prompt weight '" + number + "' at byte " + std::to_string(pos) +
                              " of \"" + std::string(prompt) +
                              "\" is not a number; write it like (word:1.2), or escape the "
                              "brackets as \\( \\) to keep them as text");
}

bool special(char c) {
  return c == '\\' || c == '(' || c == ')' || c == '[' || c == ']' || c == ':';
}

std::string insert_break_escapes(std::string_view prompt) {
  // The reference rewrites every "BREAK" (even inside a word) as "\BREAK\": the lone
  // backslashes become empty runs, which keeps BREAK a run of its own.
  std::string out;
  size_t pos = 0;
  while (true) {
    size_t hit = prompt.find("BREAK", pos);
    if (hit == std::string_view::npos) break;
    out.append(prompt.substr(pos, hit - pos));
    out += "\\BREAK\\";
    pos = hit + 5;
  }
  out.append(prompt.substr(pos));
  return out;
}

std::string_view strip_ascii(std::string_view s) {
  const char* ws = " \t\n\r\f\v";
  size_t b = s.find_first_not_of(ws);
  if (b == std::string_view::npos) return {};
  return s.substr(b, s.find_last_not_of(ws) - b + 1);
}

}  // namespace

bool is_break(const WeightedText& segment) { return strip_ascii(segment.text) == "BREAK"; }

std::vector<WeightedText> parse_weights(std::string_view prompt, const ParseOptions& options) {
  const std::string rewritten = options.break_keyword ? insert_break_escapes(prompt) : std::string(prompt);
  const std::string_view text = rewritten;

  std::vector<WeightedText> res;
  std::vector<size_t> round, square;
  constexpr double kRound = 1.1;
  constexpr double kSquare = 1 / 1.1;
  auto multiply_range = [&res](size_t start, double m) {
    for (size_t p = start; p < res.size(); ++p) res[p].weight *= m;
  };

  std::string number;
  size_t i = 0;
  while (i < text.size()) {
    char c = text[i];
    if (c == '\\') {
      // "\(" "\)" "\[" "\]" "\\" give the character; a lone backslash gives nothing.
      char n = i + 1 < text.size() ? text[i + 1] : '\0';
      if (n == '(' || n == ')' || n == '[' || n == ']' || n == '\\') {
        res.push_back({std::string(1, n), 1.0});
        i += 2;
      } else {
        res.push_back({"", 1.0});
        i += 1;
      }
    } else if (c == '(') {
      round.push_back(res.size());
      ++i;
    } else if (c == '[') {
      square.push_back(res.size());
      ++i;
    } else if (c == ':') {
      size_t len = match_weight(text, i, number);
      if (len == 0) {  // a lone colon is text
        res.push_back({":", 1.0});
        i += 1;
      } else if (!round.empty()) {
        double w = to_double(number, prompt, i);
        multiply_range(round.back(), w);
        round.pop_back();
        i += len;
      } else {  // ":1.2)" with no open "(" stays text, the ")" included
        res.push_back({std::string(text.substr(i, len)), 1.0});
        i += len;
      }
    } else if (c == ')') {
      if (!round.empty()) {
        multiply_range(round.back(), kRound);
        round.pop_back();
      } else {
        res.push_back({")", 1.0});
      }
      ++i;
    } else if (c == ']') {
      if (!square.empty()) {
        multiply_range(square.back(), kSquare);
        square.pop_back();
      } else {
        res.push_back({"]", 1.0});
      }
      ++i;
    } else {
      size_t j = i;
      while (j < text.size() && !special(text[j])) ++j;
      res.push_back({std::string(text.substr(i, j - i)), 1.0});
      i = j;
    }
  }

  // Brackets left open apply to everything after them, innermost last as in the reference.
  for (size_t pos : round) multiply_range(pos, kRound);
  for (size_t pos : square) multiply_range(pos, kSquare);

  if (res.empty()) res.push_back({"", 1.0});

  size_t k = 0;
  while (k + 1 < res.size()) {
    bool keep_apart = options.break_keyword && (is_break(res[k]) || is_break(res[k + 1]));
    if (res[k].weight == res[k + 1].weight && !keep_apart) {
      res[k].text += res[k + 1].text;
      res.erase(res.begin() + static_cast<std::ptrdiff_t>(k) + 1);
    } else {
      ++k;
    }
  }
  return res;
}

}  // namespace sumi::prompt
