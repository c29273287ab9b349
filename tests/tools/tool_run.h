// What the tools tests share: running `sumi <tool> args...` in-process with its stdout captured,
// and a scratch path under the build tree. Include after <doctest/doctest.h>.
#pragma once

#include "app/tools/tools.h"

#include <filesystem>
#include <iostream>
#include <sstream>
#include <string>
#include <vector>

namespace sumi::test {

// Runs `sumi <tool> args...` in-process; returns its stdout. The tool must exist and return 0.
inline std::string run_tool(const std::string& tool, const std::vector<std::string>& args) {
  std::ostringstream out;
  auto* old = std::cout.rdbuf(out.rdbuf());
  int rc = -1;
  bool found = false;
  try {
    found = sumi::app::tools::run_tool(tool, args, rc);
  } catch (...) {
    std::cout.rdbuf(old);
    throw;
  }
  std::cout.rdbuf(old);
  REQUIRE(found);
  REQUIRE(rc == 0);
  return out.str();
}

// A path `name` in the tools tests' scratch folder (build/tests/tools/work), with no file there yet.
inline std::string tools_scratch(const std::string& name) {
  const std::filesystem::path dir = std::filesystem::path(SUMI_BUILD_DIR) / "tests" / "tools" / "work";
  std::filesystem::create_directories(dir);
  const std::filesystem::path p = dir / name;
  std::filesystem::remove(p);
  return p.string();
}

}  // namespace sumi::test
