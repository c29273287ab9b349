#include "sumi/datasets/caption.h"

#include <cmath>
#include <fstream>
#include <sstream>
#include <stdexcept>
#include <vector>

#include "sumi/datasets/random.h"

namespace sumi::datasets {
namespace fs = std::filesystem;

std::string strip(const std::string& s) {
  const char* ws = " \t\n\r\f\v";
  const auto b = s.find_first_not_of(ws);
  if (b == std::string::npos) return "";
  const auto e = s.find_last_not_of(ws);
  return s.substr(b, e - b + 1);
}

namespace {

bool valid_utf8(const std::string& s) {
  std::size_t i = 0;
  while (i < s.size()) {
    const unsigned char c = static_cast<unsigned char>(s[i]);
    const int n = c < 0x80 ? 0 : (c >> 5) == 0x6 ? 1 : (c >> 4) == 0xE ? 2 : (c >> 3) == 0x1E ? 3 : -1;
    if (n < 0) return false;
    for (int k = 1; k <= n; ++k)
      if (i + k >= s.size() || (static_cast<unsigned char>(s[i + k]) >> 6) != 0x2) return false;
    i += static_cast<std::size_t>(n) + 1;
  }
  return true;
}

std::vector<std::string> split(const std::string& s, const std::string& sep) {
  std::vector<std::string> out;
  if (sep.empty()) return {s};
  std::size_t start = 0;
  for (;;) {
    const auto p = s.find(sep, start);
    if (p == std::string::npos) break;
    out.push_back(s.substr(start, p - start));
    start = p + sep.size();
  }
  out.push_back(s.substr(start));
  return out;
}

std::vector<std::string> stripped_nonempty(const std::string& s, const std::string& sep) {
  std::vector<std::string> out;
  for (auto& t : split(s, sep)) {
    auto v = strip(t);
    if (!v.empty()) out.push_back(std::move(v));
  }
  return out;
}

std::string replace_all(std::string s, const std::string& from, const std::string& to) {
  if (from.empty()) return s;
  for (std::size_t p = s.find(from); p != std::string::npos; p = s.find(from, p + to.size())) s.replace(p, from.size(), to);
  return s;
}

// kohya's wildcards: a random line of a multi-line caption, then every "{a|b|c}" replaced by
// one of its options ("{{" and "}}" stand for literal braces).
std::string expand_wildcards(std::string caption, std::mt19937_64& rng) {
  if (caption.find('\n') != std::string::npos) {
    const auto lines = split(caption, "\n");
    caption = lines[static_cast<std::size_t>(uniform_below(rng, lines.size()))];
  }
  // Escaped braces become private markers that cannot occur in the text.
  std::string open = "\x01", close = "\x02";
  while (caption.find(open) != std::string::npos || caption.find(close) != std::string::npos) open += "\x01", close += "\x02";
  caption = replace_all(replace_all(caption, "{{", open), "}}", close);
  std::string out;
  for (std::size_t i = 0; i < caption.size();) {
    const auto j = caption[i] == '{' ? caption.find('}', i + 1) : std::string::npos;
    if (j == std::string::npos || j == i + 1) {  // not "{" + one or more non-"}" + "}"
      out += caption[i++];
      continue;
    }
    const auto options = split(caption.substr(i + 1, j - i - 1), "|");
    out += options[static_cast<std::size_t>(uniform_below(rng, options.size()))];
    i = j + 1;
  }
  return replace_all(replace_all(out, open, "{"), close, "}");
}

}  // namespace

std::optional<std::string> read_caption_file(const fs::path& image, const std::string& extension_in, bool all_lines) {
  std::string extension = extension_in;
  if (!extension.empty() && extension[0] != '.') extension = "." + extension;
  const fs::path stem = image.parent_path() / image.stem();
  std::vector<fs::path> candidates{fs::path(stem.string() + extension)};
  // Face-crop tools name outputs "<name>_<4 numbers>": their caption may be the original's.
  const std::string name = image.stem().string();
  auto fields = split(name, "_");
  if (fields.size() >= 5) {
    std::string base = fields[0];
    for (std::size_t i = 1; i + 4 < fields.size(); ++i) base += "_" + fields[i];
    candidates.push_back(image.parent_path() / (base + extension));
  }
  for (const auto& path : candidates) {
    std::error_code ec;
    if (!fs::is_regular_file(path, ec)) continue;
    std::ifstream in(path, std::ios::binary);
    if (!in) throw std::runtime_error("cannot read caption file " + path.string());
    std::ostringstream ss;
    ss << in.rdbuf();
    std::string text = ss.str();
    if (in.bad()) throw std::runtime_error("cannot read caption file " + path.string());
    if (text.size() >= 3 && text.compare(0, 3, "\xEF\xBB\xBF") == 0) text.erase(0, 3);  // BOM
    if (!valid_utf8(text))
      throw std::runtime_error("caption file " + path.string() + " is not valid UTF-8; re-save it as UTF-8");
    if (text.empty()) throw std::runtime_error("caption file " + path.string() + " is empty; write a caption or delete it");
    if (all_lines) {
      std::string joined;
      for (const auto& line : split(text, "\n")) {
        const auto l = strip(line);
        if (!l.empty()) joined += (joined.empty() ? "" : "\n") + l;
      }
      return joined;
    }
    const auto nl = text.find('\n');
    return strip(nl == std::string::npos ? text : text.substr(0, nl));
  }
  return std::nullopt;
}

std::string process_caption(const std::string& caption_in, const CaptionOptions& opt, const CaptionStep& at,
                            std::mt19937_64& rng) {
  std::string caption = caption_in;
  if (!opt.prefix.empty()) caption = opt.prefix + " " + caption;
  if (!opt.suffix.empty()) caption = caption + " " + opt.suffix;

  bool drop = opt.dropout_rate > 0 && uniform01(rng) < opt.dropout_rate;
  drop = drop || (opt.dropout_every_n_epochs > 0 && at.epoch % opt.dropout_every_n_epochs == 0);
  if (drop) return "";

  if (opt.enable_wildcard) {
    caption = expand_wildcards(caption, rng);
  } else {
    const auto nl = caption.find('\n');
    if (nl != std::string::npos) caption = caption.substr(0, nl);
  }

  if (opt.shuffle || opt.token_warmup_step > 0 || opt.tag_dropout_rate > 0) {
    std::vector<std::string> fixed, flex, fixed_suffix;
    const std::string& ks = opt.keep_tokens_separator;
    if (!ks.empty() && caption.find(ks) != std::string::npos) {
      // "fixed ||| flexible ||| fixed suffix": only the middle part is shuffled / dropped.
      const auto p = caption.find(ks);
      std::string fixed_part = caption.substr(0, p), flex_part = caption.substr(p + ks.size());
      const auto q = flex_part.find(ks);
      if (q != std::string::npos) {
        fixed_suffix = stripped_nonempty(flex_part.substr(q + ks.size()), opt.separator);
        flex_part = flex_part.substr(0, q);
      }
      fixed = stripped_nonempty(fixed_part, opt.separator);
      flex = stripped_nonempty(flex_part, opt.separator);
    } else {
      for (auto& t : split(strip(caption), opt.separator)) flex.push_back(strip(t));
      if (opt.keep_tokens > 0) {
        const std::size_t k = std::min<std::size_t>(static_cast<std::size_t>(opt.keep_tokens), flex.size());
        fixed.assign(flex.begin(), flex.begin() + static_cast<std::ptrdiff_t>(k));
        flex.erase(flex.begin(), flex.begin() + static_cast<std::ptrdiff_t>(k));
      }
    }

    // A warmup step below 1 is a fraction of the run (kohya rewrites it on first use).
    double warmup = opt.token_warmup_step;
    if (warmup < 1) warmup = std::floor(warmup * static_cast<double>(at.max_train_steps));
    if (warmup != 0 && static_cast<double>(at.step) < warmup) {
      const double per_step = (static_cast<double>(flex.size()) - opt.token_warmup_min) / warmup;
      long long len = static_cast<long long>(std::floor(static_cast<double>(at.step) * per_step)) + opt.token_warmup_min;
      if (len < 0) len = std::max<long long>(0, static_cast<long long>(flex.size()) + len);  // Python slice semantics
      if (static_cast<std::size_t>(len) < flex.size()) flex.resize(static_cast<std::size_t>(len));
    }

    if (opt.shuffle) shuffle(flex, rng);
    if (opt.tag_dropout_rate > 0) {
      std::vector<std::string> kept;
      for (auto& t : flex)
        if (uniform01(rng) >= opt.tag_dropout_rate) kept.push_back(std::move(t));
      flex = std::move(kept);
    }

    std::vector<std::string> all = std::move(fixed);
    all.insert(all.end(), flex.begin(), flex.end());
    all.insert(all.end(), fixed_suffix.begin(), fixed_suffix.end());
    std::string joined;
    for (std::size_t i = 0; i < all.size(); ++i) joined += (i ? ", " : "") + all[i];
    caption = joined;
  }

  if (!opt.secondary_separator.empty()) caption = replace_all(caption, opt.secondary_separator, opt.separator);
  return caption;
}

}  // namespace sumi::datasets
