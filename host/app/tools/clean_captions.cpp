// `sumi clean_captions_and_tags`: kohya's finetune/clean_captions_and_tags.py. The tag rules
// are kohya's regular expressions, matched here by hand on code points (Python's `\w` is
// Unicode), with re.findall / re.sub's leftmost, non-overlapping scan.
#include "app/tools/caption_cleaning.h"
#include "app/tools/tools.h"

#include "app/tools/dataset_files.h"
#include "app/tools/tool_args.h"
#include "core/error.h"
#include "core/progress.h"

#include <clocale>
#include <cwctype>
#include <filesystem>
#include <functional>
#include <iostream>
#include <locale.h>
#include <optional>

namespace sumi::app::tools {

namespace {

using U = std::u32string;
constexpr size_t npos = U::npos;

U u(const char* s) { return utf8_to_u32(s); }

// Python's \w on a str: alphanumeric in Unicode, or "_".
bool word_char(char32_t c) {
  if (c < 0x80) return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_';
  static const locale_t utf8 = newlocale(LC_CTYPE_MASK, "C.UTF-8", static_cast<locale_t>(nullptr));
  return utf8 && iswalnum_l(static_cast<wint_t>(c), utf8);
}

size_t word_run(const U& s, size_t p, bool dash) {
  while (p < s.size() && (word_char(s[p]) || (dash && s[p] == '-'))) ++p;
  return p;
}

bool lit_at(const U& s, size_t p, const U& t) { return p <= s.size() && s.compare(p, t.size(), t) == 0; }

// One alternative of a pattern: an optional leading run of [\w-]+ and a literal after it.
// (Each run is followed by a space or a comma, so the greedy run never needs backtracking.)
struct Alt {
  bool run = false;
  U literal;
};

// `, (alt|alt|...), ` as a matcher: the end of a match starting at i, or npos.
struct Pattern {
  std::vector<Alt> alts;
  size_t match(const U& s, size_t i) const {
    static const U sep = u(", ");
    if (!lit_at(s, i, sep)) return npos;
    for (const Alt& a : alts) {
      size_t p = i + 2;
      if (a.run) {
        const size_t e = word_run(s, p, true);
        if (e == p) continue;
        p = e;
      }
      if (!lit_at(s, p, a.literal)) continue;
      p += a.literal.size();
      if (lit_at(s, p, sep)) return p + 2;
    }
    return npos;
  }
  // re.finditer's spans.
  std::vector<std::pair<size_t, size_t>> find_all(const U& s) const {
    std::vector<std::pair<size_t, size_t>> out;
    for (size_t i = 0; i < s.size();) {
      const size_t e = match(s, i);
      if (e != npos) {
        out.emplace_back(i, e);
        i = e;
      } else {
        ++i;
      }
    }
    return out;
  }
  U sub(const U& s, const U& with) const {
    U out;
    size_t last = 0;
    for (const auto& [b, e] : find_all(s)) {
      out.append(s, last, b - last);
      out += with;
      last = e;
    }
    out.append(s, last, npos);
    return out;
  }
};

Pattern words(std::initializer_list<const char*> literals) {
  Pattern p;
  for (const char* l : literals) p.alts.push_back({false, u(l)});
  return p;
}
Alt run_then(const char* literal) { return {true, u(literal)}; }

const Pattern& hair_length() {
  static const Pattern p = words({"long hair", "short hair", "medium hair"});
  return p;
}
const Pattern& hair_cut() {
  static const Pattern p = words({"bob cut", "hime cut"});
  return p;
}
const Pattern& hair_colour() {
  static const Pattern p{{run_then(" hair")}};
  return p;
}
const Pattern& single_word() {
  static const Pattern p{{run_then(""), {false, u("hair ornament")}}};
  return p;
}
const std::vector<Pattern>& remove_in_multi() {
  static const std::vector<Pattern> v = [] {
    std::vector<Pattern> r;
    r.push_back(hair_length());
    r.push_back(hair_cut());
    r.push_back(Pattern{{run_then(" eyes")}});
    r.push_back(Pattern{{run_then(" sleeves"), {false, u("sleeveless")}}});
    Pattern style;
    for (const char* l : {"ponytail", "braid", "ahoge", "twintails"}) style.alts.push_back({false, u(l)});
    style.alts.push_back(run_then(" bun"));
    for (const char* l : {"single hair bun", "single side bun", "two side up", "two tails"}) style.alts.push_back({false, u(l)});
    style.alts.push_back(run_then(" braid"));
    style.alts.push_back({false, u("sidelocks")});
    r.push_back(style);
    return r;
  }();
  return v;
}

// re.search(f", ((\w+) )+{word}, ", s): one or more \w+ words, each followed by one space, then
// `word` and ", ".
bool longer_tag_ends_with(const U& s, const U& word) {
  static const U sep = u(", ");
  for (size_t i = 0; i + 2 <= s.size(); ++i) {
    if (!lit_at(s, i, sep)) continue;
    size_t p = i + 2;
    while (true) {
      const size_t e = word_run(s, p, false);
      if (e == p || e >= s.size() || s[e] != U' ') break;
      p = e + 1;
      if (lit_at(s, p, word) && lit_at(s, p + word.size(), sep)) return true;
    }
  }
  return false;
}

U replace_all(const U& s, const U& from, const U& to) {
  if (from.empty()) return s;
  U out;
  size_t last = 0;
  for (size_t p = s.find(from); p != npos; p = s.find(from, last)) {
    out.append(s, last, p - last);
    out += to;
    last = p + from.size();
  }
  out.append(s, last, npos);
  return out;
}

bool contains(const U& s, const char* t) { return s.find(u(t)) != npos; }

}  // namespace

CleanedTags clean_tags(const std::string& input) {
  CleanedTags out;
  U tags = utf8_to_u32(input);
  tags = replace_all(tags, u("^_^"), u("^@@@^"));
  tags = replace_all(tags, u("_"), u(" "));
  tags = replace_all(tags, u("^@@@^"), u("^_^"));

  // DeepDanbooru's ", rating:..." tail.
  const U rating = u(", rating");
  size_t parts = 1;
  for (size_t p = tags.find(rating); p != npos; p = tags.find(rating, p + rating.size())) ++parts;
  if (parts > 1) {
    out.multiple_ratings = parts > 2;
    if (out.multiple_ratings) out.rating_report = u32_to_utf8(tags);  // what kohya prints
    tags = tags.substr(0, tags.find(rating));
  }

  // Every tag between ", " and ", ", adjacent tags not sharing their separators.
  tags = u(", ") + replace_all(tags, u(", "), u(", , ")) + u(", ");

  if (contains(tags, "girls") || contains(tags, "boys")) {
    for (const Pattern& pat : remove_in_multi())
      if (pat.find_all(tags).size() > 1) tags = pat.sub(tags, U());
    // One hair length shared by everyone stays: set aside while the colours are checked.
    const auto lengths = hair_length().find_all(tags);
    U kept;
    if (!lengths.empty()) {
      kept = tags.substr(lengths[0].first, lengths[0].second - lengths[0].first);
      tags = hair_length().sub(tags, u(", @@@, "));
    }
    if (hair_colour().find_all(tags).size() > 1) tags = hair_colour().sub(tags, U());
    if (!lengths.empty()) tags = replace_all(tags, u(", @@@, "), kept);
  }

  // "shirt" beside "white shirt": the shorter goes.
  std::vector<U> found;
  for (const auto& [b, e] : single_word().find_all(tags)) found.push_back(tags.substr(b + 2, e - b - 4));
  for (const U& word : found)
    if (longer_tag_ends_with(tags, word)) tags = replace_all(tags, u(", ") + word + u(", "), U());

  tags = replace_all(tags, u(", , "), u(", "));
  if (tags.size() < 4 || !lit_at(tags, 0, u(", ")) || !lit_at(tags, tags.size() - 2, u(", "))) {
    // kohya asserts here; only a list that collapsed to ", " can get here, and it means "no tags".
    if (tags == u(", ")) {
      out.tags.clear();
      return out;
    }
    throw host::UserError("clean_captions_and_tags: internal error cleaning the tags \"" + input + "\"");
  }
  out.tags = u32_to_utf8(tags.substr(2, tags.size() - 4));
  return out;
}

std::string clean_caption(const std::string& input) {
  static const std::pair<const char*, const char*> kReplacements[] = {
      {"anime anime", "anime"},
      {"young ", ""},
      {"anime girl", "girl"},
      {"cartoon female", "girl"},
      {"cartoon lady", "girl"},
      {"cartoon character", "girl"},
      {"cartoon woman", "girl"},
      {"cartoon women", "girls"},
      {"cartoon girl", "girl"},
      {"anime female", "girl"},
      {"anime lady", "girl"},
      {"anime character", "girl"},
      {"anime woman", "girl"},
      {"anime women", "girls"},
      {"lady", "girl"},
      {"female", "girl"},
      {"woman", "girl"},
      {"women", "girls"},
      {"people", "girls"},
      {"person", "girl"},
      {"a cartoon figure", "a figure"},
      {"a cartoon image", "an image"},
      {"a cartoon picture", "a picture"},
      {"an anime cartoon image", "an image"},
      {"a cartoon anime drawing", "a drawing"},
      {"a cartoon drawing", "a drawing"},
      {"girl girl", "girl"},
  };
  U caption = utf8_to_u32(input);
  for (const auto& [from, to] : kReplacements) {
    const U f = u(from), t = u(to);
    for (U before; before != caption;) {
      before = caption;
      caption = replace_all(caption, f, t);
    }
  }
  return u32_to_utf8(caption);
}

int cmd_clean_captions_and_tags(const std::vector<std::string>& argv) {
  ToolArgs args("clean_captions_and_tags",
                "Cleans the captions and tags of kohya's metadata JSON (kohya finetune/clean_captions_and_tags.py).");
  args.positional("in_json", "metadata file to read")
      .positional("out_json", "metadata file to write")
      .positional("legacy_out_json", "kohya's old three-argument form: train_data_dir in_json out_json", false)
      .flag("debug", "print every caption and tag list that changes (FROM: / TO:)");
  if (!args.parse(argv)) return 0;
  std::string in_json = args.str("in_json"), out_json = args.str("out_json");
  if (args.given("legacy_out_json")) {
    std::cout << "WARNING: train_data_dir argument is removed. This script will not work with three arguments in future. "
                 "Please specify two arguments: in_json and out_json.\n"
                 "All captions and tags in the metadata are processed.\n";
    in_json = out_json;
    out_json = args.str("legacy_out_json");
  }
  std::error_code ec;
  if (!std::filesystem::exists(in_json, ec))
    args.fail("in_json '" + in_json + "' does not exist (expected kohya's metadata JSON, e.g. from merge_captions_to_metadata)");
  std::cout << "loading existing metadata: " << in_json << "\n";
  MetadataJson metadata = read_metadata_json(in_json, "in_json");
  const bool debug = args.on("debug");

  std::cout << "cleaning captions and tags.\n";
  sumi_progress* bar = host::progress_begin("cleaning", static_cast<int64_t>(metadata.size()));
  try {
    for (auto& [key, entry] : metadata.items()) {
      if (!entry.is_object())
        throw host::UserError(in_json + ": the entry of \"" + key + "\" is not an object (expected {\"caption\": ..., \"tags\": ...})");
      auto text = [&](const char* field) -> std::optional<std::string> {
        if (!entry.contains(field) || entry[field].is_null()) return std::nullopt;
        if (!entry[field].is_string())
          throw host::UserError(in_json + ": \"" + key + "\"." + field + " is not a string");
        return entry[field].get<std::string>();
      };
      if (auto tags = text("tags")) {
        const CleanedTags cleaned = clean_tags(*tags);
        if (cleaned.multiple_ratings) std::cout << "multiple ratings:\n" << key << " " << cleaned.rating_report << "\n";
        entry["tags"] = cleaned.tags;
        if (debug && cleaned.tags != *tags) std::cout << "FROM: " << *tags << "\nTO:   " << cleaned.tags << "\n";
      } else {
        std::cout << "image does not have tags: " << key << "\n";
      }
      if (auto caption = text("caption")) {
        const std::string cleaned = clean_caption(*caption);
        entry["caption"] = cleaned;
        if (debug && cleaned != *caption) std::cout << "FROM: " << *caption << "\nTO:   " << cleaned << "\n";
      } else {
        std::cout << "image does not have caption: " << key << "\n";
      }
      host::progress_update(bar, 1, nullptr);
    }
  } catch (...) {
    host::progress_end(bar);
    throw;
  }
  host::progress_end(bar);
  std::cout << "writing metadata: " << out_json << "\n";
  write_metadata_json(out_json, metadata);
  std::cout << "done!\n";
  return 0;
}

}  // namespace sumi::app::tools
