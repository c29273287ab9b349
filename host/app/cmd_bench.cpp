// `sumi bench`: runs sumi-bench, installed next to sumi (plugins/sd/bench: it builds random-weight
// SD models from the SD plugin's modules, which the host does not link). docs/performance.md.
#include "commands.h"

#include "core/error.h"

#include <unistd.h>

#include <filesystem>
#include <string>
#include <vector>

namespace sumi::app {

int cmd_bench(const std::vector<std::string>& args) {
  std::error_code ec;
  const auto self = std::filesystem::read_symlink("/proc/self/exe", ec);
  const auto bench = (ec ? std::filesystem::path("sumi") : self).parent_path() / "sumi-bench";
  if (!std::filesystem::exists(bench))
    throw host::UserError("sumi bench: " + bench.string() + " is missing (it is built and installed with sumi; rebuild)");
  std::vector<std::string> owned = {bench.string()};
  owned.insert(owned.end(), args.begin(), args.end());
  std::vector<char*> argv;
  for (auto& a : owned) argv.push_back(a.data());
  argv.push_back(nullptr);
  ::execv(bench.c_str(), argv.data());
  throw host::UserError("sumi bench: cannot run " + bench.string());
}

}  // namespace sumi::app
