#include "unicode.h"

#include <algorithm>
#include <stdexcept>
#include <string>

namespace sumi::sd::unicode {
namespace {

struct CodeRange {
  char32_t lo, hi;
};
struct CodeMap {
  char32_t cp, to;
};

#include "unicode_tables.inc"

template <std::size_t N>
bool in_ranges(const CodeRange (&table)[N], char32_t cp) {
  const CodeRange* end = table + N;
  const CodeRange* it =
      std::upper_bound(table, end, cp, [](char32_t c, const CodeRange& r) { return c < r.lo; });
  return it != table && cp <= (it - 1)->hi;
}

int combining_class(char32_t cp) {
  if (cp < 0x300) return 0;
  const CccRange* end = kCcc + sizeof(kCcc) / sizeof(kCcc[0]);
  const CccRange* it =
      std::upper_bound(kCcc, end, cp, [](char32_t c, const CccRange& r) { return c < r.lo; });
  return (it != kCcc && cp <= (it - 1)->hi) ? (it - 1)->ccc : 0;
}

// Hangul syllables decompose and compose arithmetically (Unicode ch. 3.12).
constexpr char32_t kSBase = 0xAC00, kLBase = 0x1100, kVBase = 0x1161, kTBase = 0x11A7;
constexpr char32_t kLCount = 19, kVCount = 21, kTCount = 28;
constexpr char32_t kNCount = kVCount * kTCount, kSCount = kLCount * kNCount;

void decompose(char32_t cp, std::u32string& out) {
  if (cp >= kSBase && cp < kSBase + kSCount) {
    char32_t s = cp - kSBase;
    out.push_back(kLBase + s / kNCount);
    out.push_back(kVBase + (s % kNCount) / kTCount);
    if (s % kTCount) out.push_back(kTBase + s % kTCount);
    return;
  }
  const Decomp* end = kDecomp + sizeof(kDecomp) / sizeof(kDecomp[0]);
  const Decomp* it =
      std::lower_bound(kDecomp, end, cp, [](const Decomp& d, char32_t c) { return d.cp < c; });
  if (it != end && it->cp == cp) {
    out.append(kDecompData + it->offset, it->len);
  } else {
    out.push_back(cp);
  }
}

// The primary composite of a canonical pair, or 0.
char32_t compose(char32_t a, char32_t b) {
  if (a >= kLBase && a < kLBase + kLCount && b >= kVBase && b < kVBase + kVCount)
    return kSBase + ((a - kLBase) * kVCount + (b - kVBase)) * kTCount;
  if (a >= kSBase && a < kSBase + kSCount && (a - kSBase) % kTCount == 0 && b > kTBase &&
      b < kTBase + kTCount)
    return a + (b - kTBase);
  const Compose* end = kCompose + sizeof(kCompose) / sizeof(kCompose[0]);
  const Compose* it = std::lower_bound(kCompose, end, std::make_pair(a, b),
                                       [](const Compose& c, const std::pair<char32_t, char32_t>& k) {
                                         return c.first != k.first ? c.first < k.first
                                                                   : c.second < k.second;
                                       });
  return (it != end && it->first == a && it->second == b) ? it->composite : 0;
}

char32_t simple_lower(char32_t cp) {
  if (cp < 0x80) return (cp >= 'A' && cp <= 'Z') ? cp + 32 : cp;
  const CodeMap* end = kLower + sizeof(kLower) / sizeof(kLower[0]);
  const CodeMap* it =
      std::lower_bound(kLower, end, cp, [](const CodeMap& m, char32_t c) { return m.cp < c; });
  return (it != end && it->cp == cp) ? it->to : cp;
}

// CPython's Final_Sigma test for the capital sigma at position i:
// a cased letter, then case-ignorables, then the sigma, and no cased letter after it.
bool is_final_sigma(std::u32string_view text, std::size_t i) {
  std::size_t j = i;
  char32_t c = 0;
  bool found = false;
  while (j > 0) {
    c = text[--j];
    if (!in_ranges(kCaseIgnorable, c)) {
      found = true;
      break;
    }
  }
  if (!found || !in_ranges(kCased, c)) return false;
  for (j = i + 1; j < text.size(); ++j) {
    c = text[j];
    if (!in_ranges(kCaseIgnorable, c)) return !in_ranges(kCased, c);
  }
  return true;
}

[[noreturn]] void bad_utf8(std::size_t offset, const char* what) {
  throw std::invalid_argument("CLIP tokenizer: the text is not valid UTF-8 (" + std::string(what) +
                              " at byte " + std::to_string(offset) +
                              "); prompts and captions must be UTF-8 encoded");
}

}  // namespace

std::u32string decode_utf8(std::string_view text) {
  std::u32string out;
  out.reserve(text.size());
  std::size_t i = 0;
  const std::size_t n = text.size();
  while (i < n) {
    const auto b0 = static_cast<unsigned char>(text[i]);
    if (b0 < 0x80) {
      out.push_back(b0);
      ++i;
      continue;
    }
    int len;
    char32_t cp;
    char32_t min;
    if ((b0 & 0xE0) == 0xC0) {
      len = 2, cp = b0 & 0x1F, min = 0x80;
    } else if ((b0 & 0xF0) == 0xE0) {
      len = 3, cp = b0 & 0x0F, min = 0x800;
    } else if ((b0 & 0xF8) == 0xF0) {
      len = 4, cp = b0 & 0x07, min = 0x10000;
    } else {
      bad_utf8(i, "unexpected byte");
    }
    if (i + len > n) bad_utf8(i, "truncated sequence");
    for (int k = 1; k < len; ++k) {
      const auto b = static_cast<unsigned char>(text[i + k]);
      if ((b & 0xC0) != 0x80) bad_utf8(i, "bad continuation byte");
      cp = (cp << 6) | (b & 0x3F);
    }
    if (cp < min) bad_utf8(i, "overlong encoding");
    if (cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) bad_utf8(i, "invalid code point");
    out.push_back(cp);
    i += len;
  }
  return out;
}

void append_utf8(std::string& out, char32_t cp) {
  if (cp < 0x80) {
    out.push_back(static_cast<char>(cp));
  } else if (cp < 0x800) {
    out.push_back(static_cast<char>(0xC0 | (cp >> 6)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else if (cp < 0x10000) {
    out.push_back(static_cast<char>(0xE0 | (cp >> 12)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else {
    out.push_back(static_cast<char>(0xF0 | (cp >> 18)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  }
}

std::string encode_utf8(std::u32string_view text) {
  std::string out;
  out.reserve(text.size());
  for (char32_t cp : text) append_utf8(out, cp);
  return out;
}

bool is_letter(char32_t cp) {
  if (cp < 0x80) return (cp | 32) >= 'a' && (cp | 32) <= 'z';
  return in_ranges(kLetters, cp);
}

bool is_number(char32_t cp) {
  if (cp < 0x80) return cp >= '0' && cp <= '9';
  return in_ranges(kNumbers, cp);
}

bool is_space(char32_t cp) { return in_ranges(kPySpace, cp); }

std::u32string to_lower(std::u32string_view text) {
  std::u32string out;
  out.reserve(text.size());
  for (std::size_t i = 0; i < text.size(); ++i) {
    const char32_t cp = text[i];
    if (cp == 0x130) {  // the one character whose lower case is two (i + combining dot above)
      out.push_back(U'i');
      out.push_back(0x307);
    } else if (cp == 0x3A3) {
      out.push_back(is_final_sigma(text, i) ? 0x3C2 : 0x3C3);
    } else {
      out.push_back(simple_lower(cp));
    }
  }
  return out;
}

std::u32string nfc(std::u32string_view text) {
  // Nothing below U+0300 decomposes without recomposing to itself.
  if (std::all_of(text.begin(), text.end(), [](char32_t c) { return c < 0x300; }))
    return std::u32string(text);

  std::u32string d;
  d.reserve(text.size() + 8);
  for (char32_t cp : text) decompose(cp, d);

  // Canonical ordering: stable sort of each run of non-starters by combining class.
  for (std::size_t i = 1; i < d.size(); ++i) {
    const int ci = combining_class(d[i]);
    if (ci == 0) continue;
    std::size_t j = i;
    while (j > 0) {
      const int cj = combining_class(d[j - 1]);
      if (cj <= ci) break;
      std::swap(d[j - 1], d[j]);
      --j;
    }
  }

  // Canonical composition.
  std::u32string out;
  out.reserve(d.size());
  std::size_t starter = std::u32string::npos;
  int last_class = -1;  // class of the last character kept after the starter; -1: none yet
  for (char32_t cp : d) {
    const int cc = combining_class(cp);
    if (starter != std::u32string::npos) {
      const bool blocked = last_class != -1 && (last_class == 0 || last_class >= cc);
      if (!blocked) {
        const char32_t composite = compose(out[starter], cp);
        if (composite) {
          out[starter] = composite;
          continue;
        }
      }
    }
    if (cc == 0) {
      starter = out.size();
      last_class = -1;
    } else {
      last_class = cc;
    }
    out.push_back(cp);
  }
  return out;
}

std::string_view width_fix(char32_t cp) {
  if (cp != 0x3000 && (cp < 0xFF01 || cp > 0xFFEF)) return {};
  const CharToText* end = kWidthMap + sizeof(kWidthMap) / sizeof(kWidthMap[0]);
  const CharToText* it = std::find_if(kWidthMap, end, [cp](const CharToText& m) { return m.cp == cp; });
  return it != end ? std::string_view(it->text) : std::string_view();
}

}  // namespace sumi::sd::unicode
