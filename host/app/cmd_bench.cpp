// `sumi bench`: the machine's bf16 / fp32 peaks and the SD jobs measured against them
// (host/app/bench, docs/performance.md).
#include "commands.h"

#include <boost/program_options.hpp>

#include <cstdio>
#include <fstream>
#include <iostream>
#include <sstream>

#include "app.h"
#include "bench/bench.h"
#include "core/error.h"
#include "core/runtime.h"

namespace po = boost::program_options;

namespace sumi::app {

namespace {

std::string cpu_model() {
  std::ifstream f("/proc/cpuinfo");
  std::string line;
  while (std::getline(f, line))
    if (line.rfind("model name", 0) == 0) {
      auto colon = line.find(':');
      return colon == std::string::npos ? line : line.substr(colon + 2);
    }
  return "unknown CPU";
}

}  // namespace

int cmd_bench(const std::vector<std::string>& args) {
  CommonOptions o;
  std::string common_help;
  const bool run = parse_common(args, o, common_help);
  bench::Options b;
  std::string jobs;
  po::options_description desc("sumi bench options");
  desc.add_options()("model", po::value<std::string>(&b.model)->default_value("sd15"), "sd15 or sdxl")(
      "size", po::value<int64_t>(&b.size)->default_value(0), "image side in pixels (0: 512 for sd15, 1024 for sdxl)")(
      "steps", po::value<int>(&b.steps)->default_value(3), "timed iterations per job, after one warm-up")(
      "precision", po::value<std::string>(&b.precision)->default_value("bf16"), "bf16 or fp32")(
      "frozen_fp32", po::bool_switch(&b.frozen_fp32),
      "LoRA step: keep the frozen base in fp32 under bf16 autocast (the old --mixed_precision bf16 path)")(
      "jobs", po::value<std::string>(&jobs)->default_value("peak,unet,lora,cfg"), "comma-separated: peak, unet, lora, cfg")(
      "tiny", po::bool_switch(&b.tiny), "the tiny test fixtures' sizes (a smoke run of seconds)");
  if (!run) {
    std::cout << "usage: sumi bench [--model sd15|sdxl] [--size PX] [--steps N] [--threads N] [--tiny]\n\n"
              << desc << "\n" << common_help;
    return 0;
  }
  po::variables_map vm;
  try {
    po::store(po::command_line_parser(o.rest).options(desc).run(), vm);
    po::notify(vm);
  } catch (const po::error& e) {
    throw host::UserError(std::string("sumi bench: ") + e.what());
  }
  b.jobs.clear();
  std::stringstream ss(jobs);
  for (std::string j; std::getline(ss, j, ',');)
    if (!j.empty()) b.jobs.push_back(j);
  const int threads = host::init_runtime(o.threads);
  std::printf("sumi bench: %s, %d threads\n", cpu_model().c_str(), threads);
  bench::run(b);
  return 0;
}

}  // namespace sumi::app
