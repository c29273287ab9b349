// The `sumi` executable: dispatches to a subcommand and reports user errors cleanly.
#include "commands.h"
#include "tools/tools.h"

#include <sumi/sumi.h>

#include <cstdio>
#include <cstring>
#include <exception>
#include <string>
#include <vector>

namespace {
const char* kUsage =
    "usage: sumi <command> [options]\n"
    "\n"
    "commands:\n"
    "  plugins [show NAME]   list installed plugins, or one component's parameters\n"
    "  plan --recipe R       validate a recipe (+ kohya flags) and print what a run would use\n"
    "  convert SRC DST       an SD checkpoint between single-file and diffusers forms, or to another dtype\n"
    "  fit --recipe R        demo: fit a small problem with the recipe's optimizer and LR scheduler\n"
    "  train [--recipe R] [kohya flags]   network (LoRA) training, kohya train_network.py flags\n"
    "  generate --ckpt M --prompt P   text to image (kohya gen_img flags; --help lists them)\n"
    "  bench [--model sd15|sdxl] [--tiny]   time the SD jobs against this machine's measured peaks\n"
    "\n"
    "common options: --plugin-dir DIR (repeatable), --threads N, --recipe FILE|PRESET, --help\n"
    "kohya flags (--optimizer_type, --learning_rate, --lr_scheduler, --config_file ...) override the recipe.\n";
}

int main(int argc, char** argv) {
  if (argc < 2 || !std::strcmp(argv[1], "--help") || !std::strcmp(argv[1], "-h") || !std::strcmp(argv[1], "help")) {
    std::fputs(kUsage, stdout);
    std::fputs(sumi::app::tools::tools_usage(), stdout);
    return argc < 2 ? 1 : 0;
  }
  if (!std::strcmp(argv[1], "--version")) {
    std::printf("sumi 0.1.0 (plugin ABI %d.%d)\n", SUMI_ABI_MAJOR, SUMI_ABI_MINOR);
    return 0;
  }
  const std::string cmd = argv[1];
  const std::vector<std::string> args(argv + 2, argv + argc);
  try {
    if (cmd == "plugins") return sumi::app::cmd_plugins(args);
    if (cmd == "plan") return sumi::app::cmd_plan(args);
    if (cmd == "fit") return sumi::app::cmd_fit(args);
    if (cmd == "generate") return sumi::app::cmd_generate(args);
    if (cmd == "train") return sumi::app::cmd_train(args);
    if (cmd == "convert") return sumi::app::cmd_convert(args);
    if (int rc = 0; sumi::app::tools::run_tool(cmd, args, rc)) return rc;
    if (cmd == "bench") return sumi::app::cmd_bench(args);
    std::fprintf(stderr, "sumi: unknown command '%s'\n\n%s", cmd.c_str(), kUsage);
    return 2;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "sumi: error: %s\n", e.what());
    return 2;
  }
}
