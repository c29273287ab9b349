// sumi-bench (run as `sumi bench`): the machine's bf16 / fp32 peaks and the SD jobs measured
// against them (docs/performance.md). It builds random-weight SD models from sumi_sd_nn, the SD
// plugin's own modules, so it lives beside the plugin: the host only forwards `sumi bench` here.
#include <ATen/Parallel.h>

#include <boost/program_options.hpp>

#include <cstdio>
#include <fstream>
#include <iostream>
#include <sstream>
#include <thread>

#include "bench.h"

namespace po = boost::program_options;

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

int run(int argc, char** argv) {
  sumi::bench::Options b;
  std::string jobs;
  int threads = 0;
  po::options_description desc("sumi bench options");
  desc.add_options()("help,h", "show this help")("model", po::value<std::string>(&b.model)->default_value("sd15"), "sd15 or sdxl")(
      "size", po::value<int64_t>(&b.size)->default_value(0), "image side in pixels (0: 512 for sd15, 1024 for sdxl)")(
      "steps", po::value<int>(&b.steps)->default_value(3), "timed iterations per job, after one warm-up")(
      "precision", po::value<std::string>(&b.precision)->default_value("bf16"), "bf16 or fp32")(
      "frozen_fp32", po::bool_switch(&b.frozen_fp32),
      "LoRA step: keep the frozen base in fp32 under bf16 autocast (the old --mixed_precision bf16 path)")(
      "jobs", po::value<std::string>(&jobs)->default_value("peak,unet,lora,cfg"), "comma-separated: peak, unet, lora, cfg")(
      "tiny", po::bool_switch(&b.tiny), "the tiny test fixtures' sizes (a smoke run of seconds)")(
      "threads", po::value<int>(&threads)->default_value(0), "CPU threads (0 = all cores)")(
      "device", po::value<std::string>(&b.device), "cpu, cuda or cuda:N (default: CUDA when this build has it and a GPU is present)");
  po::variables_map vm;
  try {
    po::store(po::command_line_parser(argc, argv).options(desc).run(), vm);
    po::notify(vm);
  } catch (const po::error& e) {
    throw std::invalid_argument(std::string("sumi bench: ") + e.what());
  }
  if (vm.count("help")) {
    std::cout << "usage: sumi bench [--model sd15|sdxl] [--size PX] [--steps N] [--threads N] [--device D] [--tiny]\n\n"
              << desc;
    return 0;
  }
  b.jobs.clear();
  std::stringstream ss(jobs);
  for (std::string j; std::getline(ss, j, ',');)
    if (!j.empty()) b.jobs.push_back(j);
  if (threads <= 0) threads = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  at::set_num_threads(threads);
  std::printf("sumi bench: %s, %d threads\n", cpu_model().c_str(), threads);
  sumi::bench::run(b);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return run(argc, argv);
  } catch (const std::invalid_argument& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 2;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
}
