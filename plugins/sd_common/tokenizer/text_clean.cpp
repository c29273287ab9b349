#include "text_clean.h"

#include <algorithm>
#include <cstring>

#include "unicode.h"

namespace sumi::sd {
namespace {

#include "html_entities.inc"

// Windows-1252 for 0x80..0x9F, "sloppy": the five undefined bytes keep their Latin-1 meaning.
// Used by ftfy's fix_c1_controls and by html.unescape for numeric references in that range.
constexpr char32_t kCp1252High[32] = {
    0x20AC, 0x0081, 0x201A, 0x0192, 0x201E, 0x2026, 0x2020, 0x2021, 0x02C6, 0x2030, 0x0160,
    0x2039, 0x0152, 0x008D, 0x017D, 0x008F, 0x0090, 0x2018, 0x2019, 0x201C, 0x201D, 0x2022,
    0x2013, 0x2014, 0x02DC, 0x2122, 0x0161, 0x203A, 0x0153, 0x009D, 0x017E, 0x0178};

bool is_ascii_alnum(char32_t c) {
  return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
}

int hex_value(char32_t c) {
  if (c >= '0' && c <= '9') return static_cast<int>(c - '0');
  if (c >= 'a' && c <= 'f') return static_cast<int>(c - 'a' + 10);
  if (c >= 'A' && c <= 'F') return static_cast<int>(c - 'A' + 10);
  return -1;
}

// html.unescape of one numeric character reference body ("#65" / "#x41"); false when
// html.unescape would not consume all of it (ftfy then keeps the text as it was).
bool numeric_reference(std::u32string_view body, std::u32string& out) {
  const bool hex = body.size() > 1 && (body[1] == 'x' || body[1] == 'X');
  const std::size_t start = hex ? 2 : 1;
  if (body.size() <= start) return false;
  unsigned long long value = 0;
  for (std::size_t i = start; i < body.size(); ++i) {
    const int d = hex ? hex_value(body[i]) : (body[i] >= '0' && body[i] <= '9' ? int(body[i] - '0') : -1);
    if (d < 0) return false;
    if (value <= 0x10FFFF) value = value * (hex ? 16 : 10) + static_cast<unsigned>(d);
  }
  const auto cp = static_cast<char32_t>(std::min<unsigned long long>(value, 0x110000));
  if (cp == 0) {
    out.push_back(0xFFFD);
  } else if (cp == 0x0D) {
    out.push_back(0x0D);
  } else if (cp >= 0x80 && cp <= 0x9F) {
    out.push_back(kCp1252High[cp - 0x80]);
  } else if ((cp >= 0xD800 && cp <= 0xDFFF) || cp > 0x10FFFF) {
    out.push_back(0xFFFD);
  } else if ((cp >= 0x1 && cp <= 0x8) || cp == 0xB || (cp >= 0xE && cp <= 0x1F) || cp == 0x7F ||
             (cp >= 0xFDD0 && cp <= 0xFDEF) || (cp & 0xFFFE) == 0xFFFE) {
    // html.unescape drops these code points
  } else if (cp == ';') {
    return false;  // ftfy keeps a reference whose expansion contains ';'
  } else {
    out.push_back(cp);
  }
  return true;
}

// ftfy.fixes.unescape_html: "&#?[0-9A-Za-z]{1,24};" replaced by its HTML5 entity (ftfy's table,
// which adds upper-cased names) or numeric reference; anything else is left alone.
std::u32string unescape_html(std::u32string_view text) {
  std::u32string out;
  out.reserve(text.size());
  std::size_t i = 0;
  while (i < text.size()) {
    if (text[i] != '&') {
      out.push_back(text[i++]);
      continue;
    }
    std::size_t j = i + 1;
    const bool numeric = j < text.size() && text[j] == '#';
    if (numeric) ++j;
    const std::size_t name_start = j;
    while (j < text.size() && j - name_start < 25 && is_ascii_alnum(text[j])) ++j;
    const std::size_t name_len = j - name_start;
    if (name_len < 1 || name_len > 24 || j >= text.size() || text[j] != ';') {
      out.push_back(text[i++]);
      continue;
    }
    const std::u32string_view whole = text.substr(i, j + 1 - i);
    std::string key;  // all ASCII by construction
    for (char32_t c : whole) key.push_back(static_cast<char>(c));
    const Entity* end = kEntities + sizeof(kEntities) / sizeof(kEntities[0]);
    const Entity* it = std::lower_bound(kEntities, end, key, [](const Entity& e, const std::string& k) {
      return std::strcmp(e.name, k.c_str()) < 0;
    });
    if (it != end && key == it->name) {
      out += unicode::decode_utf8(it->text);
    } else if (!(numeric && numeric_reference(text.substr(i + 1, j - i - 1), out))) {
      out.append(whole);
    }
    i = j + 1;
  }
  return out;
}

// ftfy's remove_terminal_escapes: ESC '[' (digits or ';')* letter.
std::u32string remove_terminal_escapes(std::u32string_view text) {
  std::u32string out;
  out.reserve(text.size());
  for (std::size_t i = 0; i < text.size(); ++i) {
    if (text[i] == 0x1B && i + 1 < text.size() && text[i + 1] == '[') {
      std::size_t j = i + 2;
      while (j < text.size() && ((text[j] >= '0' && text[j] <= '9') || text[j] == ';')) ++j;
      if (j < text.size() && ((text[j] | 32) >= 'a' && (text[j] | 32) <= 'z')) {
        i = j;
        continue;
      }
    }
    out.push_back(text[i]);
  }
  return out;
}

bool is_removed_control(char32_t c) {
  return c <= 0x08 || c == 0x0B || (c >= 0x0E && c <= 0x1F) || c == 0x7F ||
         (c >= 0x206A && c <= 0x206F) || c == 0xFEFF || (c >= 0xFFF9 && c <= 0xFFFC);
}

const char* ligature(char32_t c) {
  switch (c) {
    case 0x132: return "IJ";
    case 0x133: return "ij";
    case 0x149: return "\xCA\xBCn";  // U+02BC n
    case 0x1F1: return "DZ";
    case 0x1F2: return "Dz";
    case 0x1F3: return "dz";
    case 0x1C4: return "D\xC5\xBD";  // D U+017D
    case 0x1C5: return "D\xC5\xBE";
    case 0x1C6: return "d\xC5\xBE";
    case 0x1C7: return "LJ";
    case 0x1C8: return "Lj";
    case 0x1C9: return "lj";
    case 0x1CA: return "NJ";
    case 0x1CB: return "Nj";
    case 0x1CC: return "nj";
    case 0xFB00: return "ff";
    case 0xFB01: return "fi";
    case 0xFB02: return "fl";
    case 0xFB03: return "ffi";
    case 0xFB04: return "ffl";
    case 0xFB05: return "\xC5\xBFt";  // U+017F t
    case 0xFB06: return "st";
    default: return nullptr;
  }
}

// One pass of ftfy's character-level fixes after HTML unescaping, in ftfy's order:
// C1 controls as Windows-1252, Latin ligatures, character width, curly quotes, line breaks.
std::u32string fix_characters(std::u32string_view text) {
  std::u32string out;
  out.reserve(text.size());
  for (std::size_t i = 0; i < text.size(); ++i) {
    char32_t c = text[i];
    if (c >= 0x80 && c <= 0x9F) c = kCp1252High[c - 0x80];
    if (const char* lig = ligature(c)) {
      out += unicode::decode_utf8(lig);
      continue;
    }
    const std::string_view wide = unicode::width_fix(c);
    if (!wide.empty()) {
      out += unicode::decode_utf8(wide);
      continue;
    }
    if (c == 0x2BC || (c >= 0x2018 && c <= 0x201B)) c = '\'';
    if (c >= 0x201C && c <= 0x201F) c = '"';
    if (c == '\r' && i + 1 < text.size() && text[i + 1] == '\n') continue;  // CRLF -> LF
    if (c == '\r' || c == 0x2028 || c == 0x2029 || c == 0x85) c = '\n';
    out.push_back(c);
  }
  return out;
}

std::u32string fix_segment(std::u32string text, bool unescape) {
  // ftfy repeats its fixes until the text stops changing; a few rounds always suffice.
  for (int round = 0; round < 16; ++round) {
    std::u32string t = unescape ? unescape_html(text) : text;
    t = fix_characters(t);
    t = remove_terminal_escapes(t);
    t.erase(std::remove_if(t.begin(), t.end(), is_removed_control), t.end());
    t = unicode::nfc(t);
    if (t == text) break;
    text = std::move(t);
  }
  return text;
}

}  // namespace

std::u32string fix_text(std::u32string_view text) {
  // ftfy works line by line; HTML unescaping ("auto") stops for good at the first line that
  // contains '<', since that text may be HTML.
  std::u32string out;
  bool unescape = true;
  std::size_t pos = 0;
  while (pos < text.size()) {
    std::size_t brk = text.find(U'\n', pos);
    brk = brk == std::u32string_view::npos ? text.size() : brk + 1;
    const std::u32string_view segment = text.substr(pos, brk - pos);
    if (segment.find(U'<') != std::u32string_view::npos) unescape = false;
    out += fix_segment(std::u32string(segment), unescape);
    pos = brk;
  }
  return out;
}

std::u32string clean_text(std::u32string_view text) {
  const std::u32string fixed = fix_text(text);
  std::u32string collapsed;
  collapsed.reserve(fixed.size());
  bool in_space = false;
  for (char32_t c : fixed) {
    if (unicode::is_space(c)) {
      in_space = true;
      continue;
    }
    if (in_space && !collapsed.empty()) collapsed.push_back(U' ');
    in_space = false;
    collapsed.push_back(c);
  }
  return unicode::to_lower(collapsed);
}

}  // namespace sumi::sd
