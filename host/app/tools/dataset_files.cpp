#include "app/tools/dataset_files.h"

#include "core/error.h"

#include <algorithm>
#include <fstream>
#include <sstream>
#include <system_error>

#include <unistd.h>

namespace fs = std::filesystem;

namespace sumi::app::tools {

namespace {

std::vector<std::string> split_parts(const std::string& p) {
  std::vector<std::string> parts;
  std::string cur;
  for (char c : p) {
    if (c == '/') {
      if (!cur.empty() && cur != ".") parts.push_back(cur);
      cur.clear();
    } else {
      cur += c;
    }
  }
  if (!cur.empty() && cur != ".") parts.push_back(cur);
  return parts;
}

bool is_kohya_image_name(const std::string& name) {
  static const char* const kExts[] = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".PNG", ".JPG", ".JPEG", ".WEBP", ".BMP"};
  for (const char* e : kExts) {
    const std::string ext(e);
    if (name.size() >= ext.size() && name.compare(name.size() - ext.size(), ext.size(), ext) == 0) return true;
  }
  return false;
}

// Decodes one UTF-8 sequence at s[i]; returns its length, 0 when invalid.
size_t utf8_seq(const std::string& s, size_t i, char32_t& cp) {
  const auto b = [&](size_t k) { return static_cast<unsigned char>(s[k]); };
  const unsigned char c = b(i);
  size_t n;
  if (c < 0x80) {
    cp = c;
    return 1;
  } else if ((c & 0xe0) == 0xc0) {
    n = 2;
    cp = c & 0x1f;
  } else if ((c & 0xf0) == 0xe0) {
    n = 3;
    cp = c & 0x0f;
  } else if ((c & 0xf8) == 0xf0) {
    n = 4;
    cp = c & 0x07;
  } else {
    return 0;
  }
  if (i + n > s.size()) return 0;
  for (size_t k = 1; k < n; ++k) {
    if ((b(i + k) & 0xc0) != 0x80) return 0;
    cp = (cp << 6) | (b(i + k) & 0x3f);
  }
  static const char32_t kMin[] = {0, 0, 0x80, 0x800, 0x10000};
  if (cp < kMin[n] || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) return 0;
  return n;
}

bool py_space(char32_t c) {
  return (c >= 0x09 && c <= 0x0d) || (c >= 0x1c && c <= 0x20) || c == 0x85 || c == 0xa0 || c == 0x1680 ||
         (c >= 0x2000 && c <= 0x200a) || c == 0x2028 || c == 0x2029 || c == 0x202f || c == 0x205f || c == 0x3000;
}

}  // namespace

std::string python_path(const std::string& p) {
  std::string root;
  if (!p.empty() && p[0] == '/') root = (p.size() > 1 && p[1] == '/' && (p.size() == 2 || p[2] != '/')) ? "//" : "/";
  std::string out = root;
  const auto parts = split_parts(p);
  for (size_t i = 0; i < parts.size(); ++i) out += (i ? "/" : "") + parts[i];
  return out.empty() ? "." : out;
}

std::vector<std::string> kohya_glob_images(const std::string& dir, bool recursive, const std::string& flag) {
  std::error_code ec;
  if (!fs::is_directory(dir, ec))
    throw host::UserError(flag + " '" + dir + "' is not a folder (expected the folder of training images)");
  std::vector<std::vector<std::string>> found;  // relative parts
  auto add = [&](const fs::path& p) {
    const std::string rel = fs::relative(p, dir, ec).generic_string();
    found.push_back(split_parts(rel));
  };
  if (recursive) {
    for (auto it = fs::recursive_directory_iterator(dir, fs::directory_options::skip_permission_denied, ec);
         it != fs::recursive_directory_iterator(); it.increment(ec)) {
      if (ec) break;
      if (it->is_regular_file(ec) && is_kohya_image_name(it->path().filename().string())) add(it->path());
    }
  } else {
    for (const auto& e : fs::directory_iterator(dir, ec))
      if (e.is_regular_file(ec) && is_kohya_image_name(e.path().filename().string())) add(e.path());
  }
  if (ec) throw host::UserError("cannot list " + flag + " '" + dir + "': " + ec.message());
  std::sort(found.begin(), found.end());  // Python compares Path objects part by part
  const std::string base = python_path(dir);
  std::vector<std::string> out;
  for (const auto& parts : found) {
    std::string s = base == "." ? "" : base;
    for (const auto& part : parts) s += (s.empty() || s.back() == '/' ? "" : "/") + part;
    out.push_back(s);
  }
  return out;
}

std::string path_stem(const std::string& p) {
  const std::string name = fs::path(p).filename().string();
  const auto dot = name.rfind('.');
  if (dot == std::string::npos || dot == 0 || dot + 1 == name.size()) return name;
  return name.substr(0, dot);
}

