// The source layering docs/architecture.md draws, checked on the tree itself:
//  - plugins (and the out-of-tree examples) include no host header: what they share with the host
//    is the SDK (sdk/include, sdk/io);
//  - the host includes no plugin header and its CMake targets link no library defined under
//    plugins/;
//  - the SDK's headers include nothing of sumi's outside the SDK;
//  - the host names no model family: no "sd1" / "sd2" / "sdxl" string, no kohya metadata name
//    of one (architecture "stable-diffusion-...", base model version "sd_v1..."); the model
//    plugins say those (probe, describe). kohya's --sdxl flag name is declared once, in
//    host/app/model_file.h, and passed through to the plugins' answers.
// Each rule is also run on a small synthetic tree that breaks it, so a checker that finds
// nothing is not mistaken for a clean tree.
#include <doctest/doctest.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <map>
#include <regex>
#include <set>
#include <sstream>
#include <string>
#include <vector>

namespace fs = std::filesystem;

namespace {

bool is_source(const fs::path& p) {
  const std::string e = p.extension().string();
  return e == ".h" || e == ".hpp" || e == ".cpp" || e == ".c" || e == ".inc";
}

std::string read(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

std::vector<fs::path> sources(const fs::path& dir) {
  std::vector<fs::path> out;
  if (!fs::exists(dir)) return out;
  for (const auto& e : fs::recursive_directory_iterator(dir))
    if (e.is_regular_file() && is_source(e.path())) out.push_back(e.path());
  return out;
}

// The names under which a header can be included: every trailing part of its path below `root`
// ("sd_common/nn/detect.h", "nn/detect.h", "detect.h"), or, below an include/ folder, the part
// after it ("sumi/recipe/load.h").
std::set<std::string> include_names(const fs::path& root) {
  std::set<std::string> names;
  for (const auto& p : sources(root)) {
    const std::string ext = p.extension().string();
    if (ext != ".h" && ext != ".hpp" && ext != ".inc") continue;
    const std::string rel = fs::relative(p, root).generic_string();
    const auto inc = rel.find("include/");
    if (inc != std::string::npos) {
      names.insert(rel.substr(inc + 8));
      continue;
    }
    for (size_t i = 0; i != std::string::npos; i = rel.find('/', i + 1)) names.insert(rel.substr(i == 0 ? 0 : i + 1));
  }
  return names;
}

// Quoted and angled includes of a file.
std::vector<std::string> includes_of(const fs::path& file) {
  static const std::regex re(R"(^\s*#\s*include\s*[<"]([^>"]+)[>"])");
  std::vector<std::string> out;
  std::istringstream in(read(file));
  std::string line;
  std::smatch m;
  while (std::getline(in, line))
    if (std::regex_search(line, m, re)) out.push_back(m[1]);
  return out;
}

// "file: includes X (a header of <what>)" for every include of a file under `from` that is one
// of `forbidden`'s names and not also a name `allowed` provides (its own layer's, the SDK's).
std::vector<std::string> include_violations(const fs::path& from, const std::set<std::string>& forbidden,
                                            const std::set<std::string>& allowed, const std::string& what) {
  std::vector<std::string> out;
  for (const auto& f : sources(from))
    for (const auto& inc : includes_of(f))
      if (forbidden.count(inc) && !allowed.count(inc))
        out.push_back(f.generic_string() + ": includes \"" + inc + "\" (a header of " + what + ")");
  return out;
}

// Library targets a CMakeLists.txt tree defines (add_library / sumi_add_plugin).
std::set<std::string> defined_libraries(const fs::path& dir) {
  static const std::regex re(R"((?:add_library|sumi_add_plugin)\s*\(\s*([A-Za-z0-9_:.-]+))");
  std::set<std::string> out;
  if (!fs::exists(dir)) return out;
  for (const auto& e : fs::recursive_directory_iterator(dir)) {
    if (e.path().filename() != "CMakeLists.txt") continue;
    const std::string text = read(e.path());
    for (std::sregex_iterator it(text.begin(), text.end(), re), end; it != end; ++it) out.insert((*it)[1]);
  }
  return out;
}

// "CMakeLists.txt: links X" for every target_link_libraries(...) argument under `dir` that is
// one of `libraries`.
std::vector<std::string> link_violations(const fs::path& dir, const std::set<std::string>& libraries) {
  static const std::regex call(R"(target_link_libraries\s*\(([^)]*)\))");
  static const std::regex word(R"([A-Za-z0-9_:.-]+)");
  std::vector<std::string> out;
  for (const auto& e : fs::recursive_directory_iterator(dir)) {
    if (e.path().filename() != "CMakeLists.txt") continue;
    const std::string text = read(e.path());
    for (std::sregex_iterator it(text.begin(), text.end(), call), end; it != end; ++it) {
      const std::string args = (*it)[1];
      for (std::sregex_iterator w(args.begin(), args.end(), word); w != end; ++w)
        if (libraries.count(w->str())) out.push_back(e.path().generic_string() + ": links " + w->str() + " (a plugin library)");
    }
  }
  return out;
}

struct Layers {
  std::set<std::string> host, plugins, datasets, sdk;
  explicit Layers(const fs::path& root)
      : host(include_names(root / "host")), plugins(include_names(root / "plugins")),
        datasets(include_names(root / "datasets")), sdk(include_names(root / "sdk")) {}
};

std::vector<std::string> check_tree(const fs::path& root) {
  const Layers l(root);
  std::vector<std::string> all;
  auto add = [&](std::vector<std::string> v) { all.insert(all.end(), v.begin(), v.end()); };
  // A name a layer provides itself (or the SDK does) is its own header even where the other
  // layer has a file of the same name.
  auto with = [&](const std::set<std::string>& own) {
    std::set<std::string> s = own;
    s.insert(l.sdk.begin(), l.sdk.end());
    return s;
  };
  add(include_violations(root / "plugins", l.host, with(l.plugins), "the host"));
  add(include_violations(root / "examples", l.host, with(include_names(root / "examples")), "the host"));
  add(include_violations(root / "host", l.plugins, with(l.host), "a plugin"));
  std::set<std::string> ours = l.host;
  ours.insert(l.plugins.begin(), l.plugins.end());
  ours.insert(l.datasets.begin(), l.datasets.end());
  add(include_violations(root / "sdk", ours, l.sdk, "sumi outside the SDK"));
  if (fs::exists(root / "host")) add(link_violations(root / "host", defined_libraries(root / "plugins")));
  return all;
}

// A source without its comments (// to the end of the line, /* ... */), string literals kept.
std::string without_comments(const std::string& text) {
  std::string out;
  out.reserve(text.size());
  for (size_t i = 0; i < text.size(); ++i) {
    const char c = text[i];
    if (c == '"' || c == '\'') {  // a literal, copied whole (escapes included)
      out += c;
      for (++i; i < text.size() && text[i] != c && text[i] != '\n'; ++i) {
        out += text[i];
        if (text[i] == '\\' && i + 1 < text.size()) out += text[++i];
      }
      if (i < text.size()) out += text[i];
    } else if (c == '/' && i + 1 < text.size() && text[i + 1] == '/') {
      while (i < text.size() && text[i] != '\n') ++i;
      out += '\n';
    } else if (c == '/' && i + 1 < text.size() && text[i + 1] == '*') {
      const size_t end = text.find("*/", i + 2);
      for (size_t k = i; k < std::min(end, text.size()); ++k)
        if (text[k] == '\n') out += '\n';
      i = end == std::string::npos ? text.size() : end + 1;
    } else {
      out += c;
    }
  }
  return out;
}

// "file:line: "sdxl" (a model family in the host)" for every string literal under host/ that
// names an SD family or one of kohya's metadata names for one. kohya's flag name "sdxl" is
// allowed in the one header that declares kohya's flags.
std::vector<std::string> family_literals(const fs::path& root) {
  static const std::regex literal(R"re("(sd1|sd2|sdxl|stable-diffusion[^"]*|sd_v[12][^"]*|sdxl_base[^"]*)")re");
  std::vector<std::string> out;
  for (const auto& f : sources(root / "host")) {
    std::istringstream in(without_comments(read(f)));
    std::string line;
    for (int n = 1; std::getline(in, line); ++n)
      for (std::sregex_iterator it(line.begin(), line.end(), literal), end; it != end; ++it) {
        if ((*it)[1] == "sdxl" && f.lexically_relative(root).generic_string() == "host/app/model_file.h") continue;
        out.push_back(f.generic_string() + ":" + std::to_string(n) + ": " + it->str() + " (a model family in the host)");
      }
  }
  return out;
}

void write(const fs::path& p, const std::string& text) {
  fs::create_directories(p.parent_path());
  std::ofstream(p) << text;
}

std::string joined(const std::vector<std::string>& v) {
  std::string s;
  for (const auto& x : v) s += x + "\n";
  return s;
}

}  // namespace

TEST_CASE("the tree keeps its layering: plugins -> SDK <- host, no host->plugin links, a self-contained SDK") {
  const auto violations = check_tree(SUMI_SOURCE_DIR);
  INFO(joined(violations));
  CHECK(violations.empty());
}

TEST_CASE("the layering check finds each kind of violation in a tree that has it") {
  const fs::path root = fs::path(SUMI_BUILD_DIR) / "test_layering" / "tree";
  fs::remove_all(root);
  write(root / "sdk/include/sumi/sumi.h", "#pragma once\n");
  write(root / "host/core/error.h", "#pragma once\n");
  write(root / "host/recipe/include/sumi/recipe/load.h", "#pragma once\n");
  write(root / "plugins/sd/model_files.h", "#pragma once\n");
  write(root / "plugins/sd/CMakeLists.txt", "add_library(sumi_sd_files STATIC a.cpp)\nsumi_add_plugin(sumi_sd SOURCES p.cpp)\n");
  write(root / "plugins/sd/ok.cpp", "#include <sumi/sumi.h>\n#include \"model_files.h\"\n#include <vector>\n");
  CHECK(check_tree(root).empty());

  write(root / "plugins/sd/bad.cpp", "#include \"core/error.h\"\n  #  include <sumi/recipe/load.h>\n");
  write(root / "host/app/cmd.cpp", "#include \"model_files.h\"\n");
  write(root / "host/app/CMakeLists.txt", "target_link_libraries(sumi_app PRIVATE sumi_logging sumi_sd_files)\n");
  write(root / "sdk/include/sumi/extra.hpp", "#include \"core/error.h\"\n");
  const auto v = check_tree(root);
  const std::string all = joined(v);
  INFO(all);
  CHECK(v.size() == 5);
  CHECK(all.find("bad.cpp: includes \"core/error.h\" (a header of the host)") != std::string::npos);
  CHECK(all.find("bad.cpp: includes \"sumi/recipe/load.h\" (a header of the host)") != std::string::npos);
  CHECK(all.find("cmd.cpp: includes \"model_files.h\" (a header of a plugin)") != std::string::npos);
  CHECK(all.find("CMakeLists.txt: links sumi_sd_files (a plugin library)") != std::string::npos);
  CHECK(all.find("extra.hpp: includes \"core/error.h\" (a header of sumi outside the SDK)") != std::string::npos);
  fs::remove_all(root);
}

TEST_CASE("the host names no model family: the model plugins say which component, flags and metadata names") {
  const auto found = family_literals(SUMI_SOURCE_DIR);
  INFO(joined(found));
  CHECK(found.empty());
}

TEST_CASE("the family check finds family literals in code, not in comments or the kohya flag header") {
  const fs::path root = fs::path(SUMI_BUILD_DIR) / "test_layering" / "families";
  fs::remove_all(root);
  write(root / "host/app/model_file.h", "inline constexpr const char* kKohyaSdxl = \"sdxl\";  // \"sd1\"\n");
  write(root / "host/app/ok.cpp", "// the \"sdxl\" component\n/* \"sd2\"\n \"stable-diffusion-v1\" */ auto s = \"sdxl turbo\";\n");
  CHECK(family_literals(root).empty());
  write(root / "host/app/tools/bad.cpp",
        "auto a = \"sd1\"; // \"sd2\"\nauto b = f(\"sdxl\", \"stable-diffusion-v2-512\");\nauto c = \"sd_v2_v\"; auto q = '\"';\n");
  const auto v = family_literals(root);
  const std::string all = joined(v);
  INFO(all);
  CHECK(v.size() == 4);
  CHECK(all.find("bad.cpp:1: \"sd1\"") != std::string::npos);
  CHECK(all.find("bad.cpp:2: \"sdxl\"") != std::string::npos);
  CHECK(all.find("bad.cpp:2: \"stable-diffusion-v2-512\"") != std::string::npos);
  CHECK(all.find("bad.cpp:3: \"sd_v2_v\"") != std::string::npos);
  fs::remove_all(root);
}
