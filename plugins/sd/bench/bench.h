// `sumi bench`: the machine's measured bf16 / fp32 peaks and the SD jobs (UNet forward, a LoRA
// training step, a CFG sampling step) on a random-weight model built in memory from the standard
// configuration, each reported as seconds, GFLOP/s from counted FLOPs, fraction of the measured
// peak and peak RSS. See docs/performance.md.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace sumi::bench {

struct Options {
  std::string model = "sd15";      // sd15 | sdxl
  int64_t size = 0;                // image side in pixels; 0 = the model's (512 / 1024; 64 tiny)
  int steps = 3;                   // timed iterations per job (after one untimed warm-up)
  bool tiny = false;               // the tiny test fixtures' sizes: a smoke run of seconds
  std::string precision = "bf16";  // bf16 | fp32
  // Training only: keep the frozen base in fp32 and compute under bf16 autocast (how sumi
  // train ran --mixed_precision bf16 before frozen weights were converted once at load).
  bool frozen_fp32 = false;
  std::vector<std::string> jobs{"peak", "unet", "lora", "cfg"};
  // Where the jobs compute: cpu, cuda, cuda:N; "" = CUDA when this build has it and a GPU is
  // present (as sumi's --device). Off the CPU every timing waits for the device's queued work.
  std::string device;
};

struct JobResult {
  std::string name;
  std::string dtype;
  double seconds = 0;    // median of the timed iterations (peaks: the fastest)
  double gflop = 0;      // counted work of one iteration
  double peak_gflops = 0;  // the measured peak of `dtype` this job is compared with (0: none yet)
  double rss_gib = 0;    // peak resident set size during the job
  double cpu_seconds = 0;  // process CPU time of the iteration `seconds` reports (all threads)
  double gflops() const { return seconds > 0 ? gflop / seconds : 0; }
};

// Runs the selected jobs, printing one line per job as it finishes; returns every result.
std::vector<JobResult> run(const Options& o);

}  // namespace sumi::bench