std::string with_suffix(const std::string& p, const std::string& ext, const std::string& flag) {
  if (ext.size() < 2 || ext[0] != '.' || ext.find('/') != std::string::npos)
    throw host::UserError(flag + " '" + ext + "' is not a file extension: it must start with a dot, e.g. .txt (kohya refuses it too)");
  const fs::path path(p);
  const std::string parent = p.substr(0, p.size() - path.filename().string().size());
  return parent + path_stem(p) + ext;
}

std::string read_text_utf8(const std::string& path, const std::string& what) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw host::UserError("cannot open " + path + " (" + what + "): no such file or not readable");
  std::ostringstream ss;
  ss << in.rdbuf();
  const std::string raw = ss.str();
  std::string out;
  out.reserve(raw.size());
  for (size_t i = 0; i < raw.size();) {
    char32_t cp;
    const size_t n = utf8_seq(raw, i, cp);
    if (n == 0)
      throw host::UserError(path + " (" + what + ") is not UTF-8 text: invalid byte at offset " + std::to_string(i) +
                            "; save it as UTF-8");
    if (raw[i] == '\r') {
      out += '\n';
      if (i + 1 < raw.size() && raw[i + 1] == '\n') ++i;
      ++i;
      continue;
    }
    out.append(raw, i, n);
    i += n;
  }
  return out;
}

std::string py_strip(const std::string& s) {
  const std::u32string u = utf8_to_u32(s);
  size_t b = 0, e = u.size();
  while (b < e && py_space(u[b])) ++b;
  while (e > b && py_space(u[e - 1])) --e;
  return u32_to_utf8(u.substr(b, e - b));
}

MetadataJson read_metadata_json(const std::string& path, const std::string& flag) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw host::UserError(flag + " '" + path + "': no such file or not readable (expected kohya's metadata JSON)");
  MetadataJson md;
  try {
    md = MetadataJson::parse(in);
  } catch (const nlohmann::json::exception& e) {
    throw host::UserError(flag + " '" + path + "' is not valid JSON: " + e.what());
  }
  if (!md.is_object())
    throw host::UserError(flag + " '" + path + "' is not kohya's metadata: expected an object of image key -> {\"caption\", \"tags\", ...}");
  return md;
}

std::string python_json_dumps(const MetadataJson& metadata) {
  // nlohmann's indented output with ASCII escapes is json.dumps(indent=2)'s: ": " after keys,
  // "," at line ends, \uXXXX (lower-case hex, surrogate pairs) for non-ASCII and DEL.
  return metadata.dump(2, ' ', true);
}

void write_metadata_json(const std::string& path, const MetadataJson& metadata) {
  write_file_atomic(path, python_json_dumps(metadata));
}

void write_file_atomic(const std::string& path, const std::string& bytes) {
  const std::string tmp = path + ".tmp-" + std::to_string(::getpid());
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    if (!out) throw host::UserError("cannot write " + path + ": cannot create " + tmp + " (does the folder exist and is it writable?)");
    out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
    out.close();
    if (!out) {
      std::error_code ec;
      fs::remove(tmp, ec);
      throw host::UserError("cannot write " + path + " (disk full?)");
    }
  }
  std::error_code ec;
  fs::rename(tmp, path, ec);
  if (ec) {
    fs::remove(tmp, ec);
    throw host::UserError("cannot write " + path + ": " + ec.message());
  }
}

std::u32string utf8_to_u32(const std::string& s) {
  std::u32string out;
  for (size_t i = 0; i < s.size();) {
    char32_t cp;
    size_t n = utf8_seq(s, i, cp);
    if (n == 0) {
      cp = 0xfffd;
      n = 1;
    }
    out += cp;
    i += n;
  }
  return out;
}

std::string u32_to_utf8(const std::u32string& s) {
  std::string out;
  for (char32_t c : s) {
    if (c < 0x80) {
      out += static_cast<char>(c);
    } else if (c < 0x800) {
      out += static_cast<char>(0xc0 | (c >> 6));
      out += static_cast<char>(0x80 | (c & 0x3f));
    } else if (c < 0x10000) {
      out += static_cast<char>(0xe0 | (c >> 12));
      out += static_cast<char>(0x80 | ((c >> 6) & 0x3f));
      out += static_cast<char>(0x80 | (c & 0x3f));
    } else {
      out += static_cast<char>(0xf0 | (c >> 18));
      out += static_cast<char>(0x80 | ((c >> 12) & 0x3f));
      out += static_cast<char>(0x80 | ((c >> 6) & 0x3f));
      out += static_cast<char>(0x80 | (c & 0x3f));
    }
  }
  return out;
}

}  // namespace sumi::app::tools
